"""Models from the Hugging Face Hub in the Predict tab: "Load from the Hugging Face Hub" downloads ``USER/NAME``
into the session.

A loaded model joins the session's model list as ``hf-hub:USER/NAME@<commit>``: pinned to the commit that was
downloaded, so predicting never goes back to the network, and recorded in the session's state, so that on a
shared server a session can use only the Hub models it loaded itself (with its own sign-in: ``hub_access``),
never one another visitor's download left in the server's cache.
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from ..serving import predict
from ..weights import hub
from ..weights import resolver as weights
from .common import HUB_MODELS, model_choices, names_only
from .hub_access import download_token

__all__ = ["build_hub_loader", "check_hub_model", "load_hub_model", "select_loaded"]

logger = logging.getLogger(__name__)


def build_hub_loader(model: gr.Dropdown, state: gr.State) -> None:
    """A "Load from the Hugging Face Hub" row under the model list; call where it should show."""
    with gr.Accordion("Load from the Hugging Face Hub", open=False):
        with gr.Row():
            repo = gr.Textbox(
                label="Model on the Hub",
                placeholder="USER/NAME, e.g. a model pushed from the Fine-tune tab",
                scale=4,
                elem_id="hub-repo",
            )
            load = gr.Button("Load", size="sm", scale=1, elem_id="hub-load")
        note = gr.Markdown(elem_id="hub-note")
        loaded = gr.Textbox(visible=False)  # what an API client gets: the model's name for its session
    gr.on(
        [load.click, repo.submit],
        load_hub_model,
        [repo, state],
        [loaded, state, note],
        api_name="load_hub_model",
        concurrency_limit=2,
    ).success(select_loaded, [loaded, state], model, api_visibility="private")


def load_hub_model(
    repo: str, state: dict[str, Any] | None = None, oauth_token: gr.OAuthToken | None = None
) -> tuple[str, dict[str, Any], str]:
    """Download a model pushed by this app (``USER/NAME`` or ``hf-hub:USER/NAME``) into the session; returns its
    name for ``model`` (``hf-hub:USER/NAME@<commit>``) and a note on it.

    Args:
        repo: the model's repository on the Hugging Face Hub, USER/NAME.
    """
    text = (repo or "").strip()
    if not text:
        raise gr.Error("Type a model's USER/NAME on the Hugging Face Hub, e.g. one pushed from the Fine-tune tab.")
    try:
        ref = hub.parse_hub_ref(text)
        # Only locally is the cache this visitor's own; a shared server's may hold another visitor's private model.
        token = download_token(oauth_token)
        snapshot = hub.download(ref, token=token, trust_cache=token is None)
        predictor = predict.get_predictor(snapshot.ref.spec)  # checked like any checkpoint, and ready to predict
    except (ValueError, weights.CheckpointError, OSError) as e:
        logger.info("Hub model %r refused: %s", text[:120], e)
        raise gr.Error(names_only(str(e))) from None
    state = dict(state or {})
    loaded = dict(state.get(HUB_MODELS) or {})
    names = predictor.class_names
    shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
    loaded[snapshot.ref.spec] = f"Hub: {ref.repo_id} · {len(names)} classes"
    state[HUB_MODELS] = loaded
    note = (
        f"Loaded **{ref.repo_id}** (commit `{snapshot.ref.revision[:7]}`): {predictor.cfg.variant}, "
        f"{len(names)} classes ({shown}). It is selected in the Model list."
    )
    return snapshot.ref.spec, state, note


def select_loaded(spec: str, state: dict[str, Any] | None) -> Any:
    """The model list with the session's Hub models, the one just loaded selected."""
    return gr.update(choices=model_choices(state), value=spec) if spec else gr.skip()


def check_hub_model(model: str, state: dict[str, Any] | None) -> None:
    """Refuse an ``hf-hub:`` model this session has not loaded (the same words for every such name), or whose
    download has gone from the cache since (predicting must never download: it would use no visitor's sign-in)."""
    if model not in ((state or {}).get(HUB_MODELS) or {}):
        raise gr.Error(
            f"{model[:100]!r} is not loaded in this session: type its USER/NAME under "
            "'Load from the Hugging Face Hub' and press Load first."
        )
    ref = hub.parse_hub_ref(model)
    if hub.from_cache(ref, ref.revision or "main") is None:
        raise gr.Error(f"The download of {ref.repo_id} is no longer on this server: press Load again to fetch it.")
