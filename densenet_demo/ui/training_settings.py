"""The Fine-tune tab's run settings beyond the basics: recipe, time budget, augmentation, label smoothing, early
stopping, validation share, device; the mode's recipe values shown in the fields; settings suggested by the
loaded data; and an estimate of the time per epoch before Start. The same names and defaults as ``train``'s
flags (``train_settings``), and the same function turns them into a ``TrainConfig``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import gradio as gr

from ..training import advice as train_advice
from ..training import settings as train_settings
from ..training import setup as train_setup
from ..training.settings import CHOICES, DEFAULTS, SETTING_HELP
from .common import user_errors

__all__ = ["ExtraSettings", "build_extra_settings", "config_from_page", "estimate_text", "mode_values", "suggest"]

_RECIPE_INFO = " · ".join(f"{name}: {line}" for name, line in train_setup.RECIPE_HELP.items())


class ExtraSettings(NamedTuple):
    """The settings components this module adds, in the order ``start_training`` takes them after the basics."""

    recipe: gr.Radio
    time_budget: gr.Textbox
    augment: gr.Radio
    label_smoothing: gr.Number
    early_stopping: gr.Number
    val_fraction: gr.Slider
    device: gr.Dropdown

    def inputs(self) -> list[Any]:
        return list(self)


def build_extra_settings(example: train_setup.TrainConfig) -> tuple[ExtraSettings, gr.Markdown, gr.Button]:
    """The recipe, time budget and the rest (inside the settings column), showing the preselected example's
    settings; returns them, the estimate line and its button."""
    label_smoothing = example.resolved().label_smoothing
    recipe = gr.Radio(list(CHOICES["recipe"]), value=DEFAULTS["recipe"], label="Recipe", info=_RECIPE_INFO)
    time_budget = gr.Textbox(
        value="", label="Time budget (instead of epochs)", placeholder="e.g. 60s, 2m; empty: train for the epochs",
        info=SETTING_HELP["time_budget"], elem_id="train-time-budget",
    )  # fmt: skip
    with gr.Accordion("More settings", open=False):
        with gr.Row():
            augment = gr.Radio(
                list(CHOICES["augment"]), value=example.augment, label="Augmentation", info=SETTING_HELP["augment"]
            )
            smoothing = gr.Number(value=label_smoothing, label="Label smoothing", minimum=0, maximum=0.5)
        with gr.Row():
            patience = gr.Number(value=0, label="Early stopping: epochs without improvement (0: never)", precision=0)
            val_fraction = gr.Slider(0.05, 0.5, value=DEFAULTS["val_fraction"], step=0.05, label="Validation share")
            device = gr.Dropdown(["auto", "cpu", "cuda"], value=DEFAULTS["device"], label="Device")
    with gr.Row():
        estimate = gr.Button("Estimate time", size="sm", elem_id="train-estimate-button")
        estimate_line = gr.Markdown("", elem_id="train-estimate")
    extra = ExtraSettings(recipe, time_budget, augment, smoothing, patience, val_fraction, device)
    return extra, estimate_line, estimate


def config_from_page(
    model: str,
    weights_choice: str,
    mode: str,
    epochs: float | None,
    lr: float | None,
    batch_size: float | None,
    image_size: float | None,
    memory_efficient: bool,
    amp: str,
    optimizer: str,
    schedule: str,
    *extra: Any,
) -> train_setup.TrainConfig:
    """The page's fields (the basics in the ``/train`` order, then ``ExtraSettings``) -> ``TrainConfig``, through
    ``train_settings.config_from_settings`` as the ``train`` command does; bad values become a ``gr.Error``."""
    names = ExtraSettings._fields
    extras = dict(zip(names, extra, strict=False))
    with user_errors(ValueError):
        return train_settings.config_from_settings(
            model,
            weights="random" if weights_choice == "Random init" or mode == "scratch" else "default",
            mode=mode,
            epochs=None if extras.get("time_budget") else epochs,  # a budget replaces the epochs
            lr=lr,
            batch_size=batch_size,
            image_size=image_size,
            memory_efficient=memory_efficient,
            amp=amp,
            optimizer=optimizer,
            schedule=schedule,
            **extras,
        )


def mode_values(mode: str, recipe: str) -> tuple[int, float, str, str, float]:
    """The recipe's epochs, lr, optimizer, schedule and label smoothing for ``mode``: what the fields show."""
    d = train_setup.recipe_defaults(recipe or "quick", mode)
    return d["epochs"], d["lr"], d["optimizer"], d["schedule"], d["label_smoothing"]


def suggest(state: dict[str, Any] | None, source: str, recipe: str) -> tuple[Any, ...]:
    """After a dataset is checked: a line of advice, and the model, mode, image size, time budget, augmentation
    (none: flips hurt digits and text) and the mode's recipe values (epochs, lr, optimizer, schedule, label
    smoothing) that suit it. The example keeps its own settings."""
    dataset = (state or {}).get("dataset")
    if dataset is None or source == "Example dataset":
        return ("",) + (gr.skip(),) * 10
    s = train_advice.suggest_settings(dataset[0])
    line = f"Suggested for this data: {s.model}, {s.mode}, {s.image_size} px, time budget {s.time_budget} ({s.reason})."
    return line, s.model, s.mode, s.image_size, s.time_budget, DEFAULTS["augment"], *mode_values(s.mode, recipe)


def estimate_text(
    state: dict[str, Any] | None,
    model: str,
    weights_choice: str,
    mode: str,
    epochs: float | None,
    lr: float | None,
    batch_size: float | None,
    image_size: float | None = None,
    memory_efficient: bool = False,
    amp: str = "Auto",
    optimizer: str = "default",
    schedule: str = "default",
    recipe: str = "quick",
    time_budget: str = "",
    augment: str = "none",
    label_smoothing: float | None = None,
    early_stopping: float | None = None,
    val_fraction: float = 0.2,
    device: str = "auto",
) -> str:
    """Time one epoch and the run on this machine (two steps of the chosen model), before Start: the settings of
    ``/train``, by the same names."""
    dataset = (state or {}).get("dataset")
    if dataset is None:
        return "Check a dataset first: the estimate needs its size."
    files, _ = dataset
    basics = (model, weights_choice, mode, epochs, lr, batch_size, image_size, memory_efficient, amp, optimizer)
    extra = (recipe, time_budget, augment, label_smoothing, early_stopping, val_fraction, device)
    config = config_from_page(*basics, schedule, *extra)
    n_train, n_val = (len(part) for part in files.split(config.val_fraction, config.seed))
    return train_advice.estimate_time(config, n_train, n_val, list(files.class_names)).text()
