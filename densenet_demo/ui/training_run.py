"""A training run on the page, wherever it runs (here, in ZeroGPU calls, in torchrun processes): its events as
the Fine-tune tab's live updates (curves, progress, log, then the results), for Start and Continue alike; and Stop.
How each event reads is training_view.py."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import gradio as gr

from .. import plots
from ..hosting import memory, runs, sessions
from ..hosting.training_queue import TrainingQueue
from ..training.events import (
    Caching,
    Cancelled,
    EpochEnd,
    Evaluated,
    Event,
    Failed,
    Finished,
    Preparing,
    Started,
    Step,
    Validating,
)
from ..training.runners import TrainingRun
from ..weights import resolver as weights
from .common import limits_note, model_choices, reuse_choices, user_errors
from .finetune_data import session_of
from .training_turn import run_started, stop_waiting
from .training_view import curves, event_line, outcome_line, per_class_frame, progress_html, skipped_lines

__all__ = ["FinetuneTab", "follow_run", "stop_training"]


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
    trainings: TrainingQueue  # the server's trainings queue: Start and Continue wait their turn in it

    def show(self, state: dict[str, Any]) -> Callable[[str], dict[Any, Any]]:
        """A line in the progress bar's place (a training waiting its turn), with the session's state."""
        return lambda text: {self.state: state, self.progress: progress_html(0, text)}

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


def follow_run(tab: FinetuneTab, state: dict[str, Any], run: TrainingRun, note: str | None) -> Iterator[dict[Any, Any]]:
    """``run``'s events as the page's live updates: curves, progress, log, then the results. The run is the
    session's from its first file on; Stop (``stop_training``) reaches it through the session's state."""
    session = session_of(state)
    with user_errors(weights.CheckpointError):
        runs.begin_run(run.run_id, session.owner)
    state["run"], session.run_in_progress = run, True
    run_started(state, run)  # a Stop while it was being built stops it now
    stream = run.events()
    view = _RunView(tab, state, session, run, [note] if note else [])
    try:
        # The last run's results leave the page at once; torchrun takes seconds to start its processes: say so.
        starting = f"Starting {run.processes} training processes (torchrun)…" if run.processes > 1 else "Starting…"
        cleared = {tab.loss: None, tab.acc: None, tab.confusion: None, tab.per_class: per_class_frame(None)}
        cleared[tab.download] = None
        yield {tab.state: state, tab.progress: progress_html(0, starting), **cleared}
        for event in stream:
            update = view.update(event)
            if update is not None:
                yield update
            if isinstance(event, (Finished, Cancelled, Failed)):  # the last event: done (the child may linger)
                return
    finally:
        session.run_in_progress = False  # also when the page went away and the run was closed mid-way
        state.pop("run", None)
        runs.end_run(run.run_id)
        # Drop the run (its model, optimizer, feature cache; or the child processes) and hand the freed memory
        # back to the system: without this a server's memory grows by gigabytes over a few DenseNet-121 runs.
        stream.close()
        del stream, run
        memory.release_freed_memory()


class _RunView:
    """What the page shows of one run so far: the epochs' history, the live points, the log."""

    def __init__(
        self, tab: FinetuneTab, state: dict[str, Any], session: sessions.Session, run: TrainingRun, log: list[str]
    ) -> None:
        self.tab, self.state, self.session, self.log, self.run_id = tab, state, session, log, run.run_id
        self.total_epochs, self.n_val, self.processes, self.last_update = run.config.epochs, 0, 1, 0.0
        self.budget = run.config.time_budget_s is not None
        self.history: list[dict[str, Any]] = []
        self.live: list[dict[str, Any]] = []  # the smoothed loss per step and mid-epoch validations
        self.fraction, self.done = 0.0, 0.0  # of the run, and epochs done, at the last step

    @property
    def length(self) -> float | None:
        """The run's length in epochs: planned, or under a time budget what the pace so far makes of it."""
        if not self.budget:
            return self.total_epochs
        return self.done / self.fraction if self.fraction > 0.02 else None

    def update(self, event: Event) -> dict[Any, Any] | None:
        """The page's update for ``event``; None for a step too soon after the last (two updates a second), unless
        it ends its epoch (a torchrun child's events can arrive in a burst: its epoch still shows a step line)."""
        tab, history, live = self.tab, self.history, self.live
        update: dict[Any, Any] = {tab.state: self.state}
        if isinstance(event, (Caching, Step, Preparing, Validating)):
            now = time.monotonic()
            last_of_epoch = isinstance(event, Step) and event.step == event.steps
            if now - self.last_update < 0.5 and isinstance(event, (Caching, Step)) and not last_of_epoch:
                return None  # a browser needs no more than two updates a second
            self.last_update = now
            fraction, text = event_line(event, self.total_epochs, self.processes)
            if isinstance(event, Step):
                self.done, self.fraction = event.epoch - 1 + event.step / event.steps, event.progress
                live.append({"epoch": self.done, "value": event.loss, "series": "train loss (per step, smoothed)"})
                update |= {tab.loss: curves(history, "loss", self.length, live)}
        elif isinstance(event, Evaluated):
            live.append({"epoch": event.epoch, "value": event.val_acc, "series": "val acc"})
            fraction, text = event_line(event, self.total_epochs)
            self.log.append(text)
            update |= {tab.acc: curves(history, "acc", self.length, live)}
        elif isinstance(event, (Started, EpochEnd)):
            fraction, text = self._started_or_epoch(event, update)
        else:  # Finished, Cancelled or Failed: the last event
            self.session.run_in_progress = False
            return update | _finish(tab, event, self, self.session, self.state)
        if fraction is None or self.budget:  # under a budget the clock says how far the run is, not the epochs
            fraction = self.fraction
        return update | {tab.progress: progress_html(fraction, text), tab.log: "\n".join(self.log)}

    def _started_or_epoch(self, event: Started | EpochEnd, update: dict[Any, Any]) -> tuple[float, str]:
        tab, history = self.tab, self.history
        self.total_epochs = event.epochs
        if isinstance(event, Started):
            self.n_val, self.processes = event.n_val, event.world_size
        else:
            history.append(event.to_dict())
            update |= {
                tab.loss: curves(history, "loss", self.length, self.live),
                tab.acc: curves(history, "acc", self.length, self.live),
            }
        fraction, text = event_line(event, self.total_epochs)
        self.log.append(text)
        if isinstance(event, EpochEnd):  # a new best may have been saved: the caps apply now
            self.log += limits_note(runs.enforce_limits(self.session.owner, keep=self.run_id))
        self.log += skipped_lines(getattr(event, "skipped", []))
        return fraction, text


