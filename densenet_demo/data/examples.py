"""The built-in example dataset: generated shapes and stripes, made once per machine and shared read-only."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["EXAMPLE_CLASSES", "make_example_dataset", "example_dataset_folder", "example_images"]

EXAMPLE_CLASSES = ("circle", "square", "triangle", "stripes")
EXAMPLE_VERSION = 2  # raise when make_example_dataset writes other images for the same arguments


def make_example_dataset(
    target_dir: str | os.PathLike, *, n_per_class: int = 200, image_size: int = 64, seed: int = 0
) -> Path:
    """Write a small, deterministic dataset of ``EXAMPLE_CLASSES`` to ``target_dir/<class>/*.png``.

    Shapes in random colours, sizes, positions and rotations on noisy backgrounds of random colour;
    stripes of random angle, width and colours. Same arguments, same bytes.
    """
    if n_per_class < 1 or image_size < 16:
        raise ValueError("make_example_dataset needs n_per_class >= 1 and image_size >= 16")
    target = Path(target_dir)
    rng = np.random.default_rng(seed)
    for name in EXAMPLE_CLASSES:
        folder = target / name
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        for i in range(n_per_class):
            _draw_example(name, image_size, rng).save(folder / f"{name}_{i:03d}.png", optimize=False)
    return target


def example_dataset_folder(name: str = "densenet_demo_example_dataset", **kwargs: Any) -> Path:
    """The example dataset made by ``make_example_dataset(**kwargs)``, generated once per machine, shared read-only.

    It lives in the temp dir under a name that carries the generator's version and arguments, so a copy left by
    an older version is never taken for this one's; a folder of that name that is not this user's own is not
    trusted (a private copy is made instead).
    """
    key = hashlib.sha256(json.dumps([EXAMPLE_VERSION, sorted(kwargs.items())]).encode()).hexdigest()[:12]
    folder = Path(tempfile.gettempdir()) / f"{name}_{key}"
    known = _example_folders.get(folder)
    if known is None or not known.is_dir():
        _example_folders[folder] = known = folder if _owned(folder) else _generate_example(folder, kwargs)
    return known


def example_images() -> list[Path]:
    """One generated picture per example class, at a size a preview shows well."""
    folder = example_dataset_folder("densenet_demo_examples", n_per_class=1, image_size=160, seed=7)
    return sorted(folder.glob("*/*.png"))


def _generate_example(folder: Path, kwargs: dict[str, Any]) -> Path:
    # Made aside and renamed into place, so two processes starting together never see half of it.
    scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}_", dir=folder.parent))
    make_example_dataset(scratch, **kwargs)
    try:
        scratch.rename(folder)
        return folder
    except OSError:  # another process got there first (its copy is the same), or someone else holds the name
        if not _owned(folder):
            return scratch
        shutil.rmtree(scratch, ignore_errors=True)
        return folder


def _owned(folder: Path) -> bool:
    return folder.is_dir() and not folder.is_symlink() and folder.stat().st_uid == os.getuid()


# Example folders this process has made or checked: read-only data, the same for every caller.
_example_folders: dict[Path, Path] = {}


def _draw_example(name: str, size: int, rng: np.random.Generator) -> Image.Image:
    background, foreground = _contrasting_colours(rng)
    if name == "stripes":
        return _stripes(size, background, foreground, rng)
    noise = rng.normal(0.0, 12.0, (size, size, 1))
    pixels = np.clip(np.array(background, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    radius = rng.uniform(0.18, 0.38) * size
    cx, cy = (rng.uniform(radius + 1, size - radius - 1) for _ in range(2))
    draw = ImageDraw.Draw(image)
    if name == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=foreground)
    else:
        sides = 4 if name == "square" else 3
        angle = rng.uniform(0, 2 * math.pi)
        corners = [
            (
                cx + radius * math.cos(angle + 2 * math.pi * k / sides),
                cy + radius * math.sin(angle + 2 * math.pi * k / sides),
            )
            for k in range(sides)
        ]
        draw.polygon(corners, fill=foreground)
    return image


def _stripes(
    size: int, background: tuple[int, ...], foreground: tuple[int, ...], rng: np.random.Generator
) -> Image.Image:
    period = rng.uniform(0.15, 0.35) * size
    angle = rng.uniform(0, math.pi)
    y, x = np.mgrid[0:size, 0:size]
    phase = (x * math.cos(angle) + y * math.sin(angle)) / period + rng.uniform(0, 1)
    mask = (phase % 1.0) < 0.5
    pixels = np.where(mask[..., None], np.array(foreground), np.array(background))
    pixels = np.clip(pixels + rng.normal(0.0, 12.0, (size, size, 1)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def _contrasting_colours(rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Two random colours whose brightness differs enough for the shape to be seen."""
    while True:
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        if abs(_luma(a) - _luma(b)) > 60:
            return tuple(int(v) for v in a), tuple(int(v) for v in b)


def _luma(rgb: np.ndarray) -> float:
    return float(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])
