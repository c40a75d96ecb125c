"""The app's training run on every GPU: its checked images and settings handed to ``torchrun`` as ``train``.

The Fine-tune tab holds a checked dataset (``LabeledFiles``: a zip's extracted files, a folder upload, classes
built by hand, the example) and a ``TrainConfig``; a torchrun run is a command line. ``train_on_all_gpus()``:

- writes the images as a folder the ranks read: ``train/<class>/`` and ``val/<class>/``, split exactly as one
  process splits them (``files.split(val_fraction, seed)``), as hard links (copies where links cannot be made);
  the folder carries the dataset's name, so the checkpoint records the same source as a run in the app does;
- turns the config into ``train``'s flags (``train_settings.train_args``): the command line rebuilds the same
  ``TrainConfig``;
- streams the child's events (``distributed.launch_torchrun``). The child names its run and writes it where any
  run goes (``weights/runs/<run-id>``); its ``Started`` event carries the id.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..config import PRESETS
from ..data.datasets import DatasetReport, LabeledFiles
from ..weights import checkpoints
from ..weights import resolver as W
from .distributed import launch_torchrun
from .events import CancelToken, Event, Failed
from .settings import train_args
from .setup import TrainConfig

__all__ = ["link_dataset", "train_on_all_gpus"]

logger = logging.getLogger(__name__)


def link_dataset(files: LabeledFiles, folder: Path, *, val_fraction: float, seed: int) -> Path:
    """Write ``files`` as ``folder/train/<class>/`` and ``folder/val/<class>/``, split as one process splits them.

    Each image keeps its name behind a number (``000012_cat.png``: names may repeat across uploads). Class names
    are folder names already (every source leaves out hidden ones), so each class keeps its name and its place.
    """
    copied = 0
    for split, items in zip(("train", "val"), files.split(val_fraction, seed), strict=True):
        for i, (path, label) in enumerate(items):
            target = folder / split / files.class_names[label] / f"{i:06d}_{Path(path).name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, target)
            except OSError:  # another file system, or links refused: a copy reads the same
                shutil.copyfile(path, target)
                copied += 1
    if copied:
        logger.info("copied %d image(s) for the torchrun run (hard links were refused)", copied)
    return folder


def _folder_name(source: str) -> str:
    """The dataset's name as a folder name: the data argument the child records as the dataset's source."""
    name = Path(source.rstrip("/\\")).name
    return name if name not in ("", ".", "..") else "data"


def _absolute(value: str | None) -> str | None:
    """A model or weights path as the child, in another working folder, finds it. Preset names, run ids and the
    weights keywords stay as they are: they win over a path of the same name, here as in the child."""
    if not value or value in PRESETS or value.lower() in (W.DEFAULT, "imagenet", "random") or value.startswith("run:"):
        return value
    return str(Path(value).resolve()) if Path(value).exists() else value


def train_on_all_gpus(
    config: TrainConfig,
    files: LabeledFiles,
    report: DatasetReport,
    *,
    nproc: int,
    scratch: Path,
    cancel: CancelToken | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Event]:
    """Train ``config`` on ``files`` in ``nproc`` torchrun processes; yield the run's events as ``Trainer.run`` does.

    ``scratch``: a folder for the images' links (removed at the end). ``ValueError`` at once for a config that
    the command line cannot express or torchrun cannot run (a time budget); everything later (the child's own
    errors too) ends in a ``Failed`` event.
    """
    if config.time_budget_s is not None:  # the ranks' clocks would stop them at different steps (see Trainer)
        raise ValueError("a time budget is not supported on several GPUs yet: clear it and give a number of epochs")
    config = dataclasses.replace(config, model=_absolute(config.model), weights=_absolute(config.weights))
    args = train_args(config)
    name = _folder_name(report.source)
    # The child's weights folder is the app's, wherever its working folder is.
    child_env = {
        "DENSENET_DEMO_WEIGHTS": str(checkpoints.weights_dir().resolve()),
        "DENSENET_DEMO_PUBLISHED": str(checkpoints.published_dir().resolve()),
        **(env or {}),
    }
    return _run(config, files, name, args, nproc, scratch, cancel, child_env)


def _run(
    config: TrainConfig,
    files: LabeledFiles,
    name: str,
    args: list[str],
    nproc: int,
    scratch: Path,
    cancel: CancelToken | None,
    env: dict[str, str],
) -> Iterator[Event]:
    root = Path(tempfile.mkdtemp(prefix="torchrun_", dir=scratch))
    try:
        try:
            link_dataset(files, root / name, val_fraction=config.val_fraction, seed=config.seed)
        except OSError as e:
            yield Failed(
                f"could not lay out the images for the {nproc} processes ({e.strerror or e}); "
                "free some disk space and try again"
            )
            return
        # "./" keeps a name that starts with "-" from reading as a flag; the recorded source is the name alone.
        yield from launch_torchrun([f"./{name}", *args], nproc, cancel=cancel, env=env, cwd=root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
