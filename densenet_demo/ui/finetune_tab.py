"""The Fine-tune tab: data (finetune_data.py), settings, Start/Stop, live curves and results."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import gradio as gr

from .. import plots
from ..config import PRESETS
from ..hosting import memory, runs, sessions
from ..training import loop as train
from ..training import runners as chunked
from ..weights import resolver as weights
from .common import limits_note, model_choices, reuse_choices, user_errors
from .continue_run import build_continue_controls, wire_continue
from .exports import export_run
from .finetune_data import SOURCE_CHOICES, add_class, ensure_dataset, folder_summary, load_dataset, session_of
from .multigpu import build_gpu_option, gpu_run, starting_text
from .training_settings import build_extra_settings, config_from_page, estimate_text, mode_values, suggest
from .training_view import curves, event_line, outcome_line, per_class_frame, progress_html, skipped_lines

__all__ = ["FinetuneTab", "build_finetune_tab", "follow_run", "start_training", "stop_training"]


# The built-in example trains to >90% val accuracy in under a minute on two CPU cores with these.
_EXAMPLE_SETTINGS = train.example_config()


class FinetuneTab(NamedTuple):
    """The tab's components that handlers update, plus the other tabs' lists a finished run refreshes."""

    state: gr.State
    source: gr.Radio
    zip_file: gr.File
    folder: gr.File
    model: gr.Dropdown
    weights: gr.Radio
    mode: gr.Radio
    epochs: gr.Slider
    lr: gr.Number
    optimizer: gr.Dropdown
    schedule: gr.Dropdown
    size: gr.Number
    loss: gr.Plot
    acc: gr.Plot
    progress: gr.HTML
    log: gr.Textbox
    confusion: gr.Plot
    per_class: gr.Dataframe
    download: gr.File
    predict_model: gr.Dropdown  # the Predict tab's model list: a new run appears there
    reuse: gr.Dropdown  # the Architecture tab's feature-reuse list, likewise

    def training_outputs(self) -> list[Any]:
        """What a training run updates, in the order the ``/train`` endpoint has always returned them."""
        return [
            self.state,
            self.loss,
            self.acc,
            self.progress,
            self.log,
            self.confusion,
            self.per_class,
            self.download,
            self.predict_model,
            self.reuse,
        ]


def build_finetune_tab(
    models: list[tuple[str, str]], predict_model: gr.Dropdown, reuse: gr.Dropdown, state: gr.State
) -> FinetuneTab:
    """The tab's layout and events; call inside ``gr.Tab``. A finished run refreshes ``predict_model`` and ``reuse``.

    ``state``: the session (``finetune_data.session_state``), shared with the other tabs: its runs are its own.
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
            by_hand = gr.State({})
            with gr.Accordion("Classes by hand", open=False):
                with gr.Row():
                    class_name = gr.Textbox(label="Class name")
                    class_files = gr.File(label="Its images", file_count="multiple", file_types=["image"])
                add = gr.Button("Add class")
                classes = gr.Markdown()
            load = gr.Button("Check dataset", elem_id="train-load")
            report = gr.Markdown(elem_id="train-report")
        with gr.Column():
            model = gr.Dropdown(
                [m for m in models if not m[1].startswith("run:")], value=ex.model, label="Model", elem_id="train-model"
            )
            weights_choice = gr.Radio(["ImageNet", "Random init"], value="Random init", label="Start from")
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
            all_gpus = build_gpu_option()
            with gr.Row():
                start = gr.Button("Start", variant="primary", elem_id="train-start")
                stop = gr.Button("Stop", variant="stop", elem_id="train-stop")
            more = build_continue_controls()  # "Continue training": the last run, more epochs (continue_run.py)
    progress = gr.HTML(progress_html(0, "Not started."), elem_id="train-progress")
    # min_width: side by side on a wide page, one under the other on a phone (the row wraps).
    with gr.Row():
        loss = gr.Plot(label="Loss", elem_id="train-loss", min_width=340)
        acc = gr.Plot(label="Accuracy", elem_id="train-acc", min_width=340)
    log = gr.Textbox(label="Log", lines=6, elem_id="train-log")
    with gr.Row():
        confusion = gr.Plot(label="Confusion matrix", elem_id="train-confusion", min_width=340)
        per_class = gr.Dataframe(
            label="Per-class validation accuracy (best epoch)", interactive=False, elem_id="train-per-class"
        )
    with gr.Row():
        download = gr.File(label="Best checkpoint (model.safetensors + model.json)", elem_id="train-download")
        with gr.Column():
            export_button = gr.Button("Export ONNX", size="sm", elem_id="train-export-button")
            export_file = gr.File(label="ONNX bundle", visible=False, elem_id="train-export")

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
        loss=loss,
        acc=acc,
        progress=progress,
        log=log,
        confusion=confusion,
        per_class=per_class,
        download=download,
        predict_model=predict_model,
        reuse=reuse,
    )
    source.change(
        functools.partial(_source_defaults, tab),
        source,
        [model, weights_choice, mode, epochs, lr, optimizer, schedule, size, zip_file, folder],
        api_visibility="private",
    )
    add.click(
        add_class,
        [class_name, class_files, by_hand],
        [by_hand, classes, class_name, class_files],
        api_visibility="private",
    )
    folder.change(folder_summary, [folder, relpaths], folder_info, api_visibility="private")
    data_inputs = [source, zip_file, folder, relpaths, by_hand, state]
    recipe_fields = [epochs, lr, optimizer, schedule, extra.label_smoothing]
    load.click(load_dataset, data_inputs, [report, state], api_name="load_dataset").then(
        suggest,
        [state, source, extra.recipe],
        [estimate_line, model, mode, size, extra.time_budget, extra.augment, *recipe_fields],
        api_visibility="private",
    )
    # Settings follow the mode (and the recipe) a person picks: the fields show the recipe's values for it.
    for chooser in (mode, extra.recipe):
        chooser.input(mode_values, [mode, extra.recipe], recipe_fields, api_visibility="private")
    settings = [model, weights_choice, mode, epochs, lr, batch, size, memory_efficient, amp, optimizer, schedule]
    estimate.click(estimate_text, [state, *settings, *extra.inputs()], estimate_line, api_name="estimate")
    # Start checks the data itself when this choice has not been checked yet (the example needs no extra click).
    start.click(ensure_dataset, data_inputs, [report, state], api_visibility="private").success(
        functools.partial(start_training, tab),
        [state, *settings, *extra.inputs(), all_gpus],
        tab.training_outputs(),
        api_name="train",
        concurrency_limit=1,
        concurrency_id="train",
    )
    wire_continue(tab, more)
    stop.click(stop_training, state, log, api_name="stop", queue=False)
    export_button.click(export_run, state, export_file, api_name="export_run_onnx", concurrency_limit=1)
    return tab


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
    if weights_choice != "Random init" and mode != "scratch" and weights.default_weights(model) == "random":
        return f"{model} has no ImageNet weights; starting from random init."
    return None


