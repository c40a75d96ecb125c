"""How a training run looks on the page: its progress bar, one line of text per event, the curves, the outcome.

Server paths stay in the server's log: the page names runs and files, never where they are on disk.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Sequence
from pathlib import PurePath
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from .. import plots
from ..training.config import EPOCHS_UNDER_BUDGET
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
from .common import names_only

__all__ = [
    "FEW_VAL_IMAGES",
    "curves",
    "event_line",
    "outcome_line",
    "PER_CLASS_COLUMNS",
    "per_class_frame",
    "progress_html",
    "skipped_lines",
]

logger = logging.getLogger(__name__)

# Below this many validation images an accuracy moves in steps of 5% or more: say that it means little.
FEW_VAL_IMAGES = 20


def progress_html(fraction: float, text: str) -> str:
    """A progress bar (styled by the app's CSS) with a status line under it; ``text`` is shown as plain text."""
    pct = max(0.0, min(1.0, fraction)) * 100
    return (
        f'<div class="progress-outer"><div class="progress-inner" style="width:{pct:.1f}%"></div></div>'
        f'<p id="train-status">{html.escape(text)}</p>'
    )


def _of(epochs: int) -> str:
    """``/N`` after an epoch number, or nothing under a time budget (where N is only a limit)."""
    return f"/{epochs}" if epochs < EPOCHS_UNDER_BUDGET else ""


def event_line(event: Event, total_epochs: int, processes: int = 1) -> tuple[float | None, str]:
    """The fraction of the run done (None: as it was) and one line saying what happened, for every event but the
    last.

    ``processes``: how many train (``Started.world_size``), said on each step's line when more than one.
    """
    if isinstance(event, Started):
        amp_text = f", mixed precision {event.amp}" if event.amp else ""
        ranks = (
            f" in {event.world_size} processes (global batch {event.global_batch_size})" if event.world_size > 1 else ""
        )
        return 0.0, (
            f"Started run {event.run_id}: {len(event.classes)} classes, {event.n_train} train / "
            f"{event.n_val} val images, {event.steps_per_epoch} steps per epoch, {event.mode} mode "
            f"on {event.device}{ranks}{amp_text}; weights: {names_only(event.weights)}."
            + (f" Time budget {event.time_budget_s:.0f} s." if event.time_budget_s else "")
        )
    if isinstance(event, Preparing):
        return 0.0, f"Preparing: {event.what}…"
    if isinstance(event, Evaluated):
        return event.epoch / total_epochs, (
            f"Validated after {event.epoch} of an epoch: val loss {event.val_loss:.3f} acc {event.val_acc:.1%}"
            + (" · best so far, saved" if event.improved else "")
        )
    if isinstance(event, Validating):
        return None, f"Validating on {event.images} images after {event.epoch:g} epoch(s)…"
    if isinstance(event, Caching):
        return event.done / max(1, event.total), f"Computing features once: {event.done}/{event.total} images"
    if isinstance(event, Step):
        gpu = f" · GPU {event.gpu_memory_mb:.0f} MB" if event.gpu_memory_mb else ""
        ranks = f" · {processes} processes" if processes > 1 else ""
        return event.progress, (
            f"epoch {event.epoch}{_of(total_epochs)}, step {event.step}/{event.steps}{ranks} · "
            f"loss {event.loss:.3f} · acc {event.acc:.1%} · {event.images_per_s:.1f} img/s{gpu} · "
            f"ETA {event.eta_s:.0f} s"
        )
    if isinstance(event, EpochEnd):
        part = f" ({event.fraction:.0%} of it: the time budget ran out)" if event.fraction < 1 else ""
        return event.epoch / event.epochs, (
            f"Epoch {event.epoch}{_of(event.epochs)}{part}: "
            f"train loss {event.train_loss:.3f} acc {event.train_acc:.1%} · "
            f"val loss {event.val_loss:.3f} acc {event.val_acc:.1%} · {event.seconds:.1f} s"
            + (" · best so far, saved" if event.improved else "")
        )
    raise TypeError(f"no progress line for {type(event).__name__}")


def skipped_lines(skipped: list[tuple[str, str]]) -> list[str]:
    """One log line per image dropped while training, by its file name."""
    return [f"  skipped {PurePath(path).name}: {names_only(reason)}" for path, reason in skipped]


def outcome_line(event: Event, n_val: int) -> str:
    """What the run's last event means, in one line: the best accuracy (and how much it means), or why it ended."""
    checkpoint = getattr(event, "checkpoint_dir", None)
    if checkpoint:
        logger.info("run %s: checkpoint at %s", PurePath(checkpoint).name, checkpoint)
    saved = f" Saved as run {PurePath(checkpoint).name} (pick it in Predict)." if checkpoint else ""
    if isinstance(event, Finished):
        return f"Finished: best val acc {event.best_val_acc:.1%} (epoch {event.best_epoch}).{few_images(n_val)}{saved}"
    if isinstance(event, Cancelled):
        if checkpoint and event.best_val_acc is None:
            return f"Stopped before the first validation: the weights trained so far are kept, not validated.{saved}"
        kept = "the best checkpoint so far is kept." if checkpoint else "no checkpoint was written."
        return f"Stopped: {kept}{saved}"
    if isinstance(event, Failed):
        kept = " The best checkpoint so far is kept." if checkpoint else ""
        return f"Failed: {names_only(event.message)}{kept}{saved}"
    raise TypeError(f"{type(event).__name__} does not end a run")


def few_images(n_val: int) -> str:
    """A warning when the validation set is too small for its accuracy to mean much; empty otherwise."""
    if n_val >= FEW_VAL_IMAGES:
        return ""
    return (
        f" Measured on only {n_val} validation image(s): too few to mean much (one image moves it by "
        f"{1 / max(n_val, 1):.0%}); add more images (at least {FEW_VAL_IMAGES})."
    )


PER_CLASS_COLUMNS = ["class", "val acc"]


def per_class_frame(per_class: dict[str, float | None] | None) -> pd.DataFrame:
    """Per-class validation accuracy as a table; with its headers and no rows when there is none yet."""
    rows = [{"class": c, "val acc": None if a is None else round(a, 4)} for c, a in (per_class or {}).items()]
    return pd.DataFrame(rows, columns=PER_CLASS_COLUMNS)


def curves(
    history: list[dict[str, Any]], metric: str, epochs: float | None, live: Sequence[dict[str, Any]] = ()
) -> Figure:
    """Train and val curves of ``metric`` ("loss" or "acc") per epoch, over the run's ``epochs`` (planned, or
    expected under a time budget; None: not known yet), and the ``live`` points of that metric (the smoothed
    per-step loss, mid-epoch validations) from the first steps on. An epoch a budget cut short sits where it
    ended (epoch 3 after 40% of its steps: at 2.4)."""
    if epochs is not None and epochs >= EPOCHS_UNDER_BUDGET:
        epochs = None  # a time budget's limit, not a length
    series = {
        f"{split} {metric}": [
            (h["epoch"] - 1 + h.get("fraction", 1.0), h[f"{split}_{metric}"])
            for h in history
            if h.get(f"{split}_{metric}") is not None
        ]
        for split in ("train", "val")
    }
    steps: dict[str, list[tuple[float, float]]] = {}
    for row in live:
        if row["series"].split(" (")[0].endswith(metric):
            steps.setdefault(row["series"], []).append((row["epoch"], row["value"]))
    title = "Accuracy" if metric == "acc" else "Loss"
    return plots.curves_figure(series, title=title, epochs=epochs, percent=metric == "acc", live=steps)
