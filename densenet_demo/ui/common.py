"""What the tabs share: the model lists (presets and fine-tuned runs) and engine errors turned into messages."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import gradio as gr

from .. import weights
from ..config import PRESETS

__all__ = ["model_choices", "preset_choices", "reuse_choices", "user_errors"]


def preset_choices() -> list[tuple[str, str]]:
    """(label, value) for each preset, its one-line summary in the label."""
    return [(f"{name} — {preset.summary}", name) for name, preset in PRESETS.items()]


def model_choices() -> list[tuple[str, str]]:
    """The fine-tuned runs (newest first, ``run:<id>``) and then the presets, for the Predict tab."""
    runs = []
    for run in weights.list_runs():
        acc = run.metrics.get("best_val_acc")
        label = f"Fine-tuned: {run.run_id}" + (f" (val acc {acc:.0%})" if isinstance(acc, (int, float)) else "")
        runs.insert(0, (label, f"run:{run.run_id}"))
    return runs + preset_choices()


def reuse_choices() -> list[tuple[str, str]]:
    """Where the Architecture tab's feature-reuse heatmap may take its weights from."""
    runs = [(f"fine-tuned run {r.run_id}", f"run:{r.run_id}") for r in weights.list_runs()]
    return [("none", "none"), ("ImageNet weights (when available)", "imagenet")] + runs


@contextmanager
def user_errors(*errors: type[Exception]) -> Iterator[None]:
    """The engine's errors of these types reach the page as their plain message (the engine words them for people)."""
    try:
        yield
    except errors as e:
        raise gr.Error(str(e)) from None
