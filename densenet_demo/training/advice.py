"""Advice before a run: the settings that suit a dataset on this machine, and how long a run will take.

``suggest_settings(files)`` looks at a sample of the images (their size, and whether their pixels have colour:
a scan saved as RGB is still grey) and chooses by measurement (``timing.measure``: real steps of each candidate
model on this device at the data's size):

- photos (about 128 px and more) start from ImageNet features when the weights are here or can be downloaded:
  a linear head on cached DenseNet-121 features on a CPU, fine-tuning on a GPU;
- otherwise a run from scratch with the quick recipe. Candidates in order: on a CPU the smallest model that can
  see the data (``densenet_fashion``, 16 plain layers, for grey images; DenseNet-121, whose stem shrinks small
  images 4x at once, for colour), on a GPU DenseNet-121. The first whose first result (half an epoch, and its
  validation) comes within ``FIRST_RESULT_S`` at the data's image size is taken; otherwise the image size comes
  down, and at last the fastest candidate measured is taken.
- the time budget lets the run train about ``BUDGET_EPOCHS`` epochs at the measured pace (within 30 s and 10
  min): enough to beat a plain loop's best of two epochs on the real scans and photos of the bench
  (``bench/quick_finetune.py``), short enough to wait for in a browser.

``estimate_time(config, n_train, n_val, class_names, files)`` times the run's own settings (threads,
channels-last, optimizer, batch, precision, decoding of the data's own files) and gives an epoch's time as a
range; the run's ETA then corrects it from its first steps.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..config import PRESETS, min_image_size
from ..data.datasets import LabeledFiles
from ..hosting import gpu
from ..weights import pretrained
from . import timing
from .build import pick_device
from .config import TrainConfig, default_batch_size
from .settings import parse_duration

__all__ = ["DataTraits", "Estimate", "Suggestion", "duration", "estimate_time", "look_at", "suggest_settings"]

_SIZES = (32, 48, 64, 96, 128, 160, 224)
_SAMPLE = 24  # images looked at to judge size and colour
_COLOUR_SPREAD = 8.0  # mean spread between an image's R, G and B (0-255) above which it has colour
_COLOUR_SHARE = 0.2  # a dataset is in colour when at least this share of the sample is
_PHOTO_SIDE = 128  # from this median side on, ImageNet features are worth their cost
FIRST_RESULT_S = 20.0  # a first validation within this long from the start, or a smaller model / image size
BUDGET_EPOCHS = 6
_BUDGET_RANGE_S = (30.0, 600.0)
_STARTUP_S = 2.0  # building the model and the loaders, the first step's allocations (measured: 1-3 s on 2 cores)
# From scratch on a CPU, more pixels than this slow the first results more than they help them: validation
# accuracy at half an epoch on the texture photos (64 px) was 0.86-0.89 at 48 px, 0.88 at 32 px, 0.84 at 64 px;
# the example dataset (64 px) passed 90% at epoch 11 at 48 px, 12 at 64 px, never at 32 px (recipe_sweep.py).
_CPU_SCRATCH_MAX = 48
_PRACTICAL_EPOCH_S = 120.0  # beyond this per epoch, say how to make it faster
_FEATURES_S = 120.0  # linear mode: features of every photo within this long, or a smaller input


@dataclass(frozen=True)
class DataTraits:
    """What a sample of a dataset's images says about it."""

    median_side: float
    grayscale: bool  # no image of the sample has colour in its pixels (whatever mode it was saved in)
    n_train: int
    n_val: int
    n_classes: int


@dataclass(frozen=True)
class Suggestion:
    """Settings that suit a dataset here, by name (``settings()``), with the reason in one line."""

    model: str
    mode: str
    image_size: int
    batch_size: int
    recipe: str
    time_budget: str  # "" for linear mode: the features are computed once, then the head trains in seconds
    grayscale: bool
    reason: str
    epoch_s: float  # the measured estimate of an epoch at these settings

    def settings(self) -> dict[str, Any]:
        """The settings as ``settings.config_from_settings`` and the page take them."""
        return {
            "model": self.model,
            "weights": "random" if self.mode == "scratch" else "default",
            "mode": self.mode,
            "image_size": self.image_size,
            "batch_size": self.batch_size,
            "recipe": self.recipe,
            "time_budget": self.time_budget,
            "augment": "none",  # flips turn a 2 into a mirrored 2 and a b into a d: opt in, never by default
        }


@dataclass(frozen=True)
class Estimate:
    """An epoch's time and the whole run's, measured on this machine, as a range (fastest to slowest step)."""

    epoch_s: float
    epoch_low_s: float
    epoch_high_s: float
    total_s: float
    images_per_s: float
    warning: str | None

    def text(self) -> str:
        if duration(self.epoch_low_s) == duration(self.epoch_high_s):
            epoch = f"about {duration(self.epoch_s)}"
        else:
            epoch = f"{duration(self.epoch_low_s)}–{duration(self.epoch_high_s)}"
        line = f"An epoch: {epoch}; the run: about {duration(self.total_s)} "
        line += f"({self.images_per_s:.3g} training images/s measured on this machine)."
        return line + (f" ⚠ {self.warning}" if self.warning else "")


