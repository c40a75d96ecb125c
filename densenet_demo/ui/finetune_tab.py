"""The Fine-tune tab: data (finetune_data.py), settings (training_settings.py), Start/Stop, live curves and
results (training_run.py)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import gradio as gr

from ..config import PRESETS
from ..hosting.training_queue import TrainingQueue
from ..training import runners
from ..training.config import example_config
from ..weights import resolver as weights
from .capture import build_classes_by_hand
from .common import WEIGHTS_LABELS, describe, user_errors
from .continue_run import build_continue_controls, wire_continue
from .data_review import build_class_gallery, class_samples
from .exports import export_run
from .finetune_data import SOURCE_CHOICES, ensure_dataset, folder_summary, load_dataset, session_of
from .hub_controls import build_push_controls
from .multigpu import build_gpu_option, gpu_run
from .review_view import build_review_view, runs_to_review
from .training_run import FinetuneTab, follow_run, stop_training
from .training_settings import (
    SETTING_NAMES,
    SUGGESTED,
    apply_suggestion,
    build_extra_settings,
    config_from_page,
    estimate_text,
    mark_touched,
    mode_values,
    suggest_settings,
    takes_page_settings,
)
from .training_turn import STOPPED_WHILE_WAITING, take_turn, turn_over
from .training_view import per_class_frame, progress_html

__all__ = ["build_finetune_tab", "start_training"]


# The built-in example trains to >90% val accuracy in under a minute on two CPU cores with these.
_EXAMPLE_SETTINGS = example_config()


def build_finetune_tab(
    models: list[tuple[str, str]],
    predict_model: gr.Dropdown,
    reuse: gr.Dropdown,
    state: gr.State,
    trainings: TrainingQueue,
) -> FinetuneTab:
    """The tab's layout and events; call inside ``gr.Tab``. A finished run refreshes ``predict_model`` and ``reuse``.

    ``state``: the session (``finetune_data.session_state``), shared with the other tabs: its runs are its own.
    ``trainings``: the server's trainings queue (one training at a time, one per session).
    """
    ex = _EXAMPLE_SETTINGS
    gr.Markdown(
        "**1. Data**: a zip or folder of class subfolders (or `train/` + `val/`), the built-in "
        "example, or classes you build by hand. **2. Settings. 3. Start** and watch it learn."
    )
    with gr.Row():
        with gr.Column():
            source = gr.Radio(list(SOURCE_CHOICES), value="Example dataset", label="Data")
            zip_file = gr.File(label="Zip of class subfolders", file_types=[".zip"], elem_id="train-zip", visible=False)
            # A bounded box (it scrolls): a folder of 1,800 images would otherwise make the page 100,000 px tall.
            folder = gr.File(
                label="Folder of class subfolders",
                file_count="directory",
                elem_id="train-folder",
                visible=False,
                height=140,
            )
            folder_info = gr.Markdown(elem_id="train-folder-summary")
            relpaths = gr.Textbox(visible="hidden", elem_id="folder-relpaths")
            by_hand = build_classes_by_hand(state)  # uploads and webcam frames (capture.py)
            load = gr.Button("Check dataset", elem_id="train-load")
            report = gr.Markdown(elem_id="train-report")
            class_gallery = build_class_gallery()  # a few images of each class, after the check (data_review.py)
        with gr.Column():
            model = gr.Dropdown(
                [m for m in models if not m[1].startswith("run:")], value=ex.model, label="Model", elem_id="train-model"
            )
            weights_choice = gr.Radio(list(WEIGHTS_LABELS), value="Random init", label="Start from")
            mode = gr.Radio(
                ["linear", "finetune", "scratch"],
                value=ex.mode,
                label="Mode",
                info="linear: frozen backbone, features cached once (seconds on a CPU); "
                "finetune: all layers, lower lr for the backbone; scratch: random init.",
            )
            with gr.Row():
                epochs = gr.Slider(1, 100, value=ex.epochs, step=1, label="Epochs", elem_id="train-epochs")
                lr = gr.Number(value=ex.lr, label="Learning rate (empty: the mode's default)")
            with gr.Row():
                batch = gr.Slider(1, 256, value=32, step=1, label="Batch size")
                size = gr.Number(value=ex.image_size, label="Image size (0: the model's own)", precision=0)
            with gr.Row():
                optimizer = gr.Dropdown(
                    ["default", "adamw", "sgd"],
                    value=ex.optimizer,
                    label="Optimizer",
                    info="sgd: Nesterov momentum 0.9, weight decay 1e-4 (the paper)",
                )
                schedule = gr.Dropdown(
                    ["default", "cosine", "step", "onecycle"],
                    value=ex.schedule,
                    label="LR schedule",
                    info="step: ÷10 at 50% and 75% of the epochs",
                )
            with gr.Row():
                memory_efficient = gr.Checkbox(value=False, label="Memory-efficient (recompute concatenations)")
                amp = gr.Radio(["Auto", "Off"], value="Auto", label="Mixed precision (GPU only)")
            extra, estimate_line, estimate = build_extra_settings(ex)
            suggestion_line = gr.Markdown("", elem_id="train-suggestion")
            all_gpus = build_gpu_option()
            with gr.Row():
                start = gr.Button("Start", variant="primary", elem_id="train-start")
                stop = gr.Button("Stop", variant="stop", elem_id="train-stop")
            more = build_continue_controls()  # "Continue training": the last run, more epochs (continue_run.py)
    shown = _build_results()
    build_push_controls(state, predict_model)  # "Push to Hub" for the last run (hub_controls.py)
    review = build_review_view(state)  # the run's mistakes and likely mislabels (review_view.py)

    tab = FinetuneTab(
        state=state,
        source=source,
        zip_file=zip_file,
        folder=folder,
        model=model,
        weights=weights_choice,
        mode=mode,
        epochs=epochs,
        lr=lr,
        optimizer=optimizer,
        schedule=schedule,
        size=size,
        **{name: shown[name] for name in ("loss", "acc", "progress", "log", "confusion", "per_class", "download")},
        predict_model=predict_model,
        reuse=reuse,
        trainings=trainings,
    )
    source.change(
        functools.partial(_source_defaults, tab),
        source,
        [model, weights_choice, mode, epochs, lr, optimizer, schedule, size, zip_file, folder],
        api_visibility="private",
    )
    folder.change(folder_summary, [folder, relpaths], folder_info, api_visibility="private")
    data_inputs = [source, zip_file, folder, relpaths, by_hand, state]
    recipe_fields = [epochs, lr, optimizer, schedule, extra.label_smoothing]
    named = dict(model=model, weights_choice=weights_choice, mode=mode, epochs=epochs, lr=lr, batch_size=batch)
    named |= dict(image_size=size, memory_efficient=memory_efficient, amp=amp, optimizer=optimizer, schedule=schedule)
    named |= extra._asdict()
    settings = [named[name] for name in SETTING_NAMES]  # the order of /train and /estimate
    checked = load.click(load_dataset, data_inputs, [report, state], api_name="load_dataset")
    checked.success(class_samples, state, class_gallery, api_visibility="private")
    _wire_suggestion(checked, state, named, recipe_fields, suggestion_line, estimate_line)
    # Settings follow the mode (and the recipe) a person picks: the fields show the recipe's values for it.
    for chooser in (mode, extra.recipe):
        chooser.input(mode_values, [mode, extra.recipe], recipe_fields, api_visibility="private")
    estimate.click(estimate_text, [state, *settings], estimate_line, api_name="estimate")
    # Start checks the data itself when this choice has not been checked yet (the example needs no extra click).
    started = start.click(ensure_dataset, data_inputs, [report, state], api_visibility="private").success(
        functools.partial(start_training, tab),
        [state, *settings, all_gpus],
        tab.training_outputs(),
        api_name="train",
        api_description=describe(start_training),
        concurrency_limit=None,  # it waits its turn in the trainings queue, not in Gradio's (training_turn.py)
    )
    started.then(runs_to_review, state, review.run, api_visibility="private")  # the new run, ready to review
    wire_continue(tab, more)
    stop.click(stop_training, state, tab.log, api_name="stop", queue=False)
    shown["export_button"].click(
        export_run, state, shown["export_file"], api_name="export_run_onnx", concurrency_limit=1
    )
    return tab


def _wire_suggestion(
    checked: Any,
    state: gr.State,
    named: dict[str, Any],
    recipe_fields: list[Any],
    suggestion_line: gr.Markdown,
    estimate_line: gr.Markdown,
) -> None:
    """After Check dataset (``checked``), the settings measured for it on this machine (/suggest_settings); fields
    a person has set stay as they are (``touched``), and the line above Start says what was suggested and why."""
    suggestion, touched = gr.JSON(visible=False), gr.State([])
    checked.success(suggest_settings, state, [suggestion, state], api_name="suggest_settings").success(
        apply_suggestion,
        [suggestion, touched, named["recipe"]],
        [*(named[name] for name in SUGGESTED), suggestion_line, estimate_line, *recipe_fields],
        api_visibility="private",
        # At once, not behind the queue: its inputs (the fields a person set) are read when it is sent, so a choice
        # made while it waited for a place would be overwritten by the suggestion.
        queue=False,
    )
    for name in ("model", "weights_choice", "mode", "image_size", "batch_size", "time_budget", "augment", "epochs"):
        # A person's own choice is kept by later suggestions; an estimate for other settings is stale.
        named[name].input(mark_touched(name), touched, touched, api_visibility="private", queue=False)
        named[name].input(lambda: "", None, estimate_line, api_visibility="private", queue=False)


def _build_results() -> dict[str, Any]:
    """Under the settings: the run's progress, its curves and log, then its confusion matrix, per-class
    accuracy and downloads."""
    progress = gr.HTML(progress_html(0, "Not started."), elem_id="train-progress")
    # min_width: side by side on a wide page, one under the other on a phone (the row wraps).
    with gr.Row():
        loss = gr.Plot(label="Loss", elem_id="train-loss", min_width=340)
        acc = gr.Plot(label="Accuracy", elem_id="train-acc", min_width=340)
    log = gr.Textbox(label="Log", lines=6, elem_id="train-log")
    with gr.Row():
        confusion = gr.Plot(label="Confusion matrix", elem_id="train-confusion", min_width=340)
        per_class = gr.Dataframe(
            per_class_frame(None), label="Per-class validation accuracy (best epoch)", interactive=False,
            elem_id="train-per-class",
        )  # fmt: skip
    with gr.Row():
        download = gr.File(label="Best checkpoint (model.safetensors + model.json)", elem_id="train-download")
        with gr.Column():
            export_button = gr.Button("Export ONNX", size="sm", elem_id="train-export-button")
            export_file = gr.File(label="ONNX bundle", visible=False, elem_id="train-export")
    return {
        "progress": progress, "loss": loss, "acc": acc, "log": log, "confusion": confusion, "per_class": per_class,
        "download": download, "export_button": export_button, "export_file": export_file,
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Handlers


def _source_defaults(tab: FinetuneTab, source: str) -> dict[Any, Any]:
    """Show the upload the source needs; the example dataset also brings its quick settings."""
    updates: dict[Any, Any] = {
        tab.zip_file: gr.update(visible=source == "Zip file"),
        tab.folder: gr.update(visible=source == "Folder"),
    }
    if source == "Example dataset":
        ex = _EXAMPLE_SETTINGS
        updates |= {
            tab.model: ex.model,
            tab.weights: "Random init",
            tab.mode: ex.mode,
            tab.epochs: ex.epochs,
            tab.lr: ex.lr,
            tab.optimizer: ex.optimizer,
            tab.schedule: ex.schedule,
            tab.size: ex.image_size,
        }
    return updates


# ---------------------------------------------------------------------------------------------
# Training


def _weights_note(model: str, weights_choice: str, mode: str) -> str | None:
    random = WEIGHTS_LABELS.get(weights_choice) == "random" or mode == "scratch"
    if not random and weights.default_weights(model) == "random":
        return f"{model} has no ImageNet weights; starting from random init."
    return None


@takes_page_settings
def start_training(
    tab: FinetuneTab,
    state: dict[str, Any] | None,
    settings: dict[str, Any],
    all_gpus: bool = False,  # the "use all N GPUs" box: a torchrun child process, one process per GPU
) -> Iterator[dict[Any, Any]]:
    """Train on the session's dataset (/load_dataset first) with these settings, streaming live updates: the loss
    and accuracy curves, the progress line, the log, then the confusion matrix, per-class accuracy and the best
    checkpoint. A session trains one run at a time; while others train, it waits its turn, its place shown."""
    state = dict(state or {})
    if state.get("dataset") is None:
        raise gr.Error("Check a dataset first (step 1), then press Start.")
    if not settings["model"] or settings["model"] not in PRESETS:
        raise gr.Error("Pick a preset to train.")
    config = config_from_page(settings)
    note = _weights_note(settings["model"], settings["weights_choice"], settings["mode"])
    files, report = state["dataset"]
    ticket = yield from take_turn(tab.trainings, state, session_of(state).owner, tab.show(state))
    if ticket is None:
        yield tab.show(state)(STOPPED_WHILE_WAITING)
        return
    try:
        with user_errors(ValueError, weights.CheckpointError):
            if all_gpus:  # one process per GPU
                run = gpu_run(config, files, report, session_of(state))
            else:  # one loop here; GPU calls on ZeroGPU (hosting/gpu.py)
                run = runners.start(config, files, report=report)
        yield from follow_run(tab, state, run, note)
    finally:
        turn_over(ticket, state)