def start_training(
    tab: FinetuneTab,
    state: dict[str, Any] | None,
    model: str,
    weights_choice: str,
    mode: str,
    epochs: float,
    lr: float | None,
    batch_size: float,
    image_size: float | None = None,
    memory_efficient: bool = False,
    amp: str = "Auto",
    optimizer: str = "default",
    schedule: str = "default",
    recipe: str = "quick",  # then training_settings.ExtraSettings, in its order
    time_budget: str = "",
    augment: str = "none",
    label_smoothing: float | None = None,
    early_stopping: float | None = None,
    val_fraction: float = 0.2,
    device: str = "auto",
    all_gpus: bool = False,  # the "use all N GPUs" box: a torchrun child process, one rank per GPU
) -> Iterator[dict[Any, Any]]:
    """Train on the loaded dataset, yielding live updates: curves, progress, log, then the results."""
    state = dict(state or {})
    if state.get("dataset") is None:
        raise gr.Error("Check a dataset first (step 1), then press Start.")
    if not model or model not in PRESETS:
        raise gr.Error("Pick a preset to train.")
    basics = (model, weights_choice, mode, epochs, lr, batch_size, image_size, memory_efficient, amp, optimizer)
    extra = (recipe, time_budget, augment, label_smoothing, early_stopping, val_fraction, device)
    config, note = config_from_page(*basics, schedule, *extra), _weights_note(model, weights_choice, mode)
    if all_gpus:  # a torchrun child process, one rank per GPU
        yield from follow_run(tab, state, None, note, torchrun_config=config)
        return
    files, report = state["dataset"]
    with user_errors(ValueError, weights.CheckpointError):
        trainer = chunked.training(config, files, report=report)  # one loop here; GPU calls on ZeroGPU (hosting/gpu.py)
    yield from follow_run(tab, state, trainer, note)