def duration(seconds: float) -> str:
    """Seconds for people: ``42 s``, ``7 min``, ``1.5 h``."""
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _colour_spread(path: str) -> tuple[int, float]:
    """(shorter side, mean spread between the R, G and B values of a small copy) of one image file."""
    with Image.open(path) as image:
        side = min(image.size)
        image.draft("RGB", (64, 64))  # JPEGs decode at a reduced size: no full decode for a thumbnail
        small = np.asarray(image.convert("RGB").resize((32, 32)), dtype=np.int16)
    return side, float((small.max(axis=2) - small.min(axis=2)).mean())


def look_at(files: LabeledFiles, val_fraction: float = 0.2, seed: int = 0) -> DataTraits:
    """Size and colour from a sample of the training images; counts from the split a run would make."""
    items = list(files.train)[:: max(1, len(files.train) // _SAMPLE)][:_SAMPLE]
    sides, coloured = [], 0
    for path, _ in items:
        try:
            side, spread = _colour_spread(path)
        except (OSError, ValueError, Image.DecompressionBombError):  # the dataset check reports these files
            continue
        sides.append(side)
        coloured += spread > _COLOUR_SPREAD
    n_train, n_val = (len(part) for part in files.split(val_fraction, seed))
    return DataTraits(
        median_side=statistics.median(sides) if sides else 224,
        grayscale=bool(sides) and coloured < _COLOUR_SHARE * len(sides),
        n_train=n_train,
        n_val=n_val,
        n_classes=len(files.class_names),
    )


def _usual_size(median_side: float, model: str, largest: int = _SIZES[-1]) -> int:
    """The largest usual size at most the images' median side (and ``largest``), and at least the model's smallest."""
    size = max([s for s in _SIZES if s <= min(median_side, largest)] or [_SIZES[0]])
    return max(size, min_image_size(PRESETS[model].config))


def _first_result_s(t: timing.StepTiming, traits: DataTraits) -> float:
    """Start to the first validation: half an epoch of steps, a validation, and the start-up."""
    return _STARTUP_S + traits.n_train / 2 / t.images_per_s + traits.n_val * (t.eval_s + t.decode_s)


def _epoch_s(
    t: timing.StepTiming, n_train: int, n_val: int, linear: bool, recalibration: int = 0
) -> tuple[float, float, float]:
    """(median, low, high) seconds of an epoch: its steps, the loading of every image, its validation (the
    BatchNorm statistics recomputed from ``recalibration`` batches first) and a checkpoint written."""
    data = (n_train + n_val) * t.decode_s
    if linear:  # the backbone once per image (features), then the head's epochs: next to nothing
        once = (n_train + n_val) * t.eval_s + data
        return once, once, once
    validation = (n_val + recalibration * t.batch_size) * t.eval_s + t.save_s
    return tuple(n_train * s + validation + data for s in (t.train_s, t.train_low_s, t.train_high_s))


def _budget(epoch_s: float) -> str:
    """``BUDGET_EPOCHS`` epochs and the start-up, rounded up to a whole 10 s (to a minute above 2 min)."""
    seconds = min(max(_STARTUP_S + BUDGET_EPOCHS * epoch_s, _BUDGET_RANGE_S[0]), _BUDGET_RANGE_S[1])
    if seconds > 120:
        return f"{math.ceil(seconds / 60)}m"
    return f"{math.ceil(seconds / 10) * 10}s"


def _candidates(traits: DataTraits, on_gpu: bool) -> list[str]:
    if on_gpu:
        return ["densenet121"]
    return ["densenet_fashion", "densenet121"] if traits.grayscale else ["densenet121"]


def _measured(model: str, mode: str, size: int, batch: int, files: LabeledFiles, n: int) -> timing.StepTiming:
    config = TrainConfig(model=model, weights="random", mode=mode, image_size=size, batch_size=batch)
    return timing.measure(config, n, files)


def suggest_settings(files: LabeledFiles, *, device: str = "auto") -> Suggestion:
    """The settings for ``files`` on this machine (see the module's docstring), with their reason."""
    traits = look_at(files)
    deferred = gpu.deferred()  # ZeroGPU: training runs on a GPU, but none can be timed from here
    on_gpu = deferred or pick_device(device).type == "cuda"
    batch = default_batch_size(device)
    kind = "grey" if traits.grayscale else "colour"
    if traits.median_side >= _PHOTO_SIDE and pretrained.imagenet_can_be_had("densenet121"):
        mode, size = ("finetune", 224) if on_gpu else ("linear", 224)
        if not deferred:
            t = _measured("densenet121", mode, size, batch, files, traits.n_classes)
            epoch = _epoch_s(t, traits.n_train, traits.n_val, mode == "linear")[0]
            if mode == "linear" and epoch > _FEATURES_S:  # features of many photos: a smaller input
                size = 160
                t = _measured("densenet121", mode, size, batch, files, traits.n_classes)
                epoch = _epoch_s(t, traits.n_train, traits.n_val, True)[0]
        else:
            epoch = 0.0
        budget = "" if mode == "linear" else _budget(epoch) if epoch else "2m"
        how = "a linear head on its ImageNet features" if mode == "linear" else "fine-tuned from ImageNet"
        reason = f"{kind} photos of about {traits.median_side:.0f} px: DenseNet-121 {how} at {size} px"
        reason += f" (features of all images: about {duration(epoch)})" if mode == "linear" and epoch else ""
        return Suggestion("densenet121", mode, size, batch, "quick", budget, traits.grayscale, reason, epoch)
    if deferred:
        size = _usual_size(traits.median_side, "densenet121")
        why = f"small {kind} images (about {traits.median_side:.0f} px): DenseNet-121 from scratch on the GPU"
        return Suggestion("densenet121", "scratch", size, batch, "quick", "2m", traits.grayscale, why, 0.0)
    return _scratch(files, traits, on_gpu, batch, kind)


def _scratch(files: LabeledFiles, traits: DataTraits, on_gpu: bool, batch: int, kind: str) -> Suggestion:
    """The first candidate whose first result comes within ``FIRST_RESULT_S``, at the largest size that does."""
    tried: list[tuple[float, str, int, timing.StepTiming]] = []
    for model in _candidates(traits, on_gpu):
        largest = _usual_size(traits.median_side, model, _SIZES[-1] if on_gpu else _CPU_SCRATCH_MAX)
        for size in [s for s in _SIZES if min_image_size(PRESETS[model].config) <= s <= largest][::-1]:
            t = _measured(model, "scratch", size, batch, files, traits.n_classes)
            first = _first_result_s(t, traits)
            tried.append((first, model, size, t))
            if first <= FIRST_RESULT_S:
                return _scratch_suggestion(model, size, t, traits, batch, kind, first)
            if size <= 32:
                break
    first, model, size, t = min(tried)
    return _scratch_suggestion(model, size, t, traits, batch, kind, first)


def _scratch_suggestion(
    model: str, size: int, t: timing.StepTiming, traits: DataTraits, batch: int, kind: str, first: float
) -> Suggestion:
    epoch = _epoch_s(t, traits.n_train, traits.n_val, False, recalibration=3)[0]  # the quick recipe from scratch
    budget = _budget(epoch)
    note = "the smallest model that sees them" if model == "densenet_fashion" else "its stem shrinks them 4x"
    if not traits.grayscale and model == "densenet121":
        note = "the fastest colour model here"
    # The budget is at least 30 s: a quick epoch fits many more than BUDGET_EPOCHS into it, and the text says so.
    epochs = max(1, round((parse_duration(budget) - _STARTUP_S) / epoch)) if epoch > 0 else BUDGET_EPOCHS
    reason = (
        f"small {kind} images (about {traits.median_side:.0f} px): {model} from scratch at {size} px, {note}: "
        f"{t.images_per_s:.0f} images/s measured here, a first result in about {duration(first)}, "
        f"{budget} for about {epochs} epochs"
    )
    return Suggestion(model, "scratch", size, batch, "quick", budget, traits.grayscale, reason, epoch)


def estimate_time(
    config: TrainConfig, n_train: int, n_val: int, class_names: list[str], files: LabeledFiles | None = None
) -> Estimate:
    """An epoch and the run of ``config`` on this machine, measured afresh with the run's own settings."""
    cfg = config.resolved()
    t = timing.measure(cfg, len(class_names), files, fresh=True)
    linear = cfg.mode == "linear"
    epoch, low, high = _epoch_s(t, n_train, n_val, linear, cfg.bn_recalibration or 0)
    if linear:
        total = epoch
    elif cfg.time_budget_s is not None:
        total = cfg.time_budget_s
    else:
        total = _STARTUP_S + epoch * cfg.epochs + n_val * t.eval_s  # epoch 1 also validates at its half
    warning = None
    if epoch > _PRACTICAL_EPOCH_S:
        warning = (
            f"{cfg.model_name} at {t.image_size} px on this {pick_device(cfg.device).type.upper()} takes about "
            f"{duration(epoch)} per epoch: the suggestion (Check dataset) picks a faster size and model"
        )
    return Estimate(epoch, low, high, total, 1.0 / (t.train_s + t.decode_s), warning)
