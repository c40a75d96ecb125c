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
    """A small row of "Delete run" / "Download run" for the run chosen in ``model``; call where it should show."""
    with gr.Row():
        delete = gr.Button("Delete run", size="sm", variant="secondary", elem_id="run-delete")
        download = gr.Button("Download run", size="sm", variant="secondary", elem_id="run-download")
    file = gr.File(label="Run checkpoint (.zip)", visible=False, elem_id="run-file")
    delete.click(delete_run, [model, state], [model, reuse], api_name="delete_run")
    download.click(download_run, [model, state], [file, state], api_name="download_run")


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


def download_run(model: str, state: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The session's run as a zip (``model.safetensors`` + ``model.json``), made in the session's folder."""
    if not model or not model.startswith("run:"):
        raise gr.Error("Pick one of your fine-tuned runs in the Model list to download it.")
    state = dict(state or {})
    run_id = model.removeprefix("run:")
    with runs.in_use(run_id):  # retention must not delete it half-way through the zip
        check_run(model, state)
        try:
            path = checkpoints.zip_checkpoint(checkpoints.find_run(run_id), session_of(state).folder())
        except OSError as e:
            raise gr.Error(f"Could not prepare the download ({e.strerror or e}); try again.") from None
    return gr.update(value=str(path), visible=True), state
