"""Folder / zip / upload -> a validated list of labelled image files, a report of what was skipped, a split.

Accepted layouts (the same rules for a folder on disk, a ``.zip`` and a browser folder upload):

- ``root/<class>/**/<image>``: each top-level folder is a class;
- ``root/train/<class>/...`` + ``root/val/<class>/...`` (also ``valid``, ``validation`` or ``test``):
  the classic flower-dataset layout; the given validation split is used as is;
- either of these inside one wrapping folder (``flowers.zip`` holding ``flowers/...``).

Hidden files, ``__MACOSX`` folders, files that are not images and images whose header cannot be read
are skipped and reported (path + reason). An image that passes the header check but turns out corrupt
when decoded during training is dropped from its batch by ``collate_skipping_failures`` and reported
by the trainer. A zip is extracted by ``archives.safe_extract_zip`` (nothing lands outside the target folder;
zip bombs are refused before anything is written). The generated example dataset is in ``examples``.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from .archives import DatasetError, safe_extract_zip, safe_parts
from .images import ALLOWED_FORMATS, IMAGE_EXTENSIONS, MAX_PIXELS, ImageError, decode_image

__all__ = [
    "DatasetError",
    "DatasetReport",
    "LabeledFiles",
    "ImageFileDataset",
    "collate_skipping_failures",
    "load_image_folder",
    "from_uploaded_files",
    "from_class_lists",
    "stratified_split",
    "VAL_FOLDER_NAMES",
]

# Folder names taken as the validation split next to ``train/``, in order of preference.
VAL_FOLDER_NAMES = ("val", "valid", "validation", "test")

Item = tuple[Path, int]


@dataclass
class DatasetReport:
    """What a dataset load found: classes, images per class, and every file left out with the reason."""

    source: str
    classes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # images per class (train + given val)
    val_counts: dict[str, int] | None = None  # per class in a given val/ folder; None when split later
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    # The folder the files were read from (a zip's: where it was extracted); None for uploads and classes by hand.
    # A path on this machine: kept out of to_dict() and summary(), which people and the API see.
    root: Path | None = field(default=None, repr=False)

    @property
    def n_images(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """A few lines for people: classes with counts, then the skipped files (the first ten)."""
        layout = " (train/ + val/ layout)" if self.val_counts is not None else ""
        lines = [f"{self.n_images} images in {len(self.classes)} classes from {self.source}{layout}"]
        for name in self.classes:
            val = f" ({self.val_counts.get(name, 0)} in val)" if self.val_counts is not None else ""
            lines.append(f"  {name}: {self.counts.get(name, 0)}{val}")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} file(s):")
            lines += [f"  {path}: {reason}" for path, reason in self.skipped[:10]]
            if len(self.skipped) > 10:
                lines.append(f"  ... and {len(self.skipped) - 10} more")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "classes": list(self.classes),
            "counts": dict(self.counts),
            "val_counts": None if self.val_counts is None else dict(self.val_counts),
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
        }


@dataclass(frozen=True)
class LabeledFiles:
    """Image files with class labels; ``val`` is set when the layout gave a validation split."""

    class_names: tuple[str, ...]
    train: tuple[Item, ...]
    val: tuple[Item, ...] | None = None

    def split(self, val_fraction: float, seed: int) -> tuple[list[Item], list[Item]]:
        """(train, val): the given split if there is one, else a stratified, seeded split of ``train``."""
        if self.val is not None:
            return list(self.train), list(self.val)
        return stratified_split(self.train, val_fraction, seed)


# ---------------------------------------------------------------------------------------------
# Loading


def load_image_folder(
    path_or_zip: str | os.PathLike, *, extract_to: str | os.PathLike | None = None
) -> tuple[LabeledFiles, DatasetReport]:
    """A folder or ``.zip`` of class subfolders (or ``train/`` + ``val/``) -> (files, report).

    A zip is extracted safely into ``extract_to`` (default: a new temporary folder, left for the
    caller, since training reads the images from there). When the zip is refused, that folder is
    removed again if it was missing or empty before the call: a refused zip leaves nothing behind.
    """
    path = Path(path_or_zip)
    if not path.exists():
        raise DatasetError(f"{path}: no such folder or zip file")
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise DatasetError(f"{path.name}: not a folder or a .zip file; upload a zip of class subfolders")
        target = Path(extract_to) if extract_to else Path(tempfile.mkdtemp(prefix="densenet_demo_data_"))
        fresh = not target.exists() or not any(target.iterdir())
        try:
            safe_extract_zip(path, target)
            return _load_entries(_walk(target), source=path.name, root=target)
        except BaseException:
            if fresh:
                shutil.rmtree(target, ignore_errors=True)
            raise
    return _load_entries(_walk(path), source=str(path), root=path)


def from_uploaded_files(
    pairs: Iterable[tuple[str, str | os.PathLike]], *, source: str = "upload"
) -> tuple[LabeledFiles, DatasetReport]:
    """A browser folder upload: (relative path as the browser gives it, file on disk) pairs.

    The relative path's folder is the class (``flowers/daisy/1.jpg`` -> ``daisy``); ``train/`` and
    ``val/`` layouts are recognised as in a folder.
    """
    entries = []
    for relative, file in pairs:
        parts = safe_parts(str(relative))
        if parts is None:
            raise DatasetError(f"upload path {relative!r} points outside the upload; rejected")
        entries.append((PurePosixPath(*parts), Path(file)))
    return _load_entries(entries, source=source, root=None)


def from_class_lists(
    classes: Mapping[str, Sequence[str | os.PathLike]], *, source: str = "class lists"
) -> tuple[LabeledFiles, DatasetReport]:
    """Classes built by hand: ``{class name: [image files]}``; the label is the name given."""
    entries = []
    for name, files in classes.items():
        clean = str(name).strip()
        if not clean or "/" in clean or "\\" in clean:
            raise DatasetError(f"class name {name!r} is not allowed: use a non-empty name without slashes")
        entries += [(PurePosixPath(clean, Path(f).name), Path(f)) for f in files]
    return _load_entries(entries, source=source, root=None, detect_layout=False)


def _walk(root: Path) -> list[tuple[PurePosixPath, Path]]:
    """Every regular file under ``root`` as (relative path, path); symbolic links are not followed."""
    entries = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        base = Path(folder)
        for name in sorted(files):
            file = base / name
            entries.append((PurePosixPath(file.relative_to(root).as_posix()), file))
    return entries


def _load_entries(
    entries: list[tuple[PurePosixPath, Path]], *, source: str, root: Path | None, detect_layout: bool = True
) -> tuple[LabeledFiles, DatasetReport]:
    report = DatasetReport(source=source, root=root.resolve() if root is not None else None)

    def skip(rel: PurePosixPath, reason: str) -> None:
        report.skipped.append((str(rel), reason))

    candidates = []
    for rel, file in entries:
        reason = _junk_reason(rel, file)
        if reason:
            skip(rel, reason)
        else:
            candidates.append((rel, file))
    if detect_layout:
        candidates = _strip_wrapping_folder(candidates)

    val_folder = _val_folder(candidates) if detect_layout else None
    labelled: list[tuple[str, str, Path]] = []  # (split, class, file)
    for rel, file in candidates:
        parts = rel.parts
        split = "train"
        if val_folder is not None:
            if parts[0] not in ("train", val_folder):
                skip(rel, f"outside train/ and {val_folder}/ (the splits used)")
                continue
            split, parts = ("val" if parts[0] == val_folder else "train"), parts[1:]
        if len(parts) < 2:
            skip(rel, "not inside a class folder")
            continue
        problem = _header_problem(file)
        if problem:
            skip(rel, problem)
            continue
        labelled.append((split, parts[0], file))

    train_counts = Counter(name for split, name, _ in labelled if split == "train")
    classes = sorted(train_counts, key=lambda c: (c.casefold(), c))
    for split, name, file in labelled:
        if split == "val" and name not in train_counts:
            skip(PurePosixPath(val_folder or "", name, file.name), f"class '{name}' has no images in train/")
    _check_classes(classes, train_counts, report, source)

    index = {name: i for i, name in enumerate(classes)}
    train = tuple((file, index[name]) for split, name, file in labelled if split == "train")
    val = tuple((file, index[name]) for split, name, file in labelled if split == "val" and name in index)
    report.classes = classes
    report.counts = {c: train_counts[c] for c in classes}
    if val_folder is not None:
        report.val_counts = {c: sum(1 for _, i in val if i == index[c]) for c in classes}
        report.counts = {c: report.counts[c] + report.val_counts[c] for c in classes}
    return LabeledFiles(tuple(classes), train, val if val_folder is not None else None), report


def _junk_reason(rel: PurePosixPath, file: Path) -> str | None:
    if "__MACOSX" in rel.parts:
        return "macOS resource fork (__MACOSX)"
    if any(part.startswith(".") for part in rel.parts):
        return "hidden file"
    if rel.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"not an image file ({rel.suffix or 'no extension'})"
    if file.is_symlink():
        return "symbolic link"
    if not file.is_file():
        return "no such file"
    return None


def _strip_wrapping_folder(entries: list[tuple[PurePosixPath, Path]]) -> list[tuple[PurePosixPath, Path]]:
    """Drop one shared top folder at a time while every file stays inside a folder (zip of ``flowers/``)."""
    while entries and all(len(rel.parts) >= 3 for rel, _ in entries):
        tops = {rel.parts[0] for rel, _ in entries}
        if len(tops) != 1 or _val_folder(entries) is not None:
            break
        entries = [(PurePosixPath(*rel.parts[1:]), file) for rel, file in entries]
    return entries


def _val_folder(entries: list[tuple[PurePosixPath, Path]]) -> str | None:
    tops = {rel.parts[0] for rel, _ in entries if len(rel.parts) > 1}
    if "train" not in tops:
        return None
    return next((name for name in VAL_FOLDER_NAMES if name in tops), None)


def _header_problem(file: Path) -> str | None:
    """Why a file is not a usable image, judged from its header only (full decoding waits for training)."""
    try:
        if file.stat().st_size == 0:
            return "empty file"
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file, formats=list(ALLOWED_FORMATS)) as image:
                if image.width * image.height > MAX_PIXELS:
                    return f"{image.width}x{image.height} pixels is over the limit of {MAX_PIXELS:,}"
                if image.width < 1 or image.height < 1:
                    return "image has no pixels"
    except UnidentifiedImageError:
        return f"not an image in a supported format ({', '.join(ALLOWED_FORMATS)})"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return "refused as a decompression bomb"
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        return f"cannot be read as an image ({e})"
    return None


def _check_classes(classes: list[str], counts: Counter, report: DatasetReport, source: str) -> None:
    if len(classes) >= 2:
        return
    found = ", ".join(f"'{c}' ({counts[c]} images)" for c in classes) or "no class folder with images"
    skipped = ""
    if report.skipped:  # the f-string reads skipped[0]: only when there is one
        skipped = f"; {len(report.skipped)} file(s) skipped, e.g. {report.skipped[0][0]}: {report.skipped[0][1]}"
    raise DatasetError(
        f"{source}: found {found}{skipped}. Training needs at least 2 classes, "
        "each a folder of at least one image (root/<class>/<image>, or train/<class>/ and val/<class>/)"
    )


# ---------------------------------------------------------------------------------------------
# Split and torch dataset


def stratified_split(items: Sequence[Item], val_fraction: float, seed: int) -> tuple[list[Item], list[Item]]:
    """Per class, a seeded shuffle and ``round(n * val_fraction)`` images to val.

    Every class with at least 2 images gets at least 1 in val and keeps at least 1 in train; a class
    with a single image stays in train. The result does not depend on the order of ``items``.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction!r}")
    by_class: dict[int, list[Item]] = {}
    for path, label in sorted(items, key=lambda item: (item[1], str(item[0]))):
        by_class.setdefault(label, []).append((path, label))
    rng = random.Random(seed)
    train: list[Item] = []
    val: list[Item] = []
    for label in sorted(by_class):
        members = by_class[label]
        rng.shuffle(members)
        n = len(members)
        n_val = 0 if n < 2 else min(n - 1, max(1, round(n * val_fraction)))
        val += members[:n_val]
        train += members[n_val:]
    return train, val


