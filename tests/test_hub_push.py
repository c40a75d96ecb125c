"""`push` and `hf-hub:` loading against a loopback stand-in for the Hub: the round trip train -> push -> load with
the same answers, and each way a push or a download can fail (one plain message; the run never changes)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hub_helpers import TORCHVISION_LIKE, colour_images, folder_digest, hub_env, saved_run
from hub_standin import HubStandIn
from huggingface_hub import ModelCard, hf_hub_download

from densenet_demo.cli.main import main
from densenet_demo.data.images import default_preprocessing
from densenet_demo.model import DenseNet
from densenet_demo.serving.model_card import TORCHVISION_SNIPPET
from densenet_demo.serving.predict import build_predictor
from densenet_demo.weights import checkpoints, hub

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def standin():
    with HubStandIn() as server:
        server.add_user("alice", "alice-token", orgs=("colour-lab",))
        server.add_user("bob", "bob-token")
        yield server


@pytest.fixture
def signed_in(standin, monkeypatch, tmp_path):
    """This machine signed in as alice (HF_TOKEN), the Hub at the stand-in."""
    hub_env(monkeypatch, standin.url, tmp_path / "hf-cache", "alice-token")
    return standin


@pytest.fixture
def images(tmp_path):
    return [str(p) for p in sorted(colour_images(tmp_path / "images", per_class=3, seed=7).rglob("*.png"))]


def _predict_json(model: str, images: list[str], capsys) -> list[list[dict]]:
    assert main(["predict", *images, "--model", model, "--json", "--top-k", "3"]) == 0
    return [json.loads(line)["top_k"] for line in capsys.readouterr().out.splitlines()]


def _push(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["push", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens there once the socket is closed


# ---------------------------------------------------------------------------------------------
# The round trip


@pytest.mark.e2e  # a real training run: its first steps pay for torch's one-time set-up (tens of seconds here)
def test_train_push_and_load_by_hf_hub_gives_the_same_labels_and_probabilities(signed_in, tmp_path, images, capsys):
    data = colour_images(tmp_path / "colours", per_class=6)
    start = tmp_path / "start"
    preprocessing = default_preprocessing(TORCHVISION_LIKE, 32)
    checkpoints.save_checkpoint(
        start, DenseNet(TORCHVISION_LIKE), class_names=["a", "b", "c"], preprocessing=preprocessing
    )
    train = ["train", str(data), "--model", str(start), "--mode", "finetune", "--epochs", "2", "--batch-size", "6"]
    assert main([*train, "--out", str(checkpoints.run_path("trained"))]) == 0
    capsys.readouterr()
    code, out, err = _push(capsys, "run:trained", "--repo", "colours")
    assert code == 0 and out.strip() == f"{signed_in.url}/alice/colours"
    assert "created alice/colours (public) as alice" in err and signed_in.repos["alice/colours"].private is False
    local = _predict_json("run:trained", images, capsys)
    assert _predict_json("hf-hub:alice/colours", images, capsys) == local
    assert {top[0]["label"] for top in local} <= {"blue", "green", "red"}
    card = ModelCard.load(
        hf_hub_download("alice/colours", "README.md", endpoint=signed_in.url, cache_dir=tmp_path / "c")
    )
    (result,) = card.data.eval_results
    run = checkpoints.read_checkpoint_info(checkpoints.run_path("trained"))
    assert result.metric_value == pytest.approx(run.metrics["val_acc"], abs=1e-4) and "| blue | 6 |" in card.text


def test_a_second_push_updates_the_repository_and_loading_gets_the_new_weights(signed_in, images, capsys):
    saved_run("first")
    assert _push(capsys, "run:first", "--repo", "alice/colours", "--private")[0] == 0
    first = _predict_json("hf-hub:alice/colours", images, capsys)
    saved_run("second")  # other random weights: torch's RNG has moved on
    code, _, err = _push(capsys, "run:second", "--repo", "alice/colours")
    assert code == 0 and "updated alice/colours (visibility unchanged)" in err
    repo = signed_in.repos["alice/colours"]
    assert repo.private is True and len(repo.commits) == 3  # the repo's first commit, then one per push
    second = _predict_json("hf-hub:alice/colours", images, capsys)
    assert second == _predict_json("run:second", images, capsys) and second != first


def test_a_token_given_on_the_command_line_pushes_as_its_owner(signed_in, capsys):
    saved_run("r1")
    code, out, _ = _push(capsys, "run:r1", "--repo", "colours", "--token", "bob-token")
    assert code == 0 and out.strip().endswith("/bob/colours") and "bob/colours" in signed_in.repos
    assert signed_in.tokens_used("/api/") == {"bob-token"}


def test_an_organisations_name_is_a_place_its_members_may_push_to(signed_in, capsys):
    saved_run("r1")
    assert _push(capsys, "run:r1", "--repo", "colour-lab/colours")[0] == 0 and "colour-lab/colours" in signed_in.repos


# ---------------------------------------------------------------------------------------------
# A push that cannot be made: one plain message, the run as it was


def test_without_a_sign_in_the_push_says_how_to_sign_in(standin, monkeypatch, tmp_path, capsys):
    hub_env(monkeypatch, standin.url, tmp_path / "hf-cache", None)
    before = folder_digest(saved_run("r1"))
    code, out, err = _push(capsys, "run:r1", "--repo", "colours")
    assert code == 1 and out == "" and err.count("\n") == 1
    assert "not signed in to Hugging Face" in err and "HF_TOKEN" in err
    assert folder_digest(checkpoints.run_path("r1")) == before and standin.repos == {}


@pytest.mark.parametrize(
    ("repo", "token", "message"),
    [
        ("bob/colours", "alice-token", "'bob/colours' belongs to someone else: you are signed in as alice"),
        ("colours", "expired-token", "did not accept the sign-in"),
        ("not a name", "alice-token", "is not a Hub repository"),
    ],
)
def test_a_push_the_hub_would_refuse_gets_one_line(standin, monkeypatch, tmp_path, capsys, repo, token, message):
    hub_env(monkeypatch, standin.url, tmp_path / "hf-cache", token)
    before = folder_digest(saved_run("r1"))
    code, out, err = _push(capsys, "run:r1", "--repo", repo)
    assert code == 1 and out == "" and err.count("\n") == 1 and message in err
    assert folder_digest(checkpoints.run_path("r1")) == before and standin.repos == {}


def test_without_a_network_the_push_says_the_hub_cannot_be_reached(monkeypatch, tmp_path, capsys):
    hub_env(monkeypatch, _closed_port_url(), tmp_path / "hf-cache", "alice-token")
    before = folder_digest(saved_run("r1"))
    code, _, err = _push(capsys, "run:r1", "--repo", "colours")
    assert code == 1 and "cannot reach the Hugging Face Hub" in err and "the run is unchanged" in err
    assert folder_digest(checkpoints.run_path("r1")) == before


def test_a_commit_that_fails_leaves_the_run_and_the_repository_as_they_were(signed_in, capsys):
    before = folder_digest(saved_run("r1"))
    signed_in.fail["commit"] = 500
    code, _, err = _push(capsys, "run:r1", "--repo", "colours")
    assert code == 1 and "the Hub had a problem (HTTP 500) during the commit" in err
    assert folder_digest(checkpoints.run_path("r1")) == before
    assert [sorted(files) for _, files in signed_in.repos["alice/colours"].commits] == [[".gitattributes"]]
    assert _push(capsys, "run:r1", "--repo", "colours")[0] == 0  # the same push, once the Hub is back


def test_a_repository_holding_something_else_is_never_overwritten(signed_in, capsys):
    signed_in.add_repo("alice/colours", {"README.md": b"# my notes\n", "weights.bin": b"12345"})
    saved_run("r1")
    code, _, err = _push(capsys, "run:r1", "--repo", "colours")
    assert code == 1 and "already exists and holds something other than a densenet_demo model" in err
    assert len(signed_in.repos["alice/colours"].commits) == 1


# ---------------------------------------------------------------------------------------------
# Loading hf-hub: models


def test_a_private_model_loads_for_its_owner_and_for_nobody_else(signed_in, monkeypatch, tmp_path, capsys):
    saved_run("r1")
    assert _push(capsys, "run:r1", "--repo", "colours", "--private")[0] == 0
    assert build_predictor("hf-hub:alice/colours").weights_label.startswith("Hub alice/colours @ ")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "bobs-cache"))
    monkeypatch.setenv("HF_TOKEN", "bob-token")
    assert main(["predict", str(tmp_path), "--model", "hf-hub:alice/colours"]) == 2
    assert "no model alice/colours on the Hub, or it is private" in capsys.readouterr().err


def test_a_cached_private_model_is_refused_to_someone_without_access_where_the_cache_is_not_theirs(signed_in, capsys):
    """Another caller on the same machine (a shared server's visitor) cannot reach a cached private model by name."""
    saved_run("r1")
    assert _push(capsys, "run:r1", "--repo", "colours", "--private")[0] == 0
    pinned = hub.download(hub.parse_hub_ref("alice/colours")).ref  # in the cache now, with alice's token
    for ref in (hub.parse_hub_ref("alice/colours"), pinned):  # by name, and by the commit it is cached under
        with pytest.raises(checkpoints.CheckpointError, match="or it is private"):
            hub.download(ref, token=False, trust_cache=False)


def test_offline_a_model_downloaded_before_comes_from_the_cache_locally(signed_in, monkeypatch, images, capsys):
    saved_run("r1")
    assert _push(capsys, "run:r1", "--repo", "colours")[0] == 0
    online = _predict_json("hf-hub:alice/colours", images, capsys)
    monkeypatch.setenv("HF_ENDPOINT", _closed_port_url())
    assert _predict_json("hf-hub:alice/colours", images, capsys) == online
    with pytest.raises(checkpoints.CheckpointError, match="cannot reach the Hugging Face Hub"):
        hub.download(hub.parse_hub_ref("alice/colours"), trust_cache=False)
    with pytest.raises(checkpoints.CheckpointError, match="not in the cache"):
        hub.download(hub.parse_hub_ref("alice/other"))


def test_a_repository_that_is_not_a_densenet_demo_model_is_refused_by_name(signed_in, tmp_path, capsys):
    signed_in.add_repo("bob/bert", {"config.json": b"{}", "pytorch_model.bin": b"pickle"})
    assert main(["predict", str(tmp_path), "--model", "hf-hub:bob/bert"]) == 2
    assert "has no model.safetensors: it is not a model pushed by densenet_demo" in capsys.readouterr().err


@pytest.mark.e2e
def test_the_cards_torchvision_snippet_gives_the_projects_answer(signed_in, tmp_path, images, capsys):
    saved_run("r1")
    assert _push(capsys, "run:r1", "--repo", "colours")[0] == 0
    script = tmp_path / "classify.py"
    script.write_text(TORCHVISION_SNIPPET.format(repo_id="alice/colours"))
    env = {"HF_ENDPOINT": signed_in.url, "HF_HUB_CACHE": str(tmp_path / "snippet-cache"), "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        [sys.executable, str(script), images[0]], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    first = run.stdout.splitlines()[0].split()
    (expected,) = build_predictor("hf-hub:alice/colours").predict([images[0]], top_k=1)
    label, p = expected.labels[0]
    assert first == [f"{p:.2%}", label]


def test_a_run_that_does_not_exist_is_said_before_anything_goes_over_the_network(signed_in, capsys):
    code, out, err = _push(capsys, "run:no-such-run", "--repo", "colours")
    assert code == 2 and out == "" and "no run no-such-run" in err and signed_in.seen == []
