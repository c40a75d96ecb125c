"""Where the onnxruntime backend keeps its checked graphs on disk, and the caps that bound them.

A graph is named by what it depends on: the weights' content (a SHA-256 over the architecture and every tensor of
the state dict, so a re-saved run or another weights file gets another graph), how the project makes graphs
(``GRAPH_REVISION``: a faster way of writing the same model replaces the older graphs instead of being skipped
for them), the ONNX opset and the onnxruntime version (a newer runtime may optimise or quantize differently, so
its graphs are made afresh)::

    <sha256[:20]>-g2-opset20-ort1.32.0.onnx         the fp32 graph, checked against PyTorch
    <sha256[:20]>-g2-opset20-ort1.32.0-int8.onnx    the static int8 graph, kept only if it agreed with fp32
    <sha256[:20]>-g2-opset20-ort1.32.0-int8.json    how the int8 graph was calibrated and checked (or why not kept)

A fine-tuned run's graphs live in its own folder (``runs/<id>/onnx/``): they go when the run goes, and they count
toward the runs' disk cap (``DENSENET_DEMO_RUNS_MAX_MB``); a graph that would push the runs folder over that cap is
not written (the process keeps it in memory), so a graph never costs anyone a run. Every other model's graphs
(presets, weights files, uploaded checkpoints) share ``<weights>/onnx/``, capped by ``DENSENET_DEMO_ONNX_CACHE_MB``
(default 1024; 0 = no cap): over it, the least recently used graphs go first. Files are written atomically, so a
reader never sees half a graph, and a graph in use is already in memory when another process removes its file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..hosting import runs
from ..model import DenseNet
from ..weights import checkpoints

__all__ = [
    "CACHE_MAX_MB_ENV",
    "DEFAULT_CACHE_MAX_MB",
    "GRAPHS_FOLDER",
    "GRAPH_REVISION",
    "OPSET",
    "GraphPlace",
    "cache_max_mb",
    "place_for",
    "weights_digest",
]

logger = logging.getLogger(__name__)

# 2: transitions pool before their 1x1 convolution (onnx_graph.pool_first); graphs made before are remade.
GRAPH_REVISION = 2
OPSET = 20  # the served graphs' opset: torch 2.14's exporter default, and part of each graph's name
GRAPHS_FOLDER = "onnx"
CACHE_MAX_MB_ENV = "DENSENET_DEMO_ONNX_CACHE_MB"
# Every ImageNet preset's fp32 and int8 graphs together take about 380 MB; the rest is room for uploads' graphs.
DEFAULT_CACHE_MAX_MB = 1024.0
PARTIAL_MAX_AGE_S = 3600  # a hidden temp file older than this is a write that a kill cut short
KINDS = {"onnxruntime": "", "int8": "-int8"}


def weights_digest(model: DenseNet) -> str:
    """SHA-256 over the architecture and every tensor of ``model``'s state dict (names, dtypes, shapes, bytes)."""
    digest = hashlib.sha256(json.dumps(model.cfg.replace(memory_efficient=False).to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy())
    return digest.hexdigest()


def cache_max_mb() -> float:
    """The shared graph cache's cap in MB (``DENSENET_DEMO_ONNX_CACHE_MB``); 0: no cap."""
    text = os.environ.get(CACHE_MAX_MB_ENV, "").strip()
    if not text:
        return DEFAULT_CACHE_MAX_MB
    try:
        return max(float(text), 0.0)
    except ValueError:
        logger.warning("%s=%r is not a number; using %s", CACHE_MAX_MB_ENV, text, DEFAULT_CACHE_MAX_MB)
        return DEFAULT_CACHE_MAX_MB


@dataclass(frozen=True)
class GraphPlace:
    """Where one model's graphs are (or would be) on disk."""

    folder: Path
    stem: str  # <sha256[:20]>-g<revision>-opset<N>-ort<version>
    run_id: str | None  # set for a run of the runs folder: its graphs live in the run and count toward its caps

    def path(self, kind: str) -> Path:
        """The graph file of ``kind`` (``onnxruntime``: fp32, or ``int8``)."""
        return self.folder / f"{self.stem}{KINDS[kind]}.onnx"

    @property
    def int8_record(self) -> Path:
        return self.folder / f"{self.stem}-int8.json"

    def read(self, kind: str) -> bytes | None:
        """The cached graph's bytes, or None; a hit counts as a use (the cap removes the least recently used)."""
        path = self.path(kind)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        try:
            os.utime(path)
        except OSError:
            pass  # a read-only cache still serves; it just cannot order its uses
        return data

    def read_record(self) -> dict[str, Any] | None:
        """The int8 record (calibration, agreement, kept or not and why), or None when there is none."""
        try:
            record = json.loads(self.int8_record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def write(self, kind: str, data: bytes) -> bool:
        """Store a graph under the caps; False (logged) when it was not written. Never raises for disk trouble."""
        return self._store(self.path(kind), data)

    def write_record(self, record: dict[str, Any]) -> bool:
        return self._store(self.int8_record, (json.dumps(record, indent=2) + "\n").encode())

    def remove(self, kind: str) -> None:
        """Forget a graph that turned out broken, so the next process makes it afresh."""
        try:
            self.path(kind).unlink(missing_ok=True)
        except OSError as e:
            logger.warning("could not remove the broken graph %s: %s", self.path(kind).name, e)

    def _store(self, path: Path, data: bytes) -> bool:
        try:
            with runs.in_use(self.run_id) if self.run_id else nullcontext():
                if not self._room_for(len(data), path):
                    return False
                checkpoints.atomic_write(path, lambda tmp: tmp.write_bytes(data))
        except OSError as e:
            logger.info("graph %s not cached on disk (%s); it serves from memory in this process", path.name, e)
            return False
        if self.run_id:
            _remove_stale(self.folder, self.stem)  # graphs of the run's earlier weights
        return True

    def _room_for(self, size: int, path: Path) -> bool:
        """Make the folder (never a run's folder itself), then check or make room under the cap in force."""
        if self.run_id:
            self.folder.mkdir(exist_ok=True)  # no parents: a run deleted meanwhile stays deleted (OSError)
            cap = runs.settings().max_mb * 2**20
            used = _folder_bytes(checkpoints.runs_dir())
            if cap and used + size > cap:
                logger.info(
                    "graph %s not cached: the runs folder would exceed its cap (%.0f of %.0f MB); it serves from "
                    "memory in this process", path.name, (used + size) / 2**20, cap / 2**20,
                )  # fmt: skip
                return False
            return True
        self.folder.mkdir(parents=True, exist_ok=True)
        _sweep_partial(self.folder)
        cap = cache_max_mb() * 2**20
        if cap and size > cap:
            logger.info("graph %s not cached: %.0f MB is more than the cache's cap", path.name, size / 2**20)
            return False
        if cap:
            _make_room(self.folder, cap - size, keep=path)
        return True


def place_for(model: DenseNet, checkpoint: Path | None) -> GraphPlace:
    """Where ``model``'s graphs go: in its run's folder for a run of the runs folder, else the shared cache."""
    import onnxruntime

    stem = f"{weights_digest(model)[:20]}-g{GRAPH_REVISION}-opset{OPSET}-ort{onnxruntime.__version__}"
    if checkpoint is not None and checkpoint.parent == checkpoints.runs_dir().resolve():
        return GraphPlace(checkpoint / GRAPHS_FOLDER, stem, checkpoint.name)
    return GraphPlace(checkpoints.weights_dir() / GRAPHS_FOLDER, stem, None)


def _graph_files(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.suffix in (".onnx", ".json") and p.is_file() and not p.is_symlink()]
    except OSError:
        return []


def _make_room(folder: Path, budget: int, keep: Path) -> None:
    """Remove the least recently used graphs until the folder holds at most ``budget`` bytes (``keep`` stays)."""
    files = sorted(_graph_files(folder), key=_mtime)
    total = sum(_size(p) for p in files)
    for path in files:
        if total <= budget:
            break
        if path == keep:
            continue
        size = _size(path)
        try:
            path.unlink()
        except OSError:
            continue
        total -= size
        logger.info("graph cache over its cap: removed %s (%.1f MB, least recently used)", path.name, size / 2**20)


def _remove_stale(folder: Path, stem: str) -> None:
    for path in _graph_files(folder):
        if not path.name.startswith(stem):
            path.unlink(missing_ok=True)


def _sweep_partial(folder: Path) -> None:
    cutoff = time.time() - PARTIAL_MAX_AGE_S
    for tmp in folder.glob(".*.tmp"):
        if tmp.is_file() and _mtime(tmp) < cutoff:
            tmp.unlink(missing_ok=True)


def _folder_bytes(root: Path) -> int:
    total = 0
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            total += _size(path)
    return total


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
