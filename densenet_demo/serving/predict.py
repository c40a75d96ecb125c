"""Predictor: a model built once per (model, weights), top-k for batches of images, Grad-CAM.

``get_predictor(model, weights)`` returns a cached ``Predictor`` (a small, locked LRU cache), so a request
never rebuilds a model. A predictor is read-only after construction and safe to share between threads:
inference runs through ``InferenceDenseNet`` (BN folded, channels_last, no repeated concatenation) under
``torch.inference_mode()``, and Grad-CAM differentiates the head on a detached feature map instead of
registering hooks on the shared model. ``classify_files`` is one request's work as plain data in and out: what
a ZeroGPU call computes (hosting/gpu.py), and what the app computes here everywhere else.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from ..data import archives
from ..data.images import ImageError, ImageSource, Preprocessing, decode_image
from ..hosting import gpu
from ..inference import InferenceDenseNet
from ..model import DenseNet
from ..weights import checkpoints
from ..weights import resolver as W

__all__ = [
    "CACHE_SIZE",
    "Classified",
    "GradCam",
    "Prediction",
    "Predictor",
    "build_predictor",
    "checkpoint_from_upload",
    "classify_files",
    "clear_cache",
    "get_predictor",
]

CACHE_SIZE = 4  # models kept in memory; with its inference copy a DenseNet-121 takes ~65 MB, a 161 ~230 MB
MAX_BATCH = 32  # images per forward pass; more are split, so a large upload cannot exhaust memory
# A checkpoint zip holds two files; DenseNet-161's weights (the largest preset) take ~115 MB.
MAX_CHECKPOINT_ZIP_BYTES = 1024**3
MAX_CHECKPOINT_ZIP_ENTRIES = 16


@dataclass
class Prediction:
    """Top-k of one image: ``labels`` is [(class name, probability)], most probable first."""

    name: str
    labels: list[tuple[str, float]]
    latency_ms: float  # this image's decode + preprocessing, plus its share of the batch's forward pass


OVERLAY_MIN_SIDE = 256  # Grad-CAM overlays are drawn at least this large (a 32 px input is enlarged smoothly)


@dataclass
class GradCam:
    """Where the model looked for one class (Selvaraju et al., https://arxiv.org/abs/1610.02391)."""

    heatmap: np.ndarray  # (H, W) float32 in [0, 1], over the model's input crop
    overlay: Image.Image  # the input crop with the heatmap on top, RGB, at least OVERLAY_MIN_SIDE px a side
    class_index: int
    class_name: str


class Predictor:
    """A model ready for inference: decode -> preprocess -> forward -> top-k, and Grad-CAM.

    Args:
        model: the network; moved to ``device``, kept in eval mode, never modified afterwards (it is shared).
        class_names: one name per output.
        preprocessing: how an image becomes an input (the weights' or the checkpoint's own).
        model_key: what the model was asked for as (preset name, ``run:<id>``, folder).
        weights_label: where the weights came from, for people ("ImageNet (...)", "random init", ...).
        notice: set when the weights asked for were unavailable; says what happened and what to do.
        device: default ``gpu.device()``: CUDA when there is a GPU here now, else the CPU.
    """

    def __init__(
        self,
        model: DenseNet,
        *,
        class_names: Sequence[str],
        preprocessing: Preprocessing,
        model_key: str = "custom",
        weights_label: str = "",
        notice: str | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if len(class_names) != model.cfg.num_classes:
            raise ValueError(f"{len(class_names)} class names for a model with {model.cfg.num_classes} outputs")
        self.device = torch.device(device or gpu.device())
        self.model = model.eval().to(self.device)
        self.cfg = model.cfg
        self.class_names = tuple(class_names)
        self.preprocessing = preprocessing
        self.model_key = model_key
        self.weights_label = weights_label
        self.notice = notice
        self._net = InferenceDenseNet(self.model, self.device)
        # The first call pays for imports and oneDNN kernel creation: pay it here, not in a user's request.
        self.predict_images([Image.new(preprocessing.mode, (preprocessing.image_size,) * 2)], top_k=1)

    def __repr__(self) -> str:
        return f"Predictor({self.model_key!r}, {self.weights_label!r}, device={self.device.type})"

    def decode(self, image: ImageSource, name: str | None = None) -> Image.Image:
        """Decode an upload in the model's colour mode; JPEGs decode directly at about the size needed."""
        p = self.preprocessing
        return decode_image(image, mode=p.mode, name=name, draft_size=p.resize_size)

    def preprocess(self, image: ImageSource, name: str | None = None) -> torch.Tensor:
        """Decode + eval transform: one (C, H, W) input tensor. Raises ``ImageError``."""
        return self.preprocessing.to_tensor(self.decode(image, name))

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Raw outputs for a (N, C, H, W) batch of preprocessed inputs."""
        with torch.inference_mode():
            return self._net(batch.to(self.device)).float().cpu()

    def classify(self, batch: torch.Tensor, top_k: int = 5) -> list[list[tuple[str, float]]]:
        """Top-k (class name, probability) per row of a preprocessed batch."""
        k = self._check_top_k(top_k)
        probs = torch.softmax(self.logits(batch), dim=1)
        values, indices = probs.topk(k, dim=1)
        return [
            [(self.class_names[i], float(p)) for p, i in zip(row_p.tolist(), row_i.tolist(), strict=True)]
            for row_p, row_i in zip(values, indices, strict=True)
        ]

    def predict_images(
        self, images: Sequence[ImageSource], top_k: int = 5, names: Sequence[str] | None = None
    ) -> list[Prediction | ImageError]:
        """Per image, a ``Prediction`` or the ``ImageError`` that stopped it; good images share forward passes."""
        self._check_top_k(top_k)
        names = list(names) if names is not None else [_name_of(img, i) for i, img in enumerate(images)]
        if len(names) != len(images):
            raise ValueError(f"{len(names)} names for {len(images)} images")
        results: list[Prediction | ImageError | None] = [None] * len(images)
        inputs: list[tuple[int, torch.Tensor, float]] = []  # (position, tensor, decode seconds)
        for i, (image, name) in enumerate(zip(images, names, strict=True)):
            start = time.perf_counter()
            try:
                inputs.append((i, self.preprocess(image, name), time.perf_counter() - start))
            except ImageError as e:
                results[i] = e
        for chunk_start in range(0, len(inputs), MAX_BATCH):
            chunk = inputs[chunk_start : chunk_start + MAX_BATCH]
            start = time.perf_counter()
            top = self.classify(torch.stack([t for _, t, _ in chunk]), top_k)
            share = (time.perf_counter() - start) / len(chunk)
            for (i, _, decode_s), labels in zip(chunk, top, strict=True):
                results[i] = Prediction(names[i], labels, (decode_s + share) * 1000.0)
        return results  # type: ignore[return-value]  # every position is filled by now

    def predict(
        self, images: Sequence[ImageSource], top_k: int = 5, names: Sequence[str] | None = None
    ) -> list[Prediction]:
        """Like ``predict_images``, but raises the first ``ImageError``."""
        results = self.predict_images(images, top_k, names)
        for r in results:
            if isinstance(r, ImageError):
                raise r
        return results  # type: ignore[return-value]

    def gradcam(self, image: ImageSource, class_index: int | None = None, name: str | None = None) -> GradCam:
        """Grad-CAM from the last dense block for ``class_index`` (default: the top-1 class)."""
        decoded = self.decode(image, name)
        x = self.preprocessing.to_tensor(decoded)[None]
        with torch.no_grad():
            features = self._net.block_output(x)
        # Differentiate only the head (norm5-ReLU-pool-linear) with respect to this request's own tensor.
        features = features.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self._net.head(features)[0]
            if class_index is None:
                class_index = int(logits.argmax())
            if not 0 <= class_index < len(self.class_names):
                raise ValueError(f"class index {class_index} is out of range 0..{len(self.class_names) - 1}")
            (grads,) = torch.autograd.grad(logits[class_index], features)
        with torch.no_grad():
            channel_weights = grads.mean(dim=(2, 3), keepdim=True)  # α_k: the class's use of channel k
            cam = F.relu((channel_weights * features).sum(dim=1, keepdim=True))
        side = self.preprocessing.image_size
        heatmap = _upsampled(cam, side)
        # People look at the overlay at a readable size: the input crop enlarged smoothly and the map upsampled
        # from the last block's few cells to that size, not a 32 px image stretched into blocks by the browser.
        shown = max(side, OVERLAY_MIN_SIDE)
        view = self.preprocessing.view(decoded).convert("RGB").resize((shown, shown), Image.Resampling.BICUBIC)
        overlay = _overlay(view, heatmap if shown == side else _upsampled(cam, shown))
        return GradCam(heatmap, overlay, class_index, self.class_names[class_index])

    def _check_top_k(self, top_k: int) -> int:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top-k must be a whole number of at least 1, got {top_k!r}")
        return min(top_k, len(self.class_names))


def _name_of(image: ImageSource, index: int) -> str:
    if isinstance(image, (str, os.PathLike)):
        return Path(image).name
    return getattr(image, "name", None) or f"image {index + 1}"


def _upsampled(cam: torch.Tensor, side: int) -> np.ndarray:
    """A (1, 1, h, w) class activation map, bilinearly upsampled to ``side`` x ``side`` and scaled to 0..1."""
    with torch.no_grad():
        cam = F.interpolate(cam, size=(side, side), mode="bilinear", align_corners=False)[0, 0].float().cpu()
        low, high = float(cam.min()), float(cam.max())
        cam = (cam - low) / (high - low) if high > low else torch.zeros_like(cam)
    return cam.numpy().astype(np.float32)


def _overlay(view: Image.Image, heatmap: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """The heatmap as blue (cold) - yellow - red (hot), blended onto the model's view of the image."""
    heat = Image.fromarray((heatmap * 255.0).round().astype(np.uint8), "L")
    colored = ImageOps.colorize(heat, black=(0, 0, 160), mid=(255, 220, 0), white=(220, 0, 0))
    return Image.blend(view.convert("RGB"), colored, alpha)


# -- The cache: one predictor per resolved (model, weights, file version) -----------------------

_cache: OrderedDict[tuple, Predictor] = OrderedDict()
_cache_lock = threading.Lock()
_building: dict[tuple, threading.Lock] = {}  # one lock per key being built: others wait, nobody builds twice


RANDOM_INIT_SEED = 0


def build_predictor(
    model: str | W.WeightsSpec,
    weights: str | os.PathLike | None = W.DEFAULT,
    *,
    device: torch.device | str | None = None,
) -> Predictor:
    """A new predictor, uncached: see ``get_predictor`` for the arguments (or pass a resolved ``WeightsSpec``).

    Random weights (asked for, or in place of unavailable ImageNet weights) come from a generator of their own
    with a fixed seed, so a random-init model predicts the same in every process and whatever torch's global
    RNG holds: its answers mean nothing, but they repeat.
    """
    spec = W.resolve(model, weights)
    loaded = W.load_model(spec, generator=torch.Generator().manual_seed(RANDOM_INIT_SEED))
    return Predictor(
        loaded.model,
        class_names=loaded.class_names,
        preprocessing=loaded.preprocessing,
        model_key=spec.model,
        weights_label=loaded.label,
        notice=loaded.notice,
        device=device,
    )


def get_predictor(model: str, weights: str | os.PathLike | None = W.DEFAULT) -> Predictor:
    """The cached predictor for ``model`` (preset, ``run:<id>`` or checkpoint folder) and ``weights``.

    ``weights``: ``"default"`` (ImageNet for the ImageNet presets, random otherwise), ``"imagenet"``,
    ``"random"`` or a ``.safetensors``/``.pth`` path; ignored for checkpoints (``weights.resolve`` says it all).
    A file changed on disk (a re-saved run, ImageNet weights placed after a failed download) gives a new predictor.
    """
    spec = W.resolve(model, weights)
    key = (spec.cache_key, str(gpu.device()))  # on ZeroGPU: on the CPU here, on the GPU inside a call
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        build_lock = _building.setdefault(key, threading.Lock())
    with build_lock:
        with _cache_lock:
            if key in _cache:  # built by another thread while this one waited
                return _cache[key]
        try:
            predictor = build_predictor(spec)
            with _cache_lock:
                _cache[key] = predictor
                while len(_cache) > CACHE_SIZE:
                    _cache.popitem(last=False)
        finally:
            with _cache_lock:
                _building.pop(key, None)
    return predictor


@dataclass
class Classified:
    """One request's images: per image its ``Prediction`` (or the ``ImageError`` that stopped it) and, when asked
    for, the Grad-CAM overlay of its top class; and where the model's weights came from. Plain data throughout."""

    results: list[Prediction | ImageError]
    overlays: list[Image.Image | None]
    weights_label: str
    notice: str | None


def classify_files(
    model: str,
    weights: str | os.PathLike | None,
    paths: Sequence[str],
    *,
    top_k: int,
    names: Sequence[str],
    gradcam: bool,
) -> Classified:
    """Classify image files with the cached predictor of (``model``, ``weights``), Grad-CAM included."""
    predictor = get_predictor(model, weights)
    results = predictor.predict_images(paths, top_k=top_k, names=names)
    overlays = [
        predictor.gradcam(path).overlay if gradcam and isinstance(result, Prediction) else None
        for path, result in zip(paths, results, strict=True)
    ]
    return Classified(results, overlays, predictor.weights_label, predictor.notice)


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


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
