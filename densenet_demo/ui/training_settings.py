"""The Fine-tune tab's run settings: the one list of them (``PAGE_SETTINGS``: the public ``/train`` and ``/estimate``
parameters, in order, with their defaults), their turn into a ``TrainConfig`` by name (``config_from_page``), the
settings beyond the basics (recipe, time budget, augmentation, label smoothing, early stopping, validation share,
device), the mode's recipe values shown in the fields, settings suggested by the loaded data, and an estimate of
the time per epoch before Start. The same names and defaults as ``train``'s flags (training/settings.py), and the
same function turns them into a ``TrainConfig``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, TypeVar

import gradio as gr

from ..training import advice
from ..training.config import RECIPE_HELP, TrainConfig, example_config, recipe_defaults
from ..training.settings import CHOICES, DEFAULTS, SETTING_HELP, config_from_settings
from .common import PAGE_WEIGHTS, WEIGHTS_LABELS, user_errors

__all__ = [
    "PAGE_SETTINGS",
    "ExtraSettings",
    "build_extra_settings",
    "config_from_page",
    "estimate_text",
    "mode_values",
    "SUGGESTED",
    "apply_suggestion",
    "mark_touched",
    "suggest_settings",
    "takes_page_settings",
]

T = TypeVar("T")
_REQUIRED = inspect.Parameter.empty

# The page's settings in the order the /train and /estimate endpoints take them, with the type and default each
# shows its callers: the public API (names, order and defaults stay). The components are wired in this order too;
# past the handlers everything takes them by name.
PAGE_SETTINGS: tuple[tuple[str, Any, Any], ...] = (
    ("model", str, _REQUIRED),
    ("weights_choice", str, _REQUIRED),  # "ImageNet" or "Random init" (common.WEIGHTS_LABELS)
    ("mode", str, _REQUIRED),
    ("epochs", float | None, _REQUIRED),
    ("lr", float | None, _REQUIRED),
    ("batch_size", float | None, _REQUIRED),
    ("image_size", float | None, None),
    ("memory_efficient", bool, False),
    ("amp", str, "Auto"),
    ("optimizer", str, "default"),
    ("schedule", str, "default"),
    ("recipe", str, "quick"),  # then ExtraSettings, in its order
    ("time_budget", str, ""),
    ("augment", str, "none"),
    ("label_smoothing", float | None, None),
    ("early_stopping", float | None, None),
    ("val_fraction", float, 0.2),
    ("device", str, "auto"),
)
SETTING_NAMES = tuple(name for name, _, _ in PAGE_SETTINGS)


def takes_page_settings(body: Callable[..., T]) -> Callable[..., T]:
    """``body(..., settings, ...)`` as an event handler whose parameters are ``PAGE_SETTINGS`` in place of
    ``settings``: the signature the page's endpoints show their callers (Gradio reads it), while ``body`` gets the
    settings as one mapping by name. A generator stays a generator (Gradio streams its updates)."""
    own = inspect.signature(body)
    params = list(own.parameters.values())
    at = [p.name for p in params].index("settings")
    expanded = [
        inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default, annotation=kind)
        for name, kind, default in PAGE_SETTINGS
    ]
    trailing = [p.replace(kind=inspect.Parameter.POSITIONAL_OR_KEYWORD) for p in params[at + 1 :]]
    signature = own.replace(parameters=[*params[:at], *expanded, *trailing])

    def arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        given = dict(bound.arguments)
        settings = {name: given.pop(name) for name in SETTING_NAMES}
        return [given.pop(p.name) for p in params[:at]] + [settings], given

    if inspect.isgeneratorfunction(body):

        @functools.wraps(body)
        def handler(*args: Any, **kwargs: Any) -> Any:
            leading, rest = arguments(args, kwargs)
            yield from body(*leading, **rest)

    else:

        @functools.wraps(body)
        def handler(*args: Any, **kwargs: Any) -> Any:
            leading, rest = arguments(args, kwargs)
            return body(*leading, **rest)

    handler.__signature__ = signature  # type: ignore[attr-defined]
    return handler


def config_from_page(settings: Mapping[str, Any]) -> TrainConfig:
    """The page's settings by name -> ``TrainConfig``, through ``settings.config_from_settings`` as the ``train``
    command does; bad values become a ``gr.Error``. The page's words become the engine's: the weights choice
    (``WEIGHTS_LABELS``), and a time budget replaces the epochs the field always shows."""
    named = dict(settings)
    choice = named.pop("weights_choice")
    if named.get("time_budget"):
        named["epochs"] = None
    with user_errors(ValueError):
        return config_from_settings(weights=WEIGHTS_LABELS.get(choice, choice), **named)


class ExtraSettings(NamedTuple):
    """The settings components this module adds, named as ``PAGE_SETTINGS`` names them."""

    recipe: gr.Radio
    time_budget: gr.Textbox
    augment: gr.Radio
    label_smoothing: gr.Number
    early_stopping: gr.Number
    val_fraction: gr.Slider
    device: gr.Dropdown


def build_extra_settings(example: TrainConfig) -> tuple[ExtraSettings, gr.Markdown, gr.Button]:
    """The recipe, time budget and the rest (inside the settings column), showing the preselected example's
    settings; returns them, the estimate line and its button."""
    label_smoothing = example.resolved().label_smoothing
    recipe_info = " · ".join(f"{name}: {line}" for name, line in RECIPE_HELP.items())
    recipe = gr.Radio(list(CHOICES["recipe"]), value=DEFAULTS["recipe"], label="Recipe", info=recipe_info)
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


def mode_values(mode: str, recipe: str) -> tuple[int, float, str, str, float]:
    """The recipe's epochs, lr, optimizer, schedule and label smoothing for ``mode``: what the fields show."""
    d = recipe_defaults(recipe or "quick", mode)
    return d["epochs"], d["lr"], d["optimizer"], d["schedule"], d["label_smoothing"]


