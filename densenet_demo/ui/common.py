"""What the tabs share: the model lists (presets and fine-tuned runs) and engine errors turned into messages."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import PurePosixPath

import gradio as gr

from .. import checkpoints
from ..config import PRESETS

__all__ = ["model_choices", "names_only", "preset_choices", "reuse_choices", "user_errors"]

# An absolute server path in a message: a '/' that starts a word (not the '//' of a URL), up to a space,
# quote, bracket, comma or colon.
_SERVER_PATH = re.compile(r"(?<![\w:/.~-])/[^\s'\"()<>,;:]+")


def preset_choices() -> list[tuple[str, str]]:
    """(label, value) for each preset, its one-line summary in the label."""
    return [(f"{name} — {preset.summary}", name) for name, preset in PRESETS.items()]


def model_choices() -> list[tuple[str, str]]:
    """The fine-tuned runs (newest first, ``run:<id>``) and then the presets, for the Predict tab."""
    runs = []
    for run in checkpoints.list_runs():
        acc = run.metrics.get("best_val_acc")
        label = f"Fine-tuned: {run.run_id}" + (f" (val acc {acc:.0%})" if isinstance(acc, (int, float)) else "")
        runs.insert(0, (label, f"run:{run.run_id}"))
    return runs + preset_choices()


def reuse_choices() -> list[tuple[str, str]]:
    """Where the Architecture tab's feature-reuse heatmap may take its weights from."""
    runs = [(f"fine-tuned run {r.run_id}", f"run:{r.run_id}") for r in checkpoints.list_runs()]
    return [("none", "none"), ("ImageNet weights (when available)", "imagenet")] + runs


@contextmanager
def user_errors(*errors: type[Exception]) -> Iterator[None]:
    """The engine's errors of these types reach the page as their plain message (the engine words them for people)."""
    try:
        yield
    except errors as e:
        raise gr.Error(str(e)) from None


def names_only(text: str) -> str:
    """``text`` with each absolute server path shortened to its last name (``/tmp/x/run.zip`` -> ``run.zip``)."""
    return _SERVER_PATH.sub(lambda m: PurePosixPath(m.group(0)).name or m.group(0), text)
