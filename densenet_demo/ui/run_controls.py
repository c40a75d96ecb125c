"""Beside the Predict tab's model list: delete or download the chosen run (one of the session's own)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from ..hosting import runs
from ..weights import checkpoints
from .common import check_run, model_choices, owner, reuse_choices
from .finetune_data import session_of

__all__ = ["build_run_controls", "delete_run", "download_run"]


def build_run_controls(model: gr.Dropdown, state: gr.State, reuse: gr.Dropdown) -> None:
    """A small row of "Delete run" / "Download run" for the run chosen in ``model`` (enabled only for a run);
    delete asks to confirm first. Call where it should show."""
    is_run = str(model.value or "").startswith("run:")
    with gr.Row():
        delete = gr.Button("Delete run", size="sm", variant="secondary", interactive=is_run, elem_id="run-delete")
        download = gr.Button("Download run", size="sm", variant="secondary", interactive=is_run, elem_id="run-download")
    with gr.Row(visible=False, elem_id="run-confirm") as confirm_row:
        question = gr.Markdown(elem_id="run-confirm-text")
        confirm = gr.Button("Delete", size="sm", variant="stop", elem_id="run-delete-confirm")
        cancel = gr.Button("Keep it", size="sm", variant="secondary", elem_id="run-delete-cancel")
    file = gr.File(label="Run checkpoint (.zip)", visible=False, interactive=False, elem_id="run-file")
    # The run the question names: Delete deletes that one, whatever the list shows by then (an API client gives it).
    asked = gr.Textbox(label="Model", visible=False, info="run:<run-id>")
    model.change(_controls_for, model, [delete, download, confirm_row, file], api_visibility="private", queue=False)
    delete.click(_ask, [model, state], [question, confirm_row, asked], api_visibility="private", queue=False)
    cancel.click(lambda: gr.update(visible=False), None, confirm_row, api_visibility="private", queue=False)
    confirm.click(lambda: gr.update(visible=False), None, confirm_row, api_visibility="private", queue=False).then(
        delete_run, [asked, state], [model, reuse], api_name="delete_run"
    )
    # The file itself is the endpoint's answer (an API client receives it); the page then shows the box.
    download.click(download_run, [model, state], [file, state], api_name="download_run").success(
        lambda: gr.update(visible=True), None, file, api_visibility="private", queue=False
    )


def _controls_for(model: str | None) -> list[Any]:
    """Delete and Download act on runs only; another model hides a pending question and an old download."""
    is_run = str(model or "").startswith("run:")
    return [gr.update(interactive=is_run), gr.update(interactive=is_run), gr.update(visible=False)] + [
        gr.update(value=None, visible=False)
    ]


def _ask(model: str, state: dict[str, Any] | None) -> list[Any]:
    """The question before a run is deleted, naming it by its label."""
    if not model or not model.startswith("run:"):
        raise gr.Error("Pick one of your fine-tuned runs in the Model list to delete it (presets stay).")
    check_run(model, state)
    label = dict((value, label) for label, value in model_choices(state)).get(model, model)
    text = f"Delete **{label}** for good? Its checkpoint and training state go; download it first to keep a copy."
    return [text, gr.update(visible=True), model]


def delete_run(model: str, state: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Delete the session's run ``run:<id>``; the lists lose it and the model falls back to the first choice."""
    if not model or not model.startswith("run:"):
        raise gr.Error("Pick one of your fine-tuned runs in the Model list to delete it (presets stay).")
    check_run(model, state)
    try:
        runs.delete_run(model.removeprefix("run:"), owner(state), runs.settings().shared)
    except runs.RunError as e:
        raise gr.Error(str(e)) from None
    gr.Info("Run deleted.")
    choices = model_choices(state)
    return gr.update(choices=choices, value=choices[0][1]), gr.update(choices=reuse_choices(state), value="none")


def download_run(model: str, state: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """The session's run ``run:<id>`` as a zip file (``model.safetensors`` + ``model.json``)."""
    if not model or not model.startswith("run:"):
        raise gr.Error("Pick one of your fine-tuned runs in the Model list to download it.")
    state = dict(state or {})  # the zip goes into the session's folder, made on first use and kept in the state
    run_id = model.removeprefix("run:")
    with runs.in_use(run_id):  # retention must not delete it half-way through the zip
        check_run(model, state)
        try:
            path = checkpoints.zip_checkpoint(checkpoints.find_run(run_id), session_of(state).folder())
        except OSError as e:
            raise gr.Error(f"Could not prepare the download ({e.strerror or e}); try again.") from None
    return str(path), state