def follow_run(
    tab: FinetuneTab,
    state: dict[str, Any],
    trainer: chunked.TrainingRun | None,
    note: str | None,
    *,
    torchrun_config: train.TrainConfig | None = None,
) -> Iterator[dict[Any, Any]]:
    """A run's events as the page's live updates: curves, progress, log, then the results (Start and Continue).

    ``trainer`` None: the run of ``torchrun_config`` on all GPUs, as a torchrun child process."""
    session = session_of(state)
    state["cancel"] = cancel = train.CancelToken()
    state["torchrun"] = trainer is None  # what Stop says
    if trainer is None:  # the child names its run: it becomes the session's at its Started event, before any file
        assert torchrun_config is not None
        total_epochs, run_id, n_val = torchrun_config.epochs, None, 0
        run = gpu_run(torchrun_config, state["dataset"], session, cancel)
    else:
        with user_errors(weights.CheckpointError):
            runs.begin_run(trainer.run_id, session.owner)  # the session's run from its first file on
        total_epochs, run_id, n_val = trainer.config.epochs, trainer.run_id, len(trainer.val_items)
        run = trainer.run(cancel)
    session.run_in_progress = True
    history: list[dict[str, Any]] = []
    live: list[dict[str, Any]] = []  # the smoothed loss per step and mid-epoch validations, from the first steps on
    log = [note] if note else []
    last_update = 0.0
    processes = 1
    try:
        if trainer is None:  # torchrun takes seconds to start its processes: say so, and let Stop reach them meanwhile
            yield {tab.state: state, tab.progress: progress_html(0, starting_text())}
        for event in run:
            update: dict[Any, Any] = {tab.state: state}
            if isinstance(event, (train.Caching, train.Step, train.Preparing)):
                now = time.monotonic()
                if now - last_update < 0.5 and not isinstance(event, train.Preparing):
                    continue  # a browser needs no more than two updates a second
                last_update = now
                fraction, text = event_line(event, total_epochs, processes)
                if isinstance(event, train.Step):
                    x = event.epoch - 1 + event.step / event.steps
                    live.append({"epoch": x, "value": event.loss, "series": "train loss (per step, smoothed)"})
                    update |= {tab.loss: curves(history, "loss", total_epochs, live)}
            elif isinstance(event, train.Evaluated):
                live.append({"epoch": event.epoch, "value": event.val_acc, "series": "val acc"})
                fraction, text = event_line(event, total_epochs)
                log.append(text)
                update |= {tab.acc: curves(history, "acc", total_epochs, live)}
            elif isinstance(event, (train.Started, train.EpochEnd)):
                total_epochs = event.epochs
                if isinstance(event, train.Started):
                    n_val, processes = event.n_val, event.world_size
                    if run_id is None:
                        with user_errors(weights.CheckpointError):
                            runs.begin_run(event.run_id, session.owner)
                        run_id = event.run_id
                else:
                    history.append(event.to_dict())
                    update |= {
                        tab.loss: curves(history, "loss", total_epochs, live),
                        tab.acc: curves(history, "acc", total_epochs, live),
                    }
                fraction, text = event_line(event, total_epochs)
                log.append(text)
                if isinstance(event, train.EpochEnd):  # a new best may have been saved: the caps apply now
                    log += limits_note(runs.enforce_limits(session.owner, keep=run_id))
                log += skipped_lines(getattr(event, "skipped", []))
            else:  # Finished, Cancelled or Failed: the last event
                session.run_in_progress = False
                yield update | _finish(tab, event, history, log, session, state, n_val)
                return
            yield update | {tab.progress: progress_html(fraction, text), tab.log: "\n".join(log)}
    finally:
        session.run_in_progress = False  # also when the page went away and the run was closed mid-way
        if run_id is not None:
            runs.end_run(run_id)
        # Drop the run (its model, optimizer, feature cache; or the child processes) and hand the freed memory
        # back to the system: without this a server's memory grows by gigabytes over a few DenseNet-121 runs.
        run.close()
        del run
        memory.release_freed_memory()


