"""A training run's settings by name, as the command line's flags and the Fine-tune tab's fields give them.

``config_from_settings(model=..., mode=..., ...)`` is the one place that turns them into a ``TrainConfig``: the
``train`` command and the app both call it, so the same settings make the same run. ``DEFAULTS`` names every
setting once; ``SETTING_HELP`` holds one line per setting for ``--help`` and the page.

One rule for epochs and a time budget, on both faces: a time budget replaces epochs (the run trains until the
budget is spent, its lr decaying to 0 by then); asking for both is refused. The page's epochs field always has
a value, so the page leaves it out when a budget is given (ui/training_settings.py).
"""

from __future__ import annotations

import re
from typing import Any

from ..weights import resolver as W
from .config import AMP_CHOICES, AUGMENTATIONS, MODES, OPTIMIZERS, RECIPE_HELP, RECIPES, SCHEDULES, TrainConfig

__all__ = ["CHOICES", "DEFAULTS", "SETTING_HELP", "config_from_settings", "parse_duration"]

# The defaults both faces show; None means "the recipe's value for the mode" (or the device's, for batch size).
DEFAULTS: dict[str, Any] = {
    "weights": "default",
    "mode": "linear",
    "recipe": "quick",
    "epochs": None,
    "time_budget": None,
    "lr": None,
    "optimizer": "default",
    "schedule": "default",
    "augment": "none",
    "label_smoothing": None,
    "bn_recalibration": None,
    "amp": "auto",
    "memory_efficient": False,
    "batch_size": None,
    "early_stopping": None,
    "val_fraction": 0.2,
    "device": "auto",
    "image_size": None,
    "seed": 0,
}
CHOICES: dict[str, tuple[str, ...]] = {
    "mode": MODES,
    "recipe": RECIPES,
    "optimizer": ("default", *OPTIMIZERS),
    "schedule": ("default", *SCHEDULES),
    "augment": AUGMENTATIONS,
    "amp": AMP_CHOICES,
}

SETTING_HELP: dict[str, str] = {
    "weights": "where to start: default (ImageNet where the model has it) | imagenet | random | PATH",
    "mode": "linear: frozen backbone, features cached once | finetune: every layer, the backbone at lr/10 | "
    "scratch: random init, every layer",
    "recipe": "; ".join(f"{name}: {line}" for name, line in RECIPE_HELP.items()),
    "epochs": "passes over the training images (default: the recipe's for the mode); a time budget replaces them",
    "time_budget": "train for this long, e.g. 60s, 2m, 1h: a budget replaces epochs (give one or the other); the run "
    "trains until it is spent, the lr decays to 0 as the time runs out and the best validated checkpoint is kept; "
    "default: none (epochs decide)",
    "lr": "peak learning rate (default: the recipe's for the mode)",
    "optimizer": f"{' | '.join(OPTIMIZERS)} (sgd: Nesterov momentum 0.9); default: the recipe's",
    "schedule": "cosine: warm-up then cosine to 0 | step: /10 at half and at three quarters of the run (the paper) "
    "| onecycle; default: the recipe's",
    "augment": "none | light: random crops | flip: crops and horizontal flips (only for data whose mirror image is "
    "the same class: not digits or text)",
    "label_smoothing": "share of each label spread over the other classes (default: the recipe's: 0.1 quick, 0 paper)",
    "bn_recalibration": "before each validation, recompute the BatchNorm statistics from the last N training "
    "batches, so that they match the weights (0: keep the running averages; default: the recipe's: 3 for quick "
    "scratch runs, else 0)",
    "amp": "mixed precision on a GPU: auto (bf16, else fp16) | off | bf16 | fp16",
    "memory_efficient": "recompute the concatenations in backward: less memory, about a fifth slower",
    "batch_size": "images per step (default: 32 on a CPU, 64 on a GPU)",
    "early_stopping": "stop after this many epochs without a better validation accuracy (default: never)",
    "val_fraction": "share of the images kept for validation, when the data has no val/ folder",
    "device": "auto | cpu | cuda | cuda:N",
    "image_size": "input side in pixels (default: the model's own)",
    "seed": "random seed of the split, the shuffle and the initial weights",
}

_UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_duration(text: str | float | None) -> float | None:
    """``"60s"``, ``"2m"``, ``"1.5h"``, ``"90"`` (seconds) or a number -> seconds; empty or None -> None."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([a-z]*)\s*", text.lower())
        if not match or match.group(2) not in _UNITS:
            raise ValueError(f"time budget {text!r} is not a duration; write e.g. 60s, 2m or 1h")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"time budget must be more than 0 seconds, got {text!r}")
    return seconds


def _default(value: Any) -> Any:
    """The page's and the flags' ways of saying "the default" (``default``, empty, 0 for a size) -> None."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "default")):
        return None
    return value


def _whole(value: Any) -> Any:
    """A whole number as the page sends it (``32.0``) -> ``32``; anything else as it is, for the range check."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def config_from_settings(model: Any, **settings: Any) -> TrainConfig:
    """A ``TrainConfig`` from named settings (names as in ``DEFAULTS``; unnamed ones take those defaults).

    Values may come as the page sends them (numbers as floats, ``"default"``, ``"Auto"``); a bad value raises
    ``ValueError`` naming the setting.
    """
    unknown = set(settings) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown training settings: {', '.join(sorted(unknown))}")
    s = {**DEFAULTS, **settings}
    weights = _default(s["weights"])
    # 0 means "the model's own" for the image size and "off" for early stopping; for epochs and the batch size it
    # is a value to refuse (TrainConfig names the range), not a default.
    epochs, batch_size = (None if _default(v) is None else _whole(v) for v in (s["epochs"], s["batch_size"]))
    image_size, patience = (_whole(v) if _default(v) else None for v in (s["image_size"], s["early_stopping"]))
    budget = parse_duration(_default(s["time_budget"]))
    if epochs is not None and budget is not None:
        raise ValueError(
            "give either a number of epochs or a time budget, not both: a time budget replaces the epochs "
            "(the run trains until it is spent)"
        )
    lr, smoothing = _default(s["lr"]), _default(s["label_smoothing"])
    recalibration = _default(s["bn_recalibration"])
    return TrainConfig(
        model=model,
        weights=W.DEFAULT if weights is None else weights,
        mode=str(s["mode"]).lower(),
        recipe=str(s["recipe"]).lower(),
        epochs=epochs,
        time_budget_s=budget,
        batch_size=batch_size,
        lr=float(lr) if lr else None,
        optimizer=_default(s["optimizer"]),
        schedule=_default(s["schedule"]),
        augment=str(s["augment"]).lower(),
        label_smoothing=None if smoothing is None else float(smoothing),
        bn_recalibration=None if recalibration is None else _whole(recalibration),
        amp=str(s["amp"]).lower(),
        memory_efficient=bool(s["memory_efficient"]),
        early_stopping_patience=patience,
        val_fraction=float(s["val_fraction"]),
        device=str(s["device"]).lower(),
        image_size=image_size,
        seed=int(s["seed"]),
    )
