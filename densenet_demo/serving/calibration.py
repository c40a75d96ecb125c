"""The images int8 is calibrated on, and the held-out images its answers are checked on.

A fine-tuned run: its own training images calibrate (up to ``MAX_CALIBRATION``, evenly over the classes), and its
validation images (up to ``MAX_HELD_OUT``) are held out: the same split as training, from the run's recorded
``val_fraction`` and ``seed``. The images are wherever they still are: the dataset a caller hands over (the page's
session still holds the dataset it trained on), the built-in example dataset (regenerated), or the folder or zip the
run records, if it is still there and unchanged. A run whose images are gone cannot be calibrated for itself
(``CalibrationUnavailable`` says so); it keeps fp32.

Everything else (the ImageNet presets, weights files, uploaded checkpoints) calibrates on a set chosen for what
people bring to this app, as no ImageNet images can be shipped or downloaded here: the example photos in
``examples/`` (real photos of ImageNet classes) as deterministic random crops, flips and exposure changes, plus the
generated shapes and stripes the Predict tab offers. Calibration fixes each activation's range, so what matters is
that its images span natural-image statistics; the held-out images are other photos and other generated images
(never one used for calibration): two photos calibrate, the other two are held out.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageEnhance, ImageOps

from ..data import datasets, examples
from ..data.images import ImageError
from ..weights import checkpoints

__all__ = [
    "EXAMPLE_PHOTOS",
    "CalibrationSet",
    "CalibrationUnavailable",
    "for_checkpoint",
    "generic",
]

logger = logging.getLogger(__name__)

EXAMPLE_PHOTOS = Path(__file__).resolve().parents[2] / "examples"
CALIBRATION_PHOTOS = ("astronaut.jpg", "coffee.jpg")  # the other example photos are held out
VIEWS_PER_PHOTO = 40
GENERATED = 32  # generated images per set (8 per example class)
MAX_CALIBRATION = 64  # a run's training images used to calibrate (more change the ranges little, cost time)
MAX_HELD_OUT = 400  # a run's validation images checked (the whole set, for most runs made here)
EXAMPLE_SOURCE = "the built-in example dataset"

Prepare = Callable[[object], torch.Tensor]  # an image (path or PIL image) -> the model's (C, H, W) input


class CalibrationUnavailable(Exception):
    """No images to calibrate on; the message says why, for people."""


@dataclass(frozen=True)
class CalibrationSet:
    calibration: list[torch.Tensor]
    held_out: list[torch.Tensor]
    description: str  # for people and the int8 record: where the images came from


def generic(prepare: Prepare) -> CalibrationSet:
    """The presets' set: example photos (crops, flips, exposure) and generated images; other ones held out."""
    photos = sorted(EXAMPLE_PHOTOS.glob("*.jpg"))
    if not photos:
        raise CalibrationUnavailable(f"the example photos are missing from {EXAMPLE_PHOTOS.name}/")
    calibrating = [p for p in photos if p.name in CALIBRATION_PHOTOS] or photos[:1]
    holding = [p for p in photos if p not in calibrating]
    calibration = _views(calibrating, prepare, seed=1) + _generated(prepare, seed=11)
    held_out = _views(holding, prepare, seed=2) + _generated(prepare, seed=12)
    description = (
        f"{len(calibration)} images: views of {', '.join(p.stem for p in calibrating)} (example photos) and "
        f"generated shapes; held out: {len(held_out)} views of {', '.join(p.stem for p in holding) or 'no photo'} "
        "and other generated shapes"
    )
    return CalibrationSet(calibration, held_out, description)