def _finish(
    tab: FinetuneTab, event: Event, view: _RunView, session: sessions.Session, state: dict[str, Any]
) -> dict[Any, Any]:
    """The page at the run's end: the outcome, the curves as they were drawn (the per-step ones too), the results."""
    history, log, n_val = view.history, view.log, view.n_val
    checkpoint = getattr(event, "checkpoint_dir", None)
    if isinstance(event, Finished):
        # Every image dropped during the run, less those an epoch's report has listed already.
        log += [line for line in skipped_lines(event.skipped) if line not in log]
    # Failed: the page shows the plain message; the trainer has logged the traceback to the server's log.
    headline = outcome_line(event, n_val)
    log.append(headline)
    confusion, per_class = None, per_class_frame(None)
    if checkpoint:
        log += limits_note(runs.enforce_limits(session.owner, keep=Path(checkpoint).name))
    if isinstance(event, (Finished, Cancelled)) and event.confusion_matrix and event.class_names:
        confusion = plots.confusion_matrix_figure(event.confusion_matrix, event.class_names)
        # The best epoch's, like the matrix beside it and the headline (not the last epoch's).
        per_class = per_class_frame(event.per_class_val_acc)
    run_name = Path(checkpoint).name if checkpoint else None
    if run_name:
        state["run_id"] = run_name  # what Export ONNX exports
    done = history[-1]["epoch"] - 1 + history[-1].get("fraction", 1.0) if history else view.done
    length = done if isinstance(event, Finished) or view.budget else view.total_epochs
    fraction = 1.0 if isinstance(event, Finished) else view.fraction
    return {
        tab.state: state,
        tab.loss: curves(history, "loss", length, view.live),
        tab.acc: curves(history, "acc", length, view.live),
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
    """Stop the session's training: a running one leaves its step at the next layer (several processes: together,
    at the end of a step) and keeps the best checkpoint so far; a waiting one leaves the trainings queue."""
    state = state or {}
    waiting = stop_waiting(state)  # a training still waiting its turn, or starting
    if waiting is not None:
        return waiting
    session, run = state.get("session"), state.get("run")
    if session is None or run is None or not session.run_in_progress:
        return "Nothing is training."
    run.stop()
    if run.processes > 1:
        return "Stopping every training process at the next step; the best checkpoint so far is kept…"
    return "Stopping now (mid-step, at the next layer); the best checkpoint so far is kept…"
