"""After Check dataset: a few thumbnails of every class with its count, so that a wrong folder shows before a run is
spent on it (the report beside it lists the skipped files)."""

from __future__ import annotations

import random
from typing import Any

import gradio as gr
from PIL import Image

from ..data.datasets import LabeledFiles
from .review_view import thumbnail

__all__ = ["PER_CLASS", "build_class_gallery", "class_samples"]

PER_CLASS = 4  # thumbnails of each class
MAX_CLASSES = 40  # a dataset with more classes shows the first ones (the report counts them all)


def build_class_gallery() -> gr.Gallery:
    return gr.Gallery(
        label=f"What each class holds ({PER_CLASS} images each, with the class's count)",
        columns=PER_CLASS * 2,
        height="auto",
        elem_id="train-classes",
    )


def class_samples(state: dict[str, Any] | None) -> list[tuple[Image.Image, str]]:
    """``PER_CLASS`` images of each class of the checked dataset (a seeded draw, so a class's variety shows)."""
    dataset = (state or {}).get("dataset")
    if dataset is None:
        return []
    files: LabeledFiles = dataset[0]
    items = [*files.train, *(files.val or ())]
    by_class: dict[int, list] = {}
    for path, label in items:
        by_class.setdefault(label, []).append(path)
    shown = []
    for label, name in enumerate(files.class_names[:MAX_CLASSES]):
        paths = sorted(by_class.get(label, []))
        count = len(paths)
        for path in random.Random(label).sample(paths, min(PER_CLASS, count)):
            shown.append((thumbnail(path), f"{name} · {count} image{'s' * (count != 1)}"))
    return shown
