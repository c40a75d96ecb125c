"""Predictor: a model built once per (model, weights), top-k for batches of images from the backend asked for.

``get_predictor(model, weights)`` returns a cached ``Predictor`` (a small, locked LRU cache), so a request never
rebuilds a model. A predictor is read-only after construction and safe to share between threads. It answers from
a backend (``backends``): PyTorch (``InferenceDenseNet``: BN folded, channels_last, no repeated concatenation, under
``torch.inference_mode()``), onnxruntime, or int8; ``auto`` takes onnxruntime on a CPU once its checked graph is
ready (prepared in the background on first use) and PyTorch until then. The predictor and its graphs are cached
together per (model, weights): one loaded model serves every backend. Grad-CAM (``gradcam``) is PyTorch's, computed
only when asked. ``classify_files`` is one request's work as plain data in and out: what a ZeroGPU call computes
(hosting/gpu.py), and what the app computes here everywhere else.
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.datasets import LabeledFiles
from ..data.images import ImageError, ImageSource, Preprocessing, decode_image
from ..hosting import gpu
from ..inference import InferenceDenseNet
from ..model import DenseNet
from ..weights import resolver as W
from .backends import BackendStatus, Engine, Graphs, check_backend
from .gradcam import OVERLAY_MIN_SIDE, GradCam, gradcam
from .uploads import checkpoint_from_upload

__all__ = [
    "CACHE_SIZE",
    "OVERLAY_MIN_SIDE",
    "Classified",
    "GradCam",
    "Prediction",
    "Predictor",
    "build_predictor",
    "cached_predictor",
    "checkpoint_from_upload",
    "classify_files",
    "clear_cache",
    "get_predictor",
]

CACHE_SIZE = 4  # models kept in memory; with its inference copy a DenseNet-121 takes ~65 MB, a 161 ~230 MB
MAX_BATCH = 32  # images per forward pass; more are split, so a large upload cannot exhaust memory


@dataclass
class Prediction:
    """Top-k of one image: ``labels`` is [(class name, probability)], most probable first."""

    name: str
    labels: list[tuple[str, float]]
    latency_ms: float  # this image's decode + preprocessing, plus its share of the batch's forward pass
    backend: str = "torch"  # what answered: torch, onnxruntime or int8


class _TorchEngine:
    """The PyTorch backend: the predictor's ``InferenceDenseNet`` under ``inference_mode``."""

    name = "torch"

    def __init__(self, net: InferenceDenseNet, device: torch.device) -> None:
        self.net, self.device = net, device

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.net(batch.to(self.device)).float().cpu()


