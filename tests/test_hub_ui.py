"""The page's Hub handlers, called as Gradio calls them, against the stand-in Hub: whose token a push and a download
use (a Space's visitor's own, never the host's), which Hub models a session may predict with, and a failed push
that leaves the run as it was."""

from __future__ import annotations

import shutil
import time
from types import SimpleNamespace

import gradio as gr
import pytest
from hub_helpers import colour_images, folder_digest, hub_env, saved_run
from hub_standin import HubStandIn

from densenet_demo.hosting import handover, runs
from densenet_demo.hosting.sessions import Session
from densenet_demo.serving.hub import push_to_hub
from densenet_demo.ui.classify import classify_paths, selection
from densenet_demo.ui.hub_controls import offer_handover, push_run, take_over_run
from densenet_demo.ui.hub_models import load_hub_model, select_loaded
from densenet_demo.weights import checkpoints


@pytest.fixture
def standin(monkeypatch, tmp_path):
    with HubStandIn() as server:
        server.add_user("host", "host-token")  # the Space owner: their HF_TOKEN is a secret of the Space
        server.add_user("visitor", "visitor-token")
        server.add_user("other", "other-token")
        hub_env(monkeypatch, server.url, tmp_path / "hf-cache", "host-token")
        yield server


@pytest.fixture
def on_a_space(monkeypatch):
    """What a Space with ``hf_oauth: true`` sets: Gradio's OAuth is then the real one."""
    monkeypatch.setenv("SYSTEM", "spaces")
    monkeypatch.setenv("SPACE_ID", "host/densenet-demo")
    monkeypatch.setenv("OAUTH_CLIENT_ID", "client-id")
    monkeypatch.delenv("DENSENET_DEMO_SHARED", raising=False)
    assert runs.settings().shared


def _oauth(token: str) -> gr.OAuthToken:
    return gr.OAuthToken(token=token, scope="openid profile contribute-repos", expires_at=int(time.time()) + 3600)


def _session_with_run(run_id: str) -> dict:
    session = Session()
    saved_run(run_id)
    runs.claim(run_id, session.owner)
    return {"session": session, "run_id": run_id}


def _message(error: pytest.ExceptionInfo) -> str:
    return error.value.message


def test_a_visitors_push_on_a_space_uses_the_visitors_token_and_never_the_hosts(standin, on_a_space):
    state = _session_with_run("r1")
    note = push_run("colours", True, state, _oauth("visitor-token"))
    assert "Created [visitor/colours]" in note and "(private)" in note and "as **visitor**" in note
    assert standin.repos["visitor/colours"].private is True
    assert standin.tokens_used("/") == {"visitor-token"}  # every request of the push, and none with host-token


def test_without_a_sign_in_a_space_refuses_the_push_before_any_request(standin, on_a_space):
    state = _session_with_run("r1")
    with pytest.raises(gr.Error) as error:
        push_run("colours", True, state, None)
    assert _message(error) == "Sign in with Hugging Face first (the button above), then push."
    assert standin.seen == []


def test_a_shared_server_without_sign_in_never_pushes_with_the_hosts_token(standin, monkeypatch):
    monkeypatch.setenv("DENSENET_DEMO_SHARED", "1")
    state = _session_with_run("r1")
    with pytest.raises(gr.Error) as error:
        push_run("colours", True, state, _oauth("mock-oauth-token-for-local-dev"))
    assert "needs each visitor's own Hugging Face sign-in" in _message(error) and standin.seen == []


def test_a_failed_push_from_the_page_leaves_the_run_intact_and_says_why(standin, on_a_space):
    state = _session_with_run("r1")
    before = folder_digest(checkpoints.run_path("r1"))
    standin.fail["commit"] = 500
    with pytest.raises(gr.Error) as error:
        push_run("colours", True, state, _oauth("visitor-token"))
    assert "the Hub had a problem (HTTP 500) during the commit" in _message(error)
    assert folder_digest(checkpoints.run_path("r1")) == before and not runs.is_busy("r1")


def test_a_session_cannot_push_another_sessions_run(standin, on_a_space):
    _session_with_run("theirs")
    with pytest.raises(gr.Error) as error:
        push_run("colours", True, {"session": Session(), "run_id": "theirs"}, _oauth("visitor-token"))
    assert "Unknown model 'run:theirs'" in _message(error) and "visitor/colours" not in standin.repos