class ImageFileDataset(torch.utils.data.Dataset):
    """(path, label) pairs decoded lazily; an image that fails to decode gives ``None`` instead of a tensor.

    Items are ``(tensor or None, label, path, error or None)``; ``collate_skipping_failures`` drops the
    failures from the batch and hands them on, so training goes on and the trainer can report them.
    """

    def __init__(
        self, items: Sequence[Item], transform: Callable[[Image.Image], torch.Tensor], *, mode: str, draft_size: int
    ) -> None:
        self.items = list(items)
        self.transform = transform
        self.mode = mode
        self.draft_size = draft_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int, str, str | None]:
        path, label = self.items[index]
        try:
            image = decode_image(path, mode=self.mode, draft_size=self.draft_size)
        except ImageError as e:
            return None, label, str(path), str(e)
        return self.transform(image), label, str(path), None


def collate_skipping_failures(
    batch: list[tuple[torch.Tensor | None, int, str, str | None]],
) -> tuple[torch.Tensor | None, torch.Tensor | None, list[tuple[str, str]]]:
    """Stack the decoded images; return ``(images, labels, [(path, reason)] of those that failed)``."""
    good = [(x, y) for x, y, _, error in batch if error is None]
    failed = [(path, error) for _, _, path, error in batch if error is not None]
    if not good:
        return None, None, failed
    return torch.stack([x for x, _ in good]), torch.tensor([y for _, y in good]), failed
