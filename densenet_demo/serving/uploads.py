"""An uploaded weights file made into what ``weights.resolve`` takes: a checkpoint zip extracted safely, a
checkpoint ``.safetensors`` given a folder of its own; the same upload always gives the same folder."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..data import archives
from ..weights import checkpoints
from ..weights import resolver as W

__all__ = ["checkpoint_from_upload"]

# A checkpoint zip holds two files; DenseNet-161's weights (the largest preset) take ~115 MB.
MAX_CHECKPOINT_ZIP_BYTES = 1024**3
MAX_CHECKPOINT_ZIP_ENTRIES = 16


def checkpoint_from_upload(path: str | os.PathLike) -> Path:
    """An uploaded weights file as ``weights.resolve`` takes it, the checkpoint's class names kept.

    - a ``.zip`` (the Fine-tune tab's download: ``<run>/model.safetensors`` + ``model.json``) is extracted
      safely (``archives.safe_extract_zip``: no paths outside, size limits) into a folder beside it, and that
      checkpoint folder is returned;
    - a ``.safetensors`` whose header records a checkpoint (this project's ``model.safetensors``) gets a
      checkpoint folder of its own beside it (a hard link), so its architecture and class names come back;
    - any other file is returned as it is (a state dict for the chosen architecture).

    The same upload gives the same folder, so the predictor cache keeps serving it.
    """
    path = Path(path)
    if path.suffix.lower() == ".zip":
        return _prepared(path.with_suffix(""), lambda tmp: _extract_checkpoint(path, tmp))
    if path.suffix.lower() != ".safetensors":
        return path
    try:
        return _prepared(path.with_suffix(""), lambda tmp: _link(path, tmp / checkpoints.CHECKPOINT_WEIGHTS, tmp))
    except W.CheckpointError:
        return path  # a plain state dict: loaded into the chosen architecture


def _prepared(folder: Path, make: Callable[[Path], Path]) -> Path:
    """``folder`` once made: ``make(tmp)`` fills a temporary folder (returning the checkpoint in it) that is
    renamed into place, so concurrent requests for one upload never see half a checkpoint."""
    if folder.is_dir():
        return _checkpoint_in(folder)
    tmp = Path(tempfile.mkdtemp(prefix=".checkpoint_", dir=folder.parent))
    try:
        inner = make(tmp).relative_to(tmp)
        try:
            os.rename(tmp, folder)
        except OSError:  # another request prepared it first
            return _checkpoint_in(folder)
        return folder / inner
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _extract_checkpoint(zip_path: Path, target: Path) -> Path:
    files = archives.safe_extract_zip(
        zip_path, target, max_total_bytes=MAX_CHECKPOINT_ZIP_BYTES, max_entries=MAX_CHECKPOINT_ZIP_ENTRIES
    )
    found = [f.parent for f in files if f.name == checkpoints.CHECKPOINT_WEIGHTS]
    if len(found) != 1:
        raise W.CheckpointError(
            f"{zip_path.name}: expected one {checkpoints.CHECKPOINT_WEIGHTS} in the zip (a run downloaded from the "
            f"Fine-tune tab), found {len(found)}"
        )
    checkpoints.read_checkpoint_info(found[0])  # refuse a zip whose checkpoint cannot say its architecture
    return found[0]


def _link(source: Path, dest: Path, folder: Path) -> Path:
    try:
        os.link(source, dest)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(source, dest)
    checkpoints.read_checkpoint_info(folder)  # raises for a plain state dict (no checkpoint metadata)
    return folder


def _checkpoint_in(folder: Path) -> Path:
    found = sorted(p.parent for p in folder.rglob(checkpoints.CHECKPOINT_WEIGHTS))
    if not found:
        raise W.CheckpointError(f"{folder.name}: no {checkpoints.CHECKPOINT_WEIGHTS} in this upload")
    return found[0]
