"""How a training run looks on the page: its progress bar, one line of text per event, the curves' data."""

from __future__ import annotations

from typing import Any

import pandas as pd

from .. import train
from ..train_setup import EPOCHS_UNDER_BUDGET

__all__ = ["curve_frame", "event_line", "progress_html"]


def progress_html(fraction: float, text: str) -> str:
    """A progress bar (styled by the app's CSS) with a status line under it."""
    pct = max(0.0, min(1.0, fraction)) * 100
    return (
        f'<div class="progress-outer"><div class="progress-inner" style="width:{pct:.1f}%"></div></div>'
        f'<p id="train-status">{text}</p>'
    )


def _of(epochs: int) -> str:
    """``/N`` after an epoch number, or nothing under a time budget (where N is only a limit)."""
    return f"/{epochs}" if epochs < EPOCHS_UNDER_BUDGET else ""


def event_line(event: train.Event, total_epochs: int) -> tuple[float, str]:
    """The fraction of the run done and one line saying what happened, for every event but the last."""
    if isinstance(event, train.Started):
        amp_text = f", mixed precision {event.amp}" if event.amp else ""
        return 0.0, (
            f"Started run {event.run_id}: {len(event.classes)} classes, {event.n_train} train / "
            f"{event.n_val} val images, {event.steps_per_epoch} steps per epoch, {event.mode} mode "
            f"on {event.device}{amp_text}; weights: {event.weights}."
            + (f" Time budget {event.time_budget_s:.0f} s." if event.time_budget_s else "")
        )
    if isinstance(event, train.Preparing):
        return 0.0, f"Preparing: {event.what}…"
    if isinstance(event, train.Evaluated):
        return event.epoch / total_epochs, (
            f"Validated after {event.epoch} of an epoch: val loss {event.val_loss:.3f} acc {event.val_acc:.1%}"
            + (" · best so far, saved" if event.improved else "")
        )
    if isinstance(event, train.Caching):
        return event.done / max(1, event.total), f"Computing features once: {event.done}/{event.total} images"
    if isinstance(event, train.Step):
        gpu = f" · GPU {event.gpu_memory_mb:.0f} MB" if event.gpu_memory_mb else ""
        return event.progress, (
            f"epoch {event.epoch}{_of(total_epochs)}, step {event.step}/{event.steps} · "
            f"loss {event.loss:.3f} · acc {event.acc:.1%} · {event.images_per_s:.1f} img/s{gpu} · "
            f"ETA {event.eta_s:.0f} s"
        )
    if isinstance(event, train.EpochEnd):
        return event.epoch / event.epochs, (
            f"Epoch {event.epoch}{_of(event.epochs)}: train loss {event.train_loss:.3f} acc {event.train_acc:.1%} · "
            f"val loss {event.val_loss:.3f} acc {event.val_acc:.1%} · {event.seconds:.1f} s"
            + (" · best so far, saved" if event.improved else "")
        )
    raise TypeError(f"no progress line for {type(event).__name__}")


def curve_frame(history: list[dict[str, Any]], metric: str, live: list[dict[str, Any]] = ()) -> pd.DataFrame:
    """Train and val curves of ``metric`` ("loss" or "acc") per epoch, long format for a LinePlot, plus the
    ``live`` points of that metric (per-step loss, mid-epoch validations: rows with a fractional epoch)."""
    rows = [row for row in live if row["series"].split(" (")[0].endswith(metric)]
    rows += [
        {"epoch": h["epoch"], "value": h[key], "series": f"{split} {metric}"}
        for h in history
        for split, key in (("train", f"train_{metric}"), ("val", f"val_{metric}"))
        if h.get(key) is not None
    ]
    return pd.DataFrame(rows, columns=["epoch", "value", "series"])