class Predictor:
    """A model ready for inference: decode -> preprocess -> forward (the backend asked for) -> top-k, and Grad-CAM.

    Args:
        model: the network; moved to ``device``, kept in eval mode, never modified afterwards (it is shared).
        class_names: one name per output.
        preprocessing: how an image becomes an input (the weights' or the checkpoint's own).
        model_key: what the model was asked for as (preset name, ``run:<id>``, folder).
        weights_label: where the weights came from, for people ("ImageNet (...)", "random init", ...).
        notice: set when the weights asked for were unavailable; says what happened and what to do.
        device: default ``gpu.device()``: CUDA when there is a GPU here now, else the CPU.
        checkpoint: the checkpoint folder the weights came from, if any (a run's graphs live there, and its
            images calibrate int8).
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
        checkpoint: Path | None = None,
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
        self._torch = _TorchEngine(self._net, self.device)
        # The first call pays for imports, PIL's decoders (~45 ms to load on the first file opened) and oneDNN
        # kernel creation: pay it here, with an encoded image, not in a user's request.
        blank = Image.new(preprocessing.mode, (preprocessing.image_size,) * 2)
        encoded = io.BytesIO()
        blank.save(encoded, "JPEG")
        self.predict_with(self._torch, [encoded.getvalue()], top_k=1)
        start = time.perf_counter()
        self._torch.logits(self.preprocess(blank)[None])
        latency_ms = (time.perf_counter() - start) * 1000.0
        self.graphs = Graphs(self.model, preprocessing, self._torch, checkpoint, self.preprocess, latency_ms, model_key)

    def __repr__(self) -> str:
        return f"Predictor({self.model_key!r}, {self.weights_label!r}, device={self.device.type})"

    def decode(self, image: ImageSource, name: str | None = None) -> Image.Image:
        """Decode an upload in the model's colour mode; JPEGs decode directly at about the size needed."""
        p = self.preprocessing
        return decode_image(image, mode=p.mode, name=name, draft_size=p.resize_size)

    def preprocess(self, image: ImageSource, name: str | None = None) -> torch.Tensor:
        """Decode + eval transform: one (C, H, W) input tensor. Raises ``ImageError``."""
        return self.preprocessing.to_tensor(self.decode(image, name))

    def engine(
        self, backend: str = "auto", how: str = "background", dataset: LabeledFiles | None = None
    ) -> tuple[Engine, str]:
        """The engine that answers ``backend`` now, and a note when another one answers (``Graphs.select``)."""
        return self.graphs.select(backend, self.device, how, dataset)

    def backend_states(self) -> list[BackendStatus]:
        """Each backend's state and measured batch-1 latency on this machine."""
        return self.graphs.states()

    def logits(self, batch: torch.Tensor, backend: str = "auto") -> torch.Tensor:
        """Raw outputs for a (N, C, H, W) batch of preprocessed inputs."""
        return self.engine(backend)[0].logits(batch)

    def classify(self, batch: torch.Tensor, top_k: int = 5, backend: str = "auto") -> list[list[tuple[str, float]]]:
        """Top-k (class name, probability) per row of a preprocessed batch."""
        return self._top(self.engine(backend)[0], batch, top_k)

    def predict_images(
        self,
        images: Sequence[ImageSource],
        top_k: int = 5,
        names: Sequence[str] | None = None,
        backend: str = "auto",
    ) -> list[Prediction | ImageError]:
        """Per image, a ``Prediction`` or the ``ImageError`` that stopped it; good images share forward passes."""
        check_backend(backend)
        self._check_top_k(top_k)
        return self.predict_with(self.engine(backend)[0], images, top_k, names)

    def predict_with(
        self, engine: Engine, images: Sequence[ImageSource], top_k: int = 5, names: Sequence[str] | None = None
    ) -> list[Prediction | ImageError]:
        """``predict_images`` answered by ``engine`` (from ``engine()``: one engine for the whole request)."""
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
            top = self._top(engine, _batch([t for _, t, _ in chunk]), top_k)
            share = (time.perf_counter() - start) / len(chunk)
            for (i, _, decode_s), labels in zip(chunk, top, strict=True):
                results[i] = Prediction(names[i], labels, (decode_s + share) * 1000.0, engine.name)
        return results  # type: ignore[return-value]  # every position is filled by now

    def predict(
        self, images: Sequence[ImageSource], top_k: int = 5, names: Sequence[str] | None = None, backend: str = "auto"
    ) -> list[Prediction]:
        """Like ``predict_images``, but raises the first ``ImageError``."""
        results = self.predict_images(images, top_k, names, backend)
        for r in results:
            if isinstance(r, ImageError):
                raise r
        return results  # type: ignore[return-value]

    def gradcam(self, image: ImageSource, class_index: int | None = None, name: str | None = None) -> GradCam:
        """Grad-CAM from the last dense block for ``class_index`` (default: PyTorch's top-1 class)."""
        return gradcam(self._net, self.preprocessing, self.class_names, self.decode(image, name), class_index)

    def _top(self, engine: Engine, batch: torch.Tensor, top_k: int) -> list[list[tuple[str, float]]]:
        k = self._check_top_k(top_k)
        probs = torch.softmax(engine.logits(batch).float(), dim=1)
        values, indices = probs.topk(k, dim=1)
        return [
            [(self.class_names[i], float(p)) for p, i in zip(row_p.tolist(), row_i.tolist(), strict=True)]
            for row_p, row_i in zip(values, indices, strict=True)
        ]

    def _check_top_k(self, top_k: int) -> int:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top-k must be a whole number of at least 1, got {top_k!r}")
        return min(top_k, len(self.class_names))


