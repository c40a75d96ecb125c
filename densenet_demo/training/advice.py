"""Advice before a run: settings suggested by the data, and how long an epoch will take on this machine.

``suggest_settings(files)`` looks at a sample of the images (their size and colour) and proposes an image size,
a model, a mode and a time budget; ``estimate_time(config, n_train, n_val)`` times two training steps of the
chosen model on a small random batch and scales them to an epoch, with a warning when that is impractical.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from PIL import Image

from ..config import PRESETS, min_image_size
from ..data.datasets import LabeledFiles
from .build import build_model, pick_device
from .config import TrainConfig

__all__ = ["Estimate", "Suggestion", "estimate_time", "suggest_settings"]

_SIZES = (32, 64, 96, 128, 160, 224)
_SAMPLE = 24  # images whose headers are read to judge size and colour
_PRACTICAL_EPOCH_S = 120.0  # beyond this per epoch, warn: a newcomer waits minutes for a first result
_TIMED_BATCH = 16  # images per timed step: enough for per-image costs to settle, few enough to answer in seconds
_TIMED_SIZE = 64  # larger images are timed at this side and scaled by their pixels (the MACs scale alike)


@dataclass(frozen=True)
class Suggestion:
    """Settings that suit a dataset, with the reason in one line."""

    image_size: int
    grayscale: bool
    model: str
    mode: str
    time_budget: str
    reason: str


@dataclass(frozen=True)
class Estimate:
    """Time of one epoch and of the whole run, measured on this machine."""

    epoch_s: float
    total_s: float
    images_per_s: float
    warning: str | None

    def text(self) -> str:
        line = f"About {_duration(self.epoch_s)} per epoch, {_duration(self.total_s)} in all "
        line += f"({self.images_per_s:.3g} img/s measured on this machine)."
        return line + (f" ⚠ {self.warning}" if self.warning else "")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def suggest_settings(files: LabeledFiles, *, gpu: bool | None = None) -> Suggestion:
    """An image size from the images' median side (rounded down to a usual size), a model for their colour and
    the device, and a time budget; small or grayscale images train from scratch, photos start from ImageNet."""
    gpu = torch.cuda.is_available() if gpu is None else gpu
    items = list(files.train)[:: max(1, len(files.train) // _SAMPLE)][:_SAMPLE]
    sides, gray = [], 0
    for path, _ in items:
        with Image.open(path) as image:  # the header only: no pixels decoded
            sides.append(min(image.size))
            gray += image.mode in ("1", "L", "LA", "I", "I;16", "F")
    median = statistics.median(sides) if sides else 224
    size = max([s for s in _SIZES if s <= median] or [_SIZES[0]])
    grayscale = bool(items) and gray == len(items)
    budget = "2m" if gpu else "60s"
    if median >= 128:  # photos: ImageNet features transfer; a linear head trains in seconds
        size = 224 if gpu else min(size, 160)
        return Suggestion(
            size, grayscale, "densenet121", "linear" if not gpu else "finetune", budget,
            f"images of about {median:.0f} px: start from ImageNet weights at {size} px",
        )  # fmt: skip
    model = "densenet_fashion" if grayscale and not gpu else "densenet121"
    size = max(size, min_image_size(PRESETS[model].config))
    return Suggestion(
        size, grayscale, model, "scratch", budget,
        f"small {'grayscale ' if grayscale else ''}images (about {median:.0f} px): train {model} from scratch "
        f"at {size} px with the quick recipe",
    )  # fmt: skip


def estimate_time(config: TrainConfig, n_train: int, n_val: int, class_names: list[str]) -> Estimate:
    """Time two training steps (after one untimed) of ``config``'s model on a random batch, scaled to the data.

    Images larger than 64 px are timed at 64 px and scaled by their pixel count, so that the answer comes in
    seconds even for DenseNet-121 at 224 px on a CPU. Linear mode runs the frozen backbone once per image
    (forward only) and then trains only the head.
    """
    cfg = config.resolved()
    device = pick_device(cfg.device)
    # Random weights time the same as pretrained ones and need no download.
    timing = TrainConfig(**{**cfg.__dict__, "weights": "random", "mode": "scratch"})
    model, preprocessing, _ = build_model(timing, class_names)
    model.to(device).train()
    batch = min(cfg.batch_size, _TIMED_BATCH)
    size = preprocessing.image_size
    timed = min(size, max(_TIMED_SIZE, min_image_size(model.cfg)))
    x = torch.randn(batch, preprocessing.in_channels, timed, timed, device=device)
    y = torch.zeros(batch, dtype=torch.long, device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    linear = cfg.mode == "linear"
    seconds = []
    for _ in range(3):
        began = time.perf_counter()
        if linear:
            with torch.inference_mode():
                model(x)
        else:
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - began)
    per_image = statistics.mean(seconds[1:]) / batch * (size / timed) ** 2
    if linear:  # features once for every image; the head's epochs cost next to nothing
        epoch_s = total_s = per_image * (n_train + n_val)
    else:
        epoch_s = per_image * (n_train + n_val / 3)  # validation: a forward pass, about a third of a step
        total_s = cfg.time_budget_s or epoch_s * cfg.epochs
    warning = None
    if epoch_s > _PRACTICAL_EPOCH_S:
        warning = (
            f"{cfg.model_name} at {size} px on {device.type.upper()} takes about "
            f"{_duration(epoch_s)} per epoch: try a smaller image size, linear mode or a smaller model"
        )
    return Estimate(epoch_s, total_s, 1.0 / per_image, warning)