# The settings a suggestion fills, as the page names them; a field a person has set stays as they set it.
SUGGESTED = ("model", "weights_choice", "mode", "image_size", "batch_size", "time_budget", "augment")


def suggest_settings(state: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The settings suggested for the checked dataset on this machine, by name, with the reason in one line.

    Measured (training/advice.py): the images' size and colour, then candidate models timed here at that size.
    The example dataset brings its own quick settings. Returns ``{"model", "weights_choice", "mode",
    "image_size", "batch_size", "time_budget", "augment", "reason", "epoch_s"}`` (``epoch_s``: the measured
    seconds of an epoch at these settings; 0 when not measured); check a dataset first (``/load_dataset``).
    """
    state = dict(state or {})
    dataset = state.get("dataset")
    if dataset is None:
        raise gr.Error("Check a dataset first (step 1, or /load_dataset); the suggestion is for its images.")
    if state.get("dataset_key") == "Example dataset":
        ex = example_config()
        settings = {"model": ex.model, "mode": ex.mode, "image_size": ex.image_size, "batch_size": ex.batch_size}
        settings |= {"weights_choice": "Random init", "time_budget": "", "augment": ex.augment}
        settings |= {"epochs": ex.epochs, "lr": ex.lr, "optimizer": ex.optimizer, "schedule": ex.schedule}
        settings["label_smoothing"] = ex.label_smoothing
        reason = "the example's own quick settings: densenet_fashion from scratch at 48 px, 90% in about a minute"
        suggestion = {**settings, "reason": reason, "epoch_s": 0.0}
    else:
        s = advice.suggest_settings(dataset[0])
        named = s.settings()
        suggestion = {name: named[name] for name in SUGGESTED if name in named}
        suggestion["weights_choice"] = PAGE_WEIGHTS[named["weights"]]
        suggestion |= {"reason": s.reason, "epoch_s": round(s.epoch_s, 2)}
    state["suggestion"] = suggestion
    return suggestion, state


def apply_suggestion(suggestion: dict[str, Any] | None, touched: list[str] | None, recipe: str) -> list[Any]:
    """The suggestion in the page's fields, less those the person set themselves (``touched``), with a line saying
    what was suggested and why; then the recipe's values for the mode. Order: ``SUGGESTED``, the line, the
    estimate line, the recipe fields (``mode_values``)."""
    if not suggestion:
        return [gr.skip()] * (len(SUGGESTED) + 2 + 5)
    touched = set(touched or ())
    kept = [name for name in SUGGESTED if name in touched and name in suggestion]
    values = [gr.skip() if name in touched or name not in suggestion else suggestion[name] for name in SUGGESTED]
    line = f"**Suggested**: {suggestion['reason']}."
    if kept:
        line += " Kept as you set: " + ", ".join(f"{name.replace('_', ' ')}" for name in kept) + "."
    estimate = ""
    if suggestion.get("epoch_s"):
        estimate = f"An epoch: about {advice.duration(suggestion['epoch_s'])} (measured for the suggestion)."
    if "mode" in touched:
        recipe_values = [gr.skip()] * 5
    else:  # the recipe's values for the suggested mode, or the suggestion's own (the example's)
        names = ("epochs", "lr", "optimizer", "schedule", "label_smoothing")
        defaults = mode_values(suggestion["mode"], recipe)
        recipe_values = [suggestion.get(n, v) for n, v in zip(names, defaults, strict=True)]
    return [*values, line, estimate, *recipe_values]


def mark_touched(name: str) -> Callable[[list[str] | None], list[str]]:
    """A handler for a field's ``input`` event: remember that the person set ``name`` (a suggestion keeps it)."""

    def touched(names: list[str] | None) -> list[str]:
        return sorted({*(names or ()), name})

    return touched


@takes_page_settings
def estimate_text(state: dict[str, Any] | None, settings: dict[str, Any]) -> str:
    """Time an epoch and the run on this machine with these settings (a few real steps of the model, its
    optimizer, batch and image size, and the data's own files decoded), before Start: the settings of ``/train``,
    by the same names."""
    dataset = (state or {}).get("dataset")
    if dataset is None:
        return "Check a dataset first: the estimate needs its size."
    files, _ = dataset
    config = config_from_page(settings)
    n_train, n_val = (len(part) for part in files.split(config.val_fraction, config.seed))
    estimate = advice.estimate_time(config, n_train, n_val, list(files.class_names), files)
    suggested = (state or {}).get("suggestion") or {}
    if all(str(settings.get(k)) == str(v) for k, v in suggested.items() if k in ("model", "mode", "image_size")):
        estimate = dataclasses.replace(estimate, warning=None)  # the suggestion is already the quick path here
    return f"For {settings['model']} ({settings['mode']}): {estimate.text()}"