def test_a_visitor_loads_their_private_model_and_another_session_cannot_use_it(standin, on_a_space, tmp_path):
    saved_run("r1")
    push_to_hub("run:r1", "visitor/colours", token="visitor-token", private=True)
    standin.seen.clear()
    mine = {"session": Session()}
    spec, mine, note = load_hub_model("visitor/colours", mine, _oauth("visitor-token"))
    assert spec.startswith("hf-hub:visitor/colours@") and "Loaded **visitor/colours**" in note
    update = select_loaded(spec, mine)
    assert update["value"] == spec and ("Hub: visitor/colours · 3 classes", spec) in update["choices"]
    assert standin.tokens_used("/") == {"visitor-token"}
    theirs = {"session": Session()}
    for name in ("visitor/colours", spec):  # signed out: the cached download is not theirs, by name or by commit
        with pytest.raises(gr.Error) as error:
            load_hub_model(name, theirs, None)
        assert "or it is private" in _message(error)
    with pytest.raises(gr.Error) as error:  # nor the pinned name, typed into the model list
        selection(spec, "ImageNet", None, theirs)
    assert "is not loaded in this session" in _message(error)
    assert "host-token" not in {s.token for s in standin.seen}


def test_locally_a_loaded_hub_model_classifies_like_the_run_it_came_from(standin, tmp_path):
    saved_run("r1")
    push_to_hub("run:r1", "host/colours", token=None, private=False)  # locally: this machine's sign-in
    spec, state, _ = load_hub_model("host/colours", {}, None)
    images = [str(p) for p in sorted(colour_images(tmp_path / "images", per_class=2).rglob("*.png"))]
    from_hub = classify_paths(images, spec, "ImageNet", None, 3, False, state)
    from_run = classify_paths(images, "run:r1", "ImageNet", None, 3, False, state)
    assert from_hub.table.drop(columns="latency ms").equals(from_run.table.drop(columns="latency ms"))
    assert "(Hub host/colours @ " in from_hub.info


def test_a_name_that_is_no_model_gets_one_plain_message(standin):
    with pytest.raises(gr.Error) as error:
        load_hub_model("nobody/nothing", {}, None)
    assert _message(error) == (
        "no model nobody/nothing on the Hub, or it is private and you are not signed in as someone who may read it"
    )
    with pytest.raises(gr.Error) as error:
        load_hub_model("just-a-name", {}, None)
    assert "is not a Hub repository: write USER/NAME" in _message(error)


def test_the_spaces_front_matter_asks_for_sign_in_with_the_scope_to_create_repositories():
    from pathlib import Path

    from huggingface_hub import metadata_load

    meta = metadata_load(Path(__file__).resolve().parent.parent / "README.md")
    assert meta["hf_oauth"] is True and meta["hf_oauth_scopes"] == ["contribute-repos"]


# ---------------------------------------------------------------------------------------------
# The sign-in reloads the page: the run comes along


def _request(code: str) -> SimpleNamespace:
    return SimpleNamespace(query_params={"handover": code} if code else {})


def test_a_run_offered_before_the_sign_in_is_the_new_pages_after_it_and_only_once(standin, on_a_space):
    state = _session_with_run("r1")
    code = offer_handover(state)
    assert code.startswith("r1~") and len(code) > 30
    new_state, note, models = take_over_run(_request(code))
    assert new_state["run_id"] == "r1" and "Run r1 is still here after signing in" in note
    assert runs.owner_of("r1") == new_state["session"].owner != state["session"].owner
    assert "run:r1" in [value for _, value in models["choices"]]
    assert take_over_run(_request(code)) == (gr.skip(), gr.skip(), gr.skip())  # used up
    state["session"].close(remove_runs=True)  # the old page's session expires: the run is no longer its own
    assert (checkpoints.run_path("r1") / checkpoints.CHECKPOINT_WEIGHTS).is_file()
    assert "Created [visitor/colours]" in push_run("colours", True, new_state, _oauth("visitor-token"))


def test_a_wrong_or_lapsed_code_hands_nothing_over(standin, on_a_space, monkeypatch):
    state = _session_with_run("r1")
    owner = runs.owner_of("r1")
    assert take_over_run(_request("r1~not-the-secret")) == (gr.skip(), gr.skip(), gr.skip())
    assert take_over_run(_request("")) == (gr.skip(), gr.skip(), gr.skip())
    code = offer_handover(state)
    later = time.time() + handover.HANDOVER_TTL_S + 1
    monkeypatch.setattr(handover.time, "time", lambda: later)
    assert take_over_run(_request(code)) == (gr.skip(), gr.skip(), gr.skip())
    assert runs.owner_of("r1") == owner and offer_handover({"session": Session(), "run_id": "r1"}) == ""


def test_predicting_never_downloads_a_hub_model_whose_copy_is_gone(standin, tmp_path):
    saved_run("r1")
    push_to_hub("run:r1", "host/colours", token=None, private=False)
    spec, state, _ = load_hub_model("host/colours", {}, None)
    shutil.rmtree(tmp_path / "hf-cache")  # the server's cache cleared since
    standin.seen.clear()
    with pytest.raises(gr.Error) as error:
        selection(spec, "ImageNet", None, state)
    assert "no longer on this server: press Load again" in _message(error) and standin.seen == []
