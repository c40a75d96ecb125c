"""The Fine-tune tab's "Push to Hub": the session's last run to a Hugging Face repository of the visitor's own.

The visitor signs in with ``gr.LoginButton`` where the page can offer one (``hub_access``: on a Space with
``hf_oauth: true``, or locally when this machine is signed in) and names the repository; it is private unless
they untick the box. The push reads the run and never changes it, and a run being pushed is kept from the
server's retention until the push is over (``runs.in_use``). Each failure is one plain message.

Signing in leaves the page and comes back to a new session. So that the run comes along, opening the panel (and
pressing the sign-in button) offers the run for handover (``hosting/handover.py``): the code goes into the
page's address, which the sign-in carries, and the page that comes back takes the run over on load.
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from ..hosting import handover, runs
from ..serving.export import ExportError
from ..serving.hub import HubPushError, push_to_hub
from ..weights import checkpoints
from .common import check_run, model_choices, names_only, owner
from .finetune_data import session_of
from .hub_access import login_available, push_token, where

__all__ = ["build_push_controls", "offer_handover", "push_run", "take_over_run"]

logger = logging.getLogger(__name__)

PUSH_CONCURRENCY = 2  # uploads wait on the network, not the CPU; two at once keep one visitor from holding all


# The handover code into the page's address (Gradio's sign-in keeps the query string), and out again once used.
KEEP_CODE_JS = """(code) => { if (code) { const u = new URL(window.location.href);
  u.searchParams.set("handover", code); window.history.replaceState(null, "", u); } }"""
DROP_CODE_JS = """() => { const u = new URL(window.location.href); if (u.searchParams.has("handover")) {
  u.searchParams.delete("handover"); window.history.replaceState(null, "", u); } }"""


def build_push_controls(state: gr.State, predict_model: gr.Dropdown) -> None:
    """The "Push to Hub" accordion, for the run the tab trained last; call where it should show.

    ``predict_model``: the Predict tab's model list, which a run handed over through the sign-in joins.
    """
    with gr.Accordion("Push to the Hugging Face Hub: keep and share this run", open=False, elem_id="hub-push") as panel:
        gr.Markdown(_intro())
        login = gr.LoginButton(elem_id="hub-login") if login_available() else None
        code = gr.Textbox(visible=False)
        with gr.Row():
            repo = gr.Textbox(
                label="Repository name", placeholder="cats-vs-dogs (under your account), or USER/NAME", scale=3,
                elem_id="hub-push-repo",
            )  # fmt: skip
            private = gr.Checkbox(value=True, label="Private", scale=1, elem_id="hub-push-private")
        button = gr.Button("Push to Hub", variant="secondary", elem_id="hub-push-button")
        result = gr.Markdown(elem_id="hub-push-result")
    gr.on(
        [button.click, repo.submit],
        push_run,
        [repo, private, state],
        result,
        api_name="push_to_hub",
        concurrency_limit=PUSH_CONCURRENCY,
        concurrency_id="hub_push",
    )
    if login is None:
        return
    # Before the sign-in leaves the page: when the panel opens, and (quickly, outside the queue) on the button.
    for trigger, queued in ((panel.expand, True), (login.click, False)):
        trigger(offer_handover, state, code, api_visibility="private", queue=queued).then(
            None, code, None, js=KEEP_CODE_JS, api_visibility="private"
        )
    gr.on(None, take_over_run, None, [state, result, predict_model], api_visibility="private").then(
        None, None, None, js=DROP_CODE_JS, api_visibility="private"
    )


def _intro() -> str:
    place = where()
    if place == "space":
        who = (
            "Sign in with your Hugging Face account (the page reloads, and this run comes along); the push uses "
            "your sign-in and nothing else."
        )
    elif place == "shared":
        who = "This server cannot sign you in to Hugging Face: download the run and push it from your computer."
    elif login_available():
        who = "Running locally: the push uses this machine's Hugging Face sign-in, which the button stands for."
    else:
        who = "Running locally: the push uses this machine's Hugging Face sign-in (set HF_TOKEN or `hf auth login`)."
    return (
        "Uploads the last run of this session (weights, config, a model card with its accuracy per class) to a "
        f"model repository; load it back anywhere with `hf-hub:USER/NAME`. {who}"
    )


def push_run(
    repo: str, private: bool = True, state: dict[str, Any] | None = None, oauth_token: gr.OAuthToken | None = None
) -> str:
    """Push the session's last fine-tuned run to a Hugging Face model repository, with its model card.

    Args:
        repo: the repository: NAME (under the signed-in account) or USER/NAME.
        private: make a new repository private.
    """
    run_id = (state or {}).get("run_id")
    if not run_id:
        raise gr.Error("Train a run first: Push to Hub sends the last run of this session.")
    if not (repo or "").strip():
        raise gr.Error("Name the repository first, e.g. cats-vs-dogs.")
    token = push_token(oauth_token)  # the visitor's own, or this machine's locally; never the host's for a visitor
    check_run(f"run:{run_id}", state)  # on a shared server, only the session's own runs
    with runs.in_use(run_id):  # retention must not delete the run half-way through the upload
        try:
            result = push_to_hub(f"run:{run_id}", repo, token=token, private=bool(private))
        except (HubPushError, ExportError, checkpoints.CheckpointError, ValueError) as e:
            logger.info("push of run %s refused: %s", run_id, e)
            raise gr.Error(names_only(str(e))) from None
    what = "Created" if result.created else "Updated"
    visibility = {True: "private", False: "public", None: "its visibility unchanged"}[result.private]
    return (
        f"{what} [{result.repo_id}]({result.url}) ({visibility}) as **{result.user}**. Load it back in the Predict "
        f"tab under *Load from the Hugging Face Hub*, or `python -m densenet_demo predict IMAGE --model "
        f"hf-hub:{result.repo_id}`."
    )


def offer_handover(state: dict[str, Any] | None) -> str:
    """A code that brings the session's last run along through the sign-in's page reload ("" without a run)."""
    run_id = (state or {}).get("run_id")
    if not run_id:
        return ""
    try:
        return handover.offer(run_id, owner(state))
    except (runs.RunError, OSError, checkpoints.CheckpointError) as e:
        logger.info("no handover for run %s: %s", run_id, e)
        return ""


def take_over_run(request: gr.Request) -> tuple[Any, ...]:
    """On load: the run a handover code in the page's address brings (the sign-in came back with it), if any."""
    code = request.query_params.get("handover") if request is not None else None
    if not code:
        return gr.skip(), gr.skip(), gr.skip()
    state: dict[str, Any] = {}
    run_id = handover.accept(code, session_of(state).owner)
    if run_id is None:
        return gr.skip(), gr.skip(), gr.skip()
    state["run_id"] = run_id
    note = f"Run {run_id} is still here after signing in: name the repository and press Push to Hub."
    return state, note, gr.update(choices=model_choices(state))
