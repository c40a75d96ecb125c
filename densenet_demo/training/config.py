"""A training run's settings as data: ``TrainConfig`` (every field by name, to and from a JSON-ready dict), the
recipes that fill in what a config leaves open, and the example dataset's quick setting. Pure data and checks:
what a run is built from (the device, the model, the optimizer) is training/build.py.

One rule ties epochs to a time budget: a run counts in epochs, or (with ``time_budget_s``) it trains until the
budget is spent, its epochs then only an upper bound of ``EPOCHS_UNDER_BUDGET``. The settings both faces take
(training/settings.py) give one or the other, never both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from ..config import PRESETS, DenseNetConfig, min_image_size
from ..hosting import gpu
from ..validation import check_choice, check_int, check_number
from ..weights import pretrained
from ..weights import resolver as W

__all__ = [
    "AMP_CHOICES",
    "AUGMENTATIONS",
    "EPOCHS_UNDER_BUDGET",
    "MODES",
    "OPTIMIZERS",
    "RECIPES",
    "RECIPE_HELP",
    "SCHEDULES",
    "TrainConfig",
    "default_batch_size",
    "example_config",
    "recipe_defaults",
]

MODES = ("linear", "finetune", "scratch")
RECIPES = ("quick", "paper")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "step", "onecycle")
AUGMENTATIONS = ("none", "light", "flip")
AMP_CHOICES = ("auto", "off", "bf16", "fp16")

# One line per recipe, for --help and the Fine-tune tab.
RECIPE_HELP = {
    "quick": "AdamW, short linear warm-up then cosine to 0, label smoothing 0.1, from scratch BatchNorm statistics "
    "recomputed before each validation: a good model in a few epochs or a time budget (measured on digit scans and "
    "texture photos, bench/recipe_sweep.py)",
    "paper": "the DenseNet paper's: SGD with Nesterov momentum 0.9, lr 0.1 (scratch) divided by 10 at 50% and 75% "
    "of the run, no warm-up, no label smoothing; made for hundreds of epochs",
}

# Defaults per recipe and mode, filled in by TrainConfig.resolved() for the fields left as None.
_RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "quick": {
        # A linear head on cached features: epochs cost milliseconds, so take many; Adam converges fastest.
        "linear": {"epochs": 30, "lr": 1e-2, "optimizer": "adamw", "schedule": "cosine", "warmup": 0.0},
        # Fine-tuning: few epochs at a small lr (Adam 1e-3 for the new head, 1e-4 for the pretrained backbone).
        "finetune": {"epochs": 5, "lr": 1e-3, "optimizer": "adamw", "schedule": "cosine", "warmup": 0.05},
        # From scratch: AdamW 2e-3 with 10% warm-up beat the paper's SGD 0.1 + steps and Adam 1e-3 at equal time
        # on real scans and photos (bench/recipe_sweep.py; docs/training.md); warm-up keeps Adam's first steps sane.
        "scratch": {"epochs": 5, "lr": 2e-3, "optimizer": "adamw", "schedule": "cosine", "warmup": 0.1},
    },
    "paper": {
        "linear": {"epochs": 30, "lr": 0.1, "optimizer": "sgd", "schedule": "step", "warmup": 0.0},
        "finetune": {"epochs": 10, "lr": 0.01, "optimizer": "sgd", "schedule": "step", "warmup": 0.0},
        "scratch": {"epochs": 30, "lr": 0.1, "optimizer": "sgd", "schedule": "step", "warmup": 0.0},
    },
}
# Label smoothing 0.1 helped on texture photos (+9 points) and cost little on digit scans (-3.6) when training
# from scratch; the linear head keeps plain cross-entropy (not measured there). The paper used none.
_LABEL_SMOOTHING = {"quick": {"linear": 0.0, "finetune": 0.1, "scratch": 0.1}, "paper": dict.fromkeys(MODES, 0.0)}
# Training batches to recompute the BatchNorm statistics from before each validation (training/batchnorm_stats.py): from
# scratch at a high lr the running averages lag the weights (0.39 vs 0.94 val acc on digit scans at half an
# epoch). 3 batches scored as 4 did (mean of 4 batch orders on digits at half an epoch: 0.942 vs 0.939; textures
# within the spread of 5 orders) at three quarters of the cost; 2 lost a point on digits (0.932). Linear mode's
# backbone keeps its statistics; fine-tuning and the paper's protocol were not measured.
_BN_RECALIBRATION = {"quick": {"linear": 0, "finetune": 0, "scratch": 3}, "paper": dict.fromkeys(MODES, 0)}
# A time budget replaces epochs: the run goes on (up to this many epochs) until the budget is spent.
EPOCHS_UNDER_BUDGET = 10_000


def recipe_defaults(recipe: str, mode: str) -> dict[str, Any]:
    """The settings a recipe gives a mode: epochs, lr, optimizer, schedule, warm-up, weight decay, label smoothing,
    BatchNorm recalibration."""
    check_choice("recipe", recipe, RECIPES)
    check_choice("mode", mode, MODES)
    smoothing, recalibration = _LABEL_SMOOTHING[recipe][mode], _BN_RECALIBRATION[recipe][mode]
    return {
        **_RECIPES[recipe][mode],
        "weight_decay": 1e-4,
        "label_smoothing": smoothing,
        "bn_recalibration": recalibration,
    }


def default_batch_size(device: str) -> int:
    """32 on a CPU (bigger batches only slow the first results there); 64 on a GPU, which has room to fill."""
    if device == "auto":  # on ZeroGPU the Space's process has no GPU, but every run trains on one
        return 64 if gpu.has_gpu() else 32
    # cuda asked for on a machine without one: 32 here; the run itself reports it (build.pick_device)
    on_gpu = str(device).startswith("cuda") and not gpu.deferred() and torch.cuda.is_available()
    return 64 if on_gpu else 32


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; ``None`` fields take the mode's defaults (``resolved()``)."""

    model: str | DenseNetConfig = "densenet121"  # preset name, run:<id>, checkpoint folder, or a config
    weights: str | None = None  # default (or None) | imagenet | random | weights file | checkpoint folder
    mode: str = "linear"
    recipe: str = "quick"  # where the None fields below come from: quick | paper (RECIPE_HELP)
    epochs: int | None = None  # with a time budget: an upper bound (None: none)
    time_budget_s: float | None = None  # stop when this much time has passed since the start; the lr follows it
    batch_size: int | None = None  # None: 32 on a CPU, 64 on a GPU
    lr: float | None = None  # the head's lr; in finetune the backbone gets lr * backbone_lr_factor
    optimizer: str | None = None  # adamw | sgd (Nesterov momentum 0.9)
    schedule: str | None = None  # cosine (to 0) | step (/10 at 50% and 75% of the run) | onecycle
    warmup: float | None = None  # share of the run (steps, or the time budget) over which the lr ramps up
    weight_decay: float | None = None
    label_smoothing: float | None = None
    bn_recalibration: int | None = None  # training batches to recompute BatchNorm statistics from (0: keep them)
    backbone_lr_factor: float = 0.1
    image_size: int | None = None  # None: the weights' own (224 ImageNet, 32 CIFAR, 64 grayscale)
    augment: str = "none"  # none | light (random crops) | flip (crops + horizontal flips: hurts on text, digits)
    val_fraction: float = 0.2  # ignored when the data comes with a val/ folder
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto: bf16 (or fp16 + loss scaling) on CUDA, off on the CPU
    channels_last: bool | None = None  # None: on (CUDA and CPU convolutions run faster in NHWC: bench/finetune.py)
    memory_efficient: bool = False  # recompute concat + BN-ReLU-conv1 in backward: less memory, ~20% slower
    early_stopping_patience: int | None = None  # stop after this many epochs without a better val accuracy
    num_workers: int | None = None  # image decoding processes; None: 0 on the CPU (2 cores), up to 8 on CUDA
    cache_features: bool = True  # linear mode: compute features once (False runs the backbone every epoch)

    def __post_init__(self) -> None:
        if isinstance(self.augment, bool):  # the older on/off form: on meant crops and flips
            object.__setattr__(self, "augment", "flip" if self.augment else "none")
        check_choice("mode", self.mode, MODES)
        check_choice("recipe", self.recipe, RECIPES)
        check_choice("augment", self.augment, AUGMENTATIONS)
        check_choice("optimizer", self.optimizer, OPTIMIZERS, optional=True)
        check_choice("schedule", self.schedule, SCHEDULES, optional=True)
        check_choice("amp", self.amp, AMP_CHOICES)
        check_int("epochs", self.epochs, 1, 10_000, optional=True)
        check_int("batch_size", self.batch_size, 1, 4096, optional=True)
        check_number("time_budget_s", self.time_budget_s, 0.0, 7 * 24 * 3600.0, low_open=True, optional=True)
        check_number("warmup", self.warmup, 0.0, 0.9, optional=True)
        check_number("label_smoothing", self.label_smoothing, 0.0, 0.5, optional=True)
        check_int("bn_recalibration", self.bn_recalibration, 0, 64, optional=True)
        check_number("lr", self.lr, 0.0, 10.0, low_open=True, optional=True)
        check_number("weight_decay", self.weight_decay, 0.0, 1.0, optional=True)
        check_number("backbone_lr_factor", self.backbone_lr_factor, 0.0, 1.0)
        check_number("val_fraction", self.val_fraction, 0.0, 1.0, low_open=True, high_open=True)
        check_int("seed", self.seed, 0, 2**63 - 1)
        check_int("early_stopping_patience", self.early_stopping_patience, 1, 10_000, optional=True)
        check_int("num_workers", self.num_workers, 0, 64, optional=True)
        if not (self.device in ("auto", "cpu", "cuda") or str(self.device).startswith("cuda:")):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if not isinstance(self.model, (str, DenseNetConfig)) or not self.model:
            raise ValueError("model must be a preset name, run:<id>, a checkpoint folder or a DenseNetConfig")
        if self.mode == "scratch" and self.weights not in (None, W.DEFAULT, "random"):
            raise ValueError(f"scratch mode starts from random weights, not {self.weights!r}; use finetune or linear")
        preset = PRESETS.get(self.model) if isinstance(self.model, str) else None
        arch = preset.config if preset else (self.model if isinstance(self.model, DenseNetConfig) else None)
        if self.weights == "imagenet" and arch is not None:
            pretrained.imagenet_preset_for(self.model)  # a ValueError when there are none
        if self.image_size is not None:
            low = min_image_size(arch) if arch else 1
            check_int("image_size", self.image_size, low, 1024)

    @property
    def model_name(self) -> str:
        return self.model if isinstance(self.model, str) else "custom"

    def resolved(self) -> TrainConfig:
        """This config with every ``None`` default filled in from its recipe for its mode (and its device)."""
        defaults = recipe_defaults(self.recipe, self.mode)
        if self.time_budget_s is not None:
            defaults["epochs"] = EPOCHS_UNDER_BUDGET
        changes: dict[str, Any] = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        if self.batch_size is None:
            changes["batch_size"] = default_batch_size(self.device)
        if self.weights in (None, W.DEFAULT):
            changes["weights"] = "random" if self.mode == "scratch" else W.default_weights(self.model)
        return TrainConfig(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **changes})

    def to_dict(self) -> dict[str, Any]:
        """Every field by name, JSON-ready (a model given as a ``DenseNetConfig`` becomes its dict)."""
        d = asdict(self)
        d["model"] = self.model if isinstance(self.model, str) else self.model.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """The config ``to_dict`` gave (a checkpoint's ``train_config``, a run's state, a torchrun child's file),
        checked again. Fields this version does not know are refused by name."""
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown training config fields: {', '.join(sorted(unknown))}")
        model = d.get("model", cls.model)
        return cls(**{**d, "model": DenseNetConfig.from_dict(model) if isinstance(model, dict) else model})


def example_config(**changes: Any) -> TrainConfig:
    """The quick setting for the built-in example dataset: a small DenseNet from scratch, >90% in under a minute.

    ``densenet_fashion`` (16 plain layers, grayscale: the shapes differ in form, not colour) at 48 px (the images
    are 64 px) trains an epoch of the 640 training images in about 4.5 s on two CPU cores; AdamW with a 10% warm-up
    and cosine passed 90% at epoch 11 of 15 (50 s; best 0.938). At 64 px: the same at epoch 12 but 80 s; one-cycle
    instead of cosine: epoch 12, 60 s at 48 px; 32 px: 0.90-0.91 only at the end; 10 epochs: never 90%.
    """
    base = {"model": "densenet_fashion", "weights": "random", "mode": "scratch", "image_size": 48}
    base |= {"epochs": 15, "batch_size": 32}
    # Crops and flips (the shapes and stripes keep their class in a mirror), no label smoothing: as measured.
    recipe = {"lr": 3e-3, "optimizer": "adamw", "schedule": "cosine", "augment": "flip", "label_smoothing": 0.0}
    return TrainConfig(**{**base, **recipe, **changes})