def _finish(
    tab: FinetuneTab,
    event: train.Event,
    history: list[dict[str, Any]],
    log: list[str],
    session: sessions.Session,
    state: dict[str, Any],
    n_val: int,
) -> dict[Any, Any]:
    checkpoint = getattr(event, "checkpoint_dir", None)
    if isinstance(event, train.Finished):
        # Every image dropped during the run, less those an epoch's report has listed already.
        log += [line for line in skipped_lines(event.skipped) if line not in log]
    # Failed: the page shows the plain message; the trainer has logged the traceback to the server's log.
    headline = outcome_line(event, n_val)
    log.append(headline)
    confusion = per_class = None
    if checkpoint:
        log += limits_note(runs.enforce_limits(session.owner, keep=Path(checkpoint).name))
    if isinstance(event, (train.Finished, train.Cancelled)) and event.confusion_matrix and event.class_names:
        confusion = plots.confusion_matrix_figure(event.confusion_matrix, event.class_names)
        # The best epoch's, like the matrix beside it and the headline (not the last epoch's).
        per_class = per_class_frame(event.per_class_val_acc)
    run_name = Path(checkpoint).name if checkpoint else None
    if run_name:
        state["run_id"] = run_name  # what Export ONNX exports
    epochs = history[-1]["epochs"] if history else 1
    fraction = 1.0 if isinstance(event, train.Finished) else len(history) / max(1, epochs)
    return {
        tab.state: state,
        tab.loss: curves(history, "loss", epochs),
        tab.acc: curves(history, "acc", epochs),
        tab.progress: progress_html(fraction, headline),
        tab.log: "\n".join(log),
        tab.confusion: confusion,
        tab.per_class: per_class,
        tab.download: str(weights.zip_checkpoint(checkpoint, session.folder())) if checkpoint else None,
        # Without a checkpoint only the list is refreshed: the Predict tab keeps the model it had.
        tab.predict_model: gr.update(
            choices=model_choices(state), **({"value": f"run:{run_name}"} if run_name else {})
        ),
        tab.reuse: gr.update(choices=reuse_choices(state)),
    }


def stop_training(state: dict[str, Any] | None) -> str:
    """Ask the session's run to stop: it leaves its step at the next layer and keeps the best checkpoint so far."""
    state = state or {}
    session = state.get("session")
    if session is None or not session.run_in_progress:
        return "Nothing is training."
    state["cancel"].cancel()
    if state.get("torchrun"):  # the processes stop together, at the end of a step
        return "Stopping every training process at the next step; the best checkpoint so far is kept…"
    return "Stopping now (mid-step, at the next layer); the best checkpoint so far is kept…"
