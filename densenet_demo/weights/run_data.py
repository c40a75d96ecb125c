"""Which images a run trained and validated on, recorded beside its checkpoint, so that it can be reviewed later.

The trainer writes ``data.json`` into the run's folder with its first checkpoint: the folder the classes were read
from (None for uploads and classes built by hand), the class names, and the files of the training and the
validation split with their labels (relative to that folder where they lie inside it). The review
(training/review.py) reads it back to predict every image of the run's own data, knowing which ones the run
learned from. Recording the split itself, rather than recomputing it, keeps it exact when the folder has changed
since, and covers data that has no folder at all.

The record names files on this machine, so it stays here: ``checkpoints.zip_checkpoint`` takes only the model's two
files, and the review shows files relative to the data's folder, never these paths.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.datasets import Item
from .checkpoints import CheckpointError, atomic_write

__all__ = ["DATA_FILE", "RunData", "read_run_data", "record_run_data"]

logger = logging.getLogger(__name__)

DATA_FILE = "data.json"  # beside model.json; local to this machine (paths on disk), never part of a download
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class RunData:
    """The images of a run's training and validation splits, as its trainer saw them."""

    root: Path | None  # the data's folder; None when the images came from uploads or classes built by hand
    class_names: tuple[str, ...]
    train: tuple[Item, ...]
    val: tuple[Item, ...]

    def present(self) -> list[Item]:
        """The recorded images still on disk (a zip's extraction or an upload may have gone with its session)."""
        return [(path, label) for path, label in (*self.train, *self.val) if path.is_file()]

    def to_dict(self) -> dict[str, Any]:
        def stored(items: tuple[Item, ...]) -> list[list[Any]]:
            return [[self._stored_path(path), label] for path, label in items]

        return {
            "format_version": _FORMAT_VERSION,
            "root": str(self.root) if self.root is not None else None,
            "class_names": list(self.class_names),
            "train": stored(self.train),
            "val": stored(self.val),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunData:
        root = Path(data["root"]) if data.get("root") else None

        def items(rows: list[list[Any]]) -> tuple[Item, ...]:
            return tuple(((root / path if root is not None else Path(path)), int(label)) for path, label in rows)

        return cls(root, tuple(str(c) for c in data["class_names"]), items(data["train"]), items(data["val"]))

    def _stored_path(self, path: Path) -> str:
        """Relative to the root when the file lies inside it (a smaller record), else absolute."""
        absolute = Path(os.path.abspath(path))
        if self.root is not None and absolute.is_relative_to(self.root):
            return absolute.relative_to(self.root).as_posix()
        return str(absolute)


def record_run_data(
    folder: str | os.PathLike,
    class_names: list[str] | tuple[str, ...],
    train: list[Item] | tuple[Item, ...],
    val: list[Item] | tuple[Item, ...],
    root: str | os.PathLike | None,
) -> bool:
    """Write ``folder/data.json`` atomically. Only the review needs it, so a record that cannot be written (a full
    disk) is logged and the caller goes on: returns whether it was written."""
    record = RunData(
        Path(os.path.abspath(root)) if root is not None else None,
        tuple(class_names),
        tuple((Path(p), int(label)) for p, label in train),
        tuple((Path(p), int(label)) for p, label in val),
    )
    text = json.dumps(record.to_dict(), separators=(",", ":"))
    try:
        atomic_write(Path(folder) / DATA_FILE, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))
    except OSError as e:
        logger.warning("run %s: could not record its data (%s); review it on data given by hand", Path(folder).name, e)
        return False
    return True


def read_run_data(folder: str | os.PathLike) -> RunData | None:
    """The record of a run folder; None for a run that has none (trained before runs recorded their data)."""
    path = Path(folder) / DATA_FILE
    if not path.is_file():
        return None
    try:
        return RunData.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path.parent.name}: its record of the data is unreadable ({e})") from None
