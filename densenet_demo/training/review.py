"""The review of a run: what its best model predicts for every image of its data, so that people see *which*
images it gets wrong and which ones look labelled wrong.

``review_run(run, data=None)`` predicts each image once (pooled features and probabilities) and returns a
``Review``: the validation images by confusion-matrix cell (true class, predicted class), each with its top-3
probabilities; the most confidently wrong; and the likely mislabels of the whole data, training images included,
ranked by self-confidence on out-of-sample probabilities (training/mislabels.py).

Which data: by default the files the run recorded (weights/run_data.py), when they are still on this machine;
else a folder or zip given by hand, whose classes must be among the run's. Images the run trained on are known
from its record (by their path inside the data's folder), so a folder given again, or a zip extracted anew, is
reviewed as the run saw it. Files are named relative to the data's folder, never by their path on the server.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.datasets import DatasetError, ImageFileDataset, Item, collate_skipping_failures, load_image_folder
from ..model import DenseNet
from ..weights import checkpoints
from ..weights.run_data import RunData, read_run_data
from .build import pick_device
from .mislabels import CrossFit, cross_fit_probabilities, self_confidence_rank

__all__ = [
    "Confusion",
    "Predictions",
    "Review",
    "ReviewError",
    "Suspect",
    "predict_run",
    "review",
    "review_run",
    "run_folder",
]

Progress = Callable[[int, int], None]  # (images predicted so far, images in all)
DEFAULT_CROSS_FIT = CrossFit()


class ReviewError(ValueError):
    """A run that cannot be reviewed on the data asked for; the message says why and what to give instead."""


@dataclass(frozen=True)
class Confusion:
    """One off-diagonal cell of the validation confusion matrix: its files, most confidently wrong first."""

    true: str
    predicted: str
    count: int
    files: list[str]


@dataclass(frozen=True)
class Suspect:
    """An image whose given label the out-of-sample prediction finds unlikely, with the class it looks like."""

    file: str
    label: str
    suggested: str
    p_label: float
    p_suggested: float

    def caption(self) -> str:
        return f"given: {self.label}, looks like: {self.suggested} ({self.p_suggested:.2f})"


@dataclass(frozen=True)
class Review:
    """The best model's predictions on a run's data: row i of the arrays is image ``files[i]`` (``paths[i]``)."""

    run_id: str
    class_names: tuple[str, ...]
    files: tuple[str, ...]  # relative to the data's folder: what people and the API see
    paths: tuple[Path, ...]  # on this machine, for thumbnails; never shown
    labels: np.ndarray  # (n,) given labels
    trained_on: np.ndarray  # (n,) bool: the run learned from this image (it is not a validation image)
    probabilities: np.ndarray  # (n, classes): the best model's softmax
    out_of_sample: np.ndarray  # (n, classes): the model's for held-out images, the cross-fit's for the others
    skipped: tuple[tuple[str, str], ...] = ()  # (file, reason): images that could not be decoded
    missing: int = 0  # recorded images no longer on disk
    method: str = ""  # how the training images were scored (a cross-fit, or in-sample), for people

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(1)

    def confusion_matrix(self) -> np.ndarray:
        """Counts of the held-out images (rows: true class, columns: predicted), as the run's validation counted."""
        n = len(self.class_names)
        held = ~self.trained_on
        cells = self.labels[held] * n + self.predicted[held]
        return np.bincount(cells, minlength=n * n).reshape(n, n)

    def cell(self, true: int, predicted: int) -> list[int]:
        """The held-out images of one cell, the most confident prediction first."""
        rows = np.flatnonzero(~self.trained_on & (self.labels == true) & (self.predicted == predicted))
        return rows[np.argsort(-self.probabilities[rows, predicted], kind="stable")].tolist()

    def most_confidently_wrong(self, limit: int = 24) -> list[int]:
        """Held-out images predicted wrong, the highest probability of the wrong class first."""
        rows = np.flatnonzero(~self.trained_on & (self.predicted != self.labels))
        return rows[np.argsort(-self.probabilities[rows, self.predicted[rows]], kind="stable")][:limit].tolist()

    def top(self, row: int, k: int = 3) -> list[tuple[str, float]]:
        """The model's ``k`` most probable classes for image ``row``, with their probabilities."""
        order = np.argsort(-self.probabilities[row], kind="stable")[:k]
        return [(self.class_names[i], float(self.probabilities[row, i])) for i in order]

    def confusions(self) -> list[Confusion]:
        """Every off-diagonal cell with images, the largest first."""
        matrix, out = self.confusion_matrix(), []
        for true, predicted in zip(*np.nonzero(matrix), strict=True):
            if true != predicted:
                files = [self.files[i] for i in self.cell(int(true), int(predicted))]
                out.append(Confusion(self.class_names[true], self.class_names[predicted], len(files), files))
        return sorted(out, key=lambda c: -c.count)

    def suspected_mislabels(self, limit: int | None = None) -> list[Suspect]:
        """Images whose out-of-sample prediction prefers another class, most suspicious first (self-confidence)."""
        order = self_confidence_rank(self.labels, self.out_of_sample)[:limit]
        suggested = self.out_of_sample.argmax(1)
        return [self._suspect(int(i), int(suggested[i])) for i in order]

    def suspect_rows(self, limit: int | None = None) -> list[int]:
        return self_confidence_rank(self.labels, self.out_of_sample)[:limit].tolist()

    def _suspect(self, row: int, suggested: int) -> Suspect:
        label = int(self.labels[row])
        p = self.out_of_sample[row]
        return Suspect(
            self.files[row], self.class_names[label], self.class_names[suggested], float(p[label]), float(p[suggested])
        )

    def to_dict(self) -> dict[str, Any]:
        """What ``review --json`` prints and the ``/review`` endpoint returns."""
        return {
            "confusions": [
                {"true": c.true, "predicted": c.predicted, "count": c.count, "files": c.files}
                for c in self.confusions()
            ],
            "suspected_mislabels": [
                {
                    "file": s.file,
                    "label": s.label,
                    "suggested": s.suggested,
                    "p_label": round(s.p_label, 4),
                    "p_suggested": round(s.p_suggested, 4),
                }
                for s in self.suspected_mislabels()
            ],
        }