def for_checkpoint(folder: Path, prepare: Prepare, dataset: datasets.LabeledFiles | None = None) -> CalibrationSet:
    """A run's own set: training images calibrate, validation images are held out (the training split)."""
    info = checkpoints.read_checkpoint_info(folder)
    recorded = info.extra.get("dataset") or {}
    config = info.extra.get("train_config") or {}
    if not recorded or not config:
        raise CalibrationUnavailable("this checkpoint does not record the dataset it was trained on")
    files = dataset if dataset is not None and _same_data(dataset, info, recorded) else _recorded_files(info, recorded)
    train, val = files.split(float(config.get("val_fraction", 0.2)), int(config.get("seed", 0)))
    if not val:
        raise CalibrationUnavailable("the run has no validation images to check int8 against")
    calibration = _prepared(_spread(train, MAX_CALIBRATION), prepare)
    held_out = _prepared(_spread(val, MAX_HELD_OUT), prepare)
    description = f"{len(calibration)} of the run's training images; held out: {len(held_out)} validation images"
    return CalibrationSet(calibration, held_out, description)


def _recorded_files(info: checkpoints.CheckpointInfo, recorded: dict) -> datasets.LabeledFiles:
    source = str(recorded.get("source") or "")
    if source.startswith(EXAMPLE_SOURCE):
        files, _ = datasets.load_image_folder(examples.example_dataset_folder())
    elif source and Path(source).is_dir():
        files, _ = datasets.load_image_folder(source)
    else:
        where = Path(source).name or "an upload"
        raise CalibrationUnavailable(
            f"int8 calibrates on the run's own training images, and they are no longer here ({where}): load the "
            "same dataset again (Fine-tune tab: the dataset step), then choose int8"
        )
    if not _same_data(files, info, recorded):
        raise CalibrationUnavailable(f"the dataset at {Path(source).name} has changed since the run was trained")
    return files


def _same_data(files: datasets.LabeledFiles, info: checkpoints.CheckpointInfo, recorded: dict) -> bool:
    counts = Counter(label for _, label in (*files.train, *(files.val or ())))
    by_name = {name: counts.get(i, 0) for i, name in enumerate(files.class_names)}
    return tuple(files.class_names) == tuple(info.class_names) and by_name == dict(recorded.get("counts") or {})


def _spread(items: Sequence[tuple[Path, int]], n: int) -> list[tuple[Path, int]]:
    """At most ``n`` items, taken evenly through the list (which the split leaves grouped by class)."""
    if len(items) <= n:
        return list(items)
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)] if n > 1 else [items[0]]


def _prepared(items: Sequence[tuple[Path, int]], prepare: Prepare) -> list[torch.Tensor]:
    tensors = []
    for path, _ in items:
        try:
            tensors.append(prepare(path))
        except ImageError as e:  # training skipped it too
            logger.info("calibration: skipped %s", e)
    return tensors


def _views(photos: Sequence[Path], prepare: Prepare, seed: int) -> list[torch.Tensor]:
    """Deterministic random crops (15-100% of the photo), mirror images and exposure changes of each photo."""
    rng = random.Random(seed)
    views = []
    for path in photos:
        with Image.open(path) as opened:
            photo = ImageOps.exif_transpose(opened).convert("RGB")
        for _ in range(VIEWS_PER_PHOTO):
            area = rng.uniform(0.15, 1.0) * photo.width * photo.height
            aspect = rng.uniform(3 / 4, 4 / 3)
            w = min(photo.width, max(16, round((area * aspect) ** 0.5)))
            h = min(photo.height, max(16, round((area / aspect) ** 0.5)))
            left, top = rng.randint(0, photo.width - w), rng.randint(0, photo.height - h)
            view = photo.crop((left, top, left + w, top + h))
            if rng.random() < 0.5:
                view = ImageOps.mirror(view)
            view = ImageEnhance.Brightness(view).enhance(rng.uniform(0.7, 1.3))
            views.append(prepare(view))
    return views


def _generated(prepare: Prepare, seed: int) -> list[torch.Tensor]:
    per_class = GENERATED // len(examples.EXAMPLE_CLASSES)
    folder = examples.example_dataset_folder(
        "densenet_demo_calibration", n_per_class=per_class, image_size=160, seed=seed
    )
    return [prepare(path) for path in sorted(folder.glob("*/*.png"))]