def _name_of(image: ImageSource, index: int) -> str:
    if isinstance(image, (str, os.PathLike)):
        return Path(image).name
    return getattr(image, "name", None) or f"image {index + 1}"


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
        checkpoint=spec.path if spec.kind == "checkpoint" else None,
    )


def _cache_key(spec: W.WeightsSpec) -> tuple:
    return (spec.cache_key, str(gpu.device()))  # on ZeroGPU: on the CPU here, on the GPU inside a call


def cached_predictor(model: str, weights: str | os.PathLike | None = W.DEFAULT) -> Predictor | None:
    """The predictor ``get_predictor`` would return, if it is built already; never builds one (or raises)."""
    try:
        key = _cache_key(W.resolve(model, weights))
    except (ValueError, OSError, W.CheckpointError):
        return None
    with _cache_lock:
        return _cache.get(key)


def get_predictor(model: str, weights: str | os.PathLike | None = W.DEFAULT) -> Predictor:
    """The cached predictor for ``model`` (preset, ``run:<id>`` or checkpoint folder) and ``weights``.

    ``weights``: ``"default"`` (ImageNet for the ImageNet presets, random otherwise), ``"imagenet"``,
    ``"random"`` or a ``.safetensors``/``.pth`` path; ignored for checkpoints (``weights.resolve`` says it all).
    A file changed on disk (a re-saved run, ImageNet weights placed after a failed download) gives a new predictor.
    """
    spec = W.resolve(model, weights)
    key = _cache_key(spec)
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
    for, the Grad-CAM overlay of its top class; where the model's weights came from; which backend answered, a note
    when it is not the one asked for, and every backend's state and latency. Plain data throughout."""

    results: list[Prediction | ImageError]
    overlays: list[Image.Image | None]
    weights_label: str
    notice: str | None
    backend: str = "torch"
    backend_note: str = ""
    backends: list[BackendStatus] = field(default_factory=list)


def classify_files(
    model: str,
    weights: str | os.PathLike | None,
    paths: Sequence[str],
    *,
    top_k: int,
    names: Sequence[str],
    gradcam: bool,
    backend: str = "auto",
    dataset: LabeledFiles | None = None,
) -> Classified:
    """Classify image files with the cached predictor of (``model``, ``weights``) and ``backend``; Grad-CAM (on
    PyTorch) of each image's top class when asked. ``dataset``: a run's training data, for int8's calibration."""
    check_backend(backend)
    predictor = get_predictor(model, weights)
    engine, note = predictor.engine(backend, dataset=dataset)
    results = predictor.predict_with(engine, paths, top_k=top_k, names=names)
    overlays = [
        predictor.gradcam(path, predictor.class_names.index(result.labels[0][0])).overlay
        if gradcam and isinstance(result, Prediction)
        else None
        for path, result in zip(paths, results, strict=True)
    ]
    return Classified(
        results, overlays, predictor.weights_label, predictor.notice, engine.name, note, predictor.backend_states()
    )


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


def _batch(inputs: list[torch.Tensor]) -> torch.Tensor:
    """One (N, C, H, W) batch of preprocessed CPU inputs, stacked by NumPy: ``torch.stack`` would wake torch's
    thread pool, whose spinning threads then slow an onnxruntime forward pass (``Preprocessing.to_tensor``)."""
    if len(inputs) == 1:
        return inputs[0][None]
    return torch.from_numpy(np.stack([t.numpy() for t in inputs]))