def run_folder(run: str | os.PathLike) -> Path:
    """A run's folder: ``run:<id>`` or an id (the runs folder, then the published runs), or a checkpoint folder."""
    text = str(run)
    path = Path(text)
    if not text.startswith("run:") and (path / checkpoints.CHECKPOINT_WEIGHTS).is_file():
        return path
    folder = checkpoints.find_run(text.removeprefix("run:"))
    if not (folder / checkpoints.CHECKPOINT_WEIGHTS).is_file():
        raise ReviewError(f"no run {text.removeprefix('run:')!r}: give a run id (see weights/runs/) or its folder")
    return folder


@dataclass(frozen=True)
class Predictions:
    """Every image of a run's data through its best model once: what ``review`` scores (row i: ``files[i]``)."""

    run_id: str
    class_names: tuple[str, ...]
    files: tuple[str, ...]
    paths: tuple[Path, ...]
    labels: np.ndarray  # (n,)
    trained_on: np.ndarray  # (n,) bool
    features: torch.Tensor  # (n, features): pooled, before the classifier (CPU)
    probabilities: torch.Tensor  # (n, classes): softmax (CPU)
    skipped: tuple[tuple[str, str], ...] = ()
    missing: int = 0


def review_run(
    run: str | os.PathLike,
    data: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    batch_size: int = 64,
    cross_fit: CrossFit | None = DEFAULT_CROSS_FIT,
    progress: Progress | None = None,
) -> Review:
    """Predict every image of the run's data (default: its recorded data) with its best model, and review them.

    ``cross_fit=None`` scores the training images with the model's own (in-sample) probabilities instead.
    Raises ``ReviewError`` (or ``DatasetError``, ``CheckpointError``) with a message for people.
    """
    return review(predict_run(run, data, device=device, batch_size=batch_size, progress=progress), cross_fit)


def predict_run(
    run: str | os.PathLike,
    data: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    batch_size: int = 64,
    progress: Progress | None = None,
) -> Predictions:
    """The best model's pooled features and probabilities for every image of the run's data (``review_run``)."""
    folder = run_folder(run)
    model, info = checkpoints.load_checkpoint(folder)
    record = read_run_data(folder)
    with tempfile.TemporaryDirectory(prefix="densenet_demo_review_") as scratch:
        images = _images(folder.name, info, record, data, Path(scratch))
        features, probabilities, ok, skipped = _predict(model.to(_device(device)), images, info, batch_size, progress)
    keep = np.flatnonzero(ok)
    return Predictions(
        run_id=folder.name,
        class_names=info.class_names,
        files=tuple(images.files[i] for i in keep),
        paths=tuple(images.items[i][0] for i in keep),
        labels=np.array([label for _, label in images.items], dtype=np.int64)[keep],
        trained_on=images.trained_on[keep],
        features=features,
        probabilities=probabilities,
        skipped=tuple((images.files[i], reason) for i, reason in skipped),
        missing=images.missing,
    )


def review(predictions: Predictions, cross_fit: CrossFit | None = DEFAULT_CROSS_FIT) -> Review:
    """Score the predictions: out-of-sample probabilities for the training images by ``cross_fit`` (None: in-sample)."""
    p = predictions
    out_of_sample, method = p.probabilities.clone(), "training images scored in-sample"
    if cross_fit is not None and p.trained_on.any():
        rows = torch.from_numpy(np.flatnonzero(p.trained_on))
        labels = torch.from_numpy(p.labels)[rows]
        fitted = cross_fit_probabilities(p.features[rows], labels, len(p.class_names), cross_fit)
        if fitted is not None:
            out_of_sample[rows] = fitted
            method = f"training images scored by a {cross_fit.folds}-fold cross-fit"
    return Review(
        run_id=p.run_id,
        class_names=p.class_names,
        files=p.files,
        paths=p.paths,
        labels=p.labels,
        trained_on=p.trained_on,
        probabilities=p.probabilities.numpy(),
        out_of_sample=out_of_sample.numpy(),
        skipped=p.skipped,
        missing=p.missing,
        method=method,
    )


