"""Real image datasets that install offline with PyPI wheels, written as folders for ``data.load_image_folder``.

- ``digits``: scikit-learn's ``load_digits``, 1,797 scanned handwritten digits (8x8, 17 grey levels, 10 classes),
  upscaled to 32 px, one class folder each; the Trainer's seeded stratified split decides train/val.
- ``digits_rgb``: the same scans with their grey pixels saved as RGB, as scanner and phone apps save them.
- ``textures``: crops of five texture photos that scikit-image ships in its wheel (brick, grass, gravel, the
  moon's surface, a cell culture), grayscale, 64 px. Training crops come from the top three quarters of each
  photo and validation crops from the bottom quarter (``train/`` + ``val/`` folders), so no validation pixel
  was seen in training.
- ``example``: the project's generated example dataset (``examples.make_example_dataset``).

``swap_labels`` mislabels a share of a class-folder dataset on purpose (the review's precision: review_precision.py).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image

from densenet_demo.data import examples

DATASETS = ("digits", "digits_rgb", "textures", "example")
TEXTURES = ("brick", "grass", "gravel", "moon", "cell")  # loaded from files inside the wheel: no download


def write_digits(target: Path, image_size: int = 32, mode: str = "L") -> Path:
    """The 1,797 digit scans as ``target/<digit>/<i>.png`` (``image_size`` px; grey pixels saved in ``mode``:
    "L", or "RGB" as a phone or a scanner app saves a grey page)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        folder = target / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(np.round(pixels * 255 / 16).astype(np.uint8), "L")
        image.resize((image_size, image_size), Image.Resampling.BICUBIC).convert(mode).save(folder / f"{i:04d}.png")
    return target


def swap_labels(folder: Path, fraction: float, seed: int = 0) -> dict[str, str]:
    """Move a seeded ``fraction`` of the images of ``folder/<class>/`` into another class's folder, drawn uniformly
    among the others. Returns {new path relative to ``folder``: the true class} for each image moved."""
    files = sorted(p for p in folder.glob("*/*") if p.is_file())
    classes = sorted({p.parent.name for p in files})
    rng = random.Random(seed)
    moved = {}
    for file in rng.sample(files, round(fraction * len(files))):
        other = rng.choice([c for c in classes if c != file.parent.name])
        target = folder / other / file.name
        if target.exists():  # the same name in the other class: keep both
            target = target.with_stem(f"{file.parent.name}-{file.stem}")
        file.rename(target)
        moved[target.relative_to(folder).as_posix()] = file.parent.name
    return moved


def write_textures(
    target: Path, image_size: int = 64, n_train: int = 80, n_val: int = 20, seed: int = 0
) -> Path:  # fmt: skip
    """Random crops (side 64-128 px of the photo, resized to ``image_size``) of each texture photo.

    ``target/train/<texture>/*.png`` from rows above 3/4 of the photo's height, ``target/val/<texture>/*.png``
    from rows below it.
    """
    import skimage.data

    rng = np.random.default_rng(seed)
    for name in TEXTURES:
        photo = np.asarray(getattr(skimage.data, name)(), dtype=np.uint8)
        height, width = photo.shape[:2]
        border = height * 3 // 4
        for split, count, (top, bottom) in (("train", n_train, (0, border)), ("val", n_val, (border, height))):
            folder = target / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                side = int(rng.integers(64, min(128, bottom - top) + 1))
                y = int(rng.integers(top, bottom - side + 1))
                x = int(rng.integers(0, width - side + 1))
                crop = Image.fromarray(photo[y : y + side, x : x + side], "L")
                crop.resize((image_size, image_size), Image.Resampling.BILINEAR).save(folder / f"{i:03d}.png")
    return target


def write_dataset(name: str, target: Path) -> tuple[Path, int]:
    """Write dataset ``name`` under ``target``; returns (its folder, the image size to train at)."""
    if name == "digits":
        return write_digits(target / "digits", 32), 32
    if name == "digits_rgb":
        return write_digits(target / "digits_rgb", 32, mode="RGB"), 32
    if name == "textures":
        return write_textures(target / "textures", 64), 64
    if name == "example":
        return examples.make_example_dataset(target / "example", n_per_class=60, image_size=64), 64
    raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