def _device(choice: str | torch.device | None) -> torch.device:
    try:
        return pick_device(str(choice or "auto"))
    except RuntimeError as e:  # torch's word for a name that is no device
        raise ReviewError(f"no device {str(choice)!r} ({e}); use auto, cpu, cuda or cuda:N") from None


@dataclass(frozen=True)
class _Images:
    """Images to review (the run's class indices), their names for people, and whether the run trained on them."""

    items: list[Item]
    files: list[str]
    trained_on: np.ndarray
    missing: int = 0


def _images(run_id: str, info: checkpoints.CheckpointInfo, record: RunData | None, data: Any, scratch: Path) -> _Images:
    if data is None:
        return _recorded_images(run_id, info, record)
    files, report = load_image_folder(data, extract_to=scratch / "data")
    unknown = [name for name in files.class_names if name not in info.class_names]
    if unknown:
        raise ReviewError(
            f"class {unknown[0]!r} of the data is not one of run {run_id}'s classes "
            f"({', '.join(info.class_names)}); give data with the run's class folders"
        )
    index = {name: info.class_names.index(name) for name in files.class_names}
    train_config = info.extra.get("train_config") or {}
    train, val = files.split(float(train_config.get("val_fraction") or 0.2), int(train_config.get("seed") or 0))
    items = [(path, index[files.class_names[label]]) for path, label in (*train, *val)]
    root = report.root
    names = [_name(path, root, info.class_names[label]) for path, label in items]
    if record is not None:  # the run's own record says which files it learned from, by their place in the data
        learned = {_name(path, record.root, record.class_names[label]) for path, label in record.train}
        trained_on = np.array([name in learned for name in names], dtype=bool)
    else:  # a run from before runs recorded their data: the split its settings make of this data
        trained_on = np.array([i < len(train) for i in range(len(items))], dtype=bool)
    return _Images(items, names, trained_on)


def _recorded_images(run_id: str, info: checkpoints.CheckpointInfo, record: RunData | None) -> _Images:
    if record is None:
        raise ReviewError(
            f"run {run_id} did not record its data (it was trained before runs did); give the data it was trained on"
        )
    if tuple(record.class_names) != tuple(info.class_names):
        raise ReviewError(f"run {run_id}'s record of its data does not match its classes; give the data by hand")
    train, val = [i for i in record.train if i[0].is_file()], [i for i in record.val if i[0].is_file()]
    missing = len(record.train) + len(record.val) - len(train) - len(val)
    if not train and not val:
        source = (info.extra.get("dataset") or {}).get("source") or "its data"
        raise ReviewError(
            f"the images run {run_id} was trained on ({Path(str(source)).name}) are no longer on this machine "
            "(an upload or an extracted zip goes with its session); give the data again"
        )
    items = [*train, *val]
    names = [_name(path, record.root, info.class_names[label]) for path, label in items]
    trained_on = np.array([i < len(train) for i in range(len(items))], dtype=bool)
    return _Images(items, names, trained_on, missing)


def _name(path: Path, root: Path | None, class_name: str) -> str:
    """An image's name for people: its path inside the data's folder; ``<class>/<file name>`` without a folder."""
    absolute = Path(os.path.abspath(path))
    if root is not None and absolute.is_relative_to(root):
        return absolute.relative_to(root).as_posix()
    return f"{class_name}/{absolute.name}"


def _predict(
    model: DenseNet, images: _Images, info: checkpoints.CheckpointInfo, batch_size: int, progress: Progress | None
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, list[tuple[int, str]]]:
    """Pooled features and softmax probabilities (CPU) of each decodable image, which ones decoded, and the rest."""
    prep = info.preprocessing
    indexed = [(path, i) for i, (path, _) in enumerate(images.items)]  # the label slot carries the row index
    dataset = ImageFileDataset(indexed, prep.to_tensor, mode=prep.mode, draft_size=prep.resize_size)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate_skipping_failures)
    device = next(model.parameters()).device
    features, probabilities, rows, failed, done = [], [], [], [], 0
    position = {str(path): i for path, i in indexed}
    with torch.inference_mode():
        for x, index, failures in loader:
            failed += [(position[path], reason) for path, reason in failures]
            if x is not None:
                pooled = model.forward_head(model.forward_features(x.to(device)), pre_logits=True).float()
                features.append(pooled.cpu())
                probabilities.append(model.classifier(pooled).float().softmax(1).cpu())
                rows.append(index)
            done += batch_size
            if progress is not None:
                progress(min(done, len(indexed)), len(indexed))
    if not features:
        raise DatasetError("none of the images could be decoded")
    order = torch.cat(rows).argsort()  # rows come in order already; sorted to be sure
    ok = np.zeros(len(indexed), dtype=bool)
    ok[torch.cat(rows).numpy()] = True
    return torch.cat(features)[order], torch.cat(probabilities)[order], ok, failed
