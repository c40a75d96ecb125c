"""What answers a prediction: PyTorch, onnxruntime (fp32) or int8, and what ``auto`` picks.

- ``torch``: the Predictor's own fast PyTorch forward (``InferenceDenseNet``). Always there; Grad-CAM uses it.
- ``onnxruntime``: the model's ONNX graph in onnxruntime, checked against PyTorch (``onnx_graph``).
- ``int8``: that graph statically quantized (``int8``), kept only if its top-1 agrees with fp32 on >= 99% of
  held-out images (``calibration``); otherwise the answer comes from fp32 and the note says why.
- ``auto`` (the default): on a CPU, onnxruntime once the checked graph exists, PyTorch until then; on a GPU,
  PyTorch. ``DENSENET_DEMO_AUTO_BACKEND=torch`` makes ``auto`` PyTorch everywhere (no export at all).

A request never waits for a graph: asking for one that is not ready starts its preparation on one background
worker (load from the disk cache, else export and check, then measure) and PyTorch answers meanwhile. The
command line, a one-shot process, may instead wait for a graph it was asked for, or take ``auto``'s from the
cache only (``how``). A graph that fails its check, or a cached file that does not load, is logged and not used.
"""

from __future__ import annotations

import logging
import os
import queue
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from ..data.datasets import LabeledFiles
from ..data.images import Preprocessing
from ..model import DenseNet
from . import calibration, graph_cache, int8, onnx_graph

__all__ = [
    "AUTO_ENV",
    "BACKENDS",
    "GRAPH_BACKENDS",
    "LABELS",
    "THREADS_ENV",
    "BackendStatus",
    "Engine",
    "GraphEngine",
    "Graphs",
    "check_backend",
    "onnxruntime_threads",
]

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnxruntime", "int8")
GRAPH_BACKENDS = ("onnxruntime", "int8")
LABELS = {"auto": "Auto", "torch": "PyTorch", "onnxruntime": "ONNX Runtime", "int8": "int8"}
AUTO_ENV = "DENSENET_DEMO_AUTO_BACKEND"
THREADS_ENV = "DENSENET_DEMO_ORT_THREADS"
LATENCY_ROUNDS = 3  # batch-1 forward passes timed (median) when a backend becomes ready
_PENDING = ("not started", "queued", "preparing")


def check_backend(backend: str) -> str:
    """``backend`` if it names one, else ``ValueError`` listing the choices."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    return backend


def onnxruntime_threads() -> int:
    """Intra-op threads of a lone forward pass: ``DENSENET_DEMO_ORT_THREADS``, else torch's (every core).

    A pass that starts while another runs gets one thread (``GraphEngine``): two threads per pass lost time to their
    synchronisation at 64 requests at once on 2 cores (docs/serving.md#threads-and-concurrency)."""
    text = os.environ.get(THREADS_ENV, "").strip()
    if text.isdigit() and int(text) > 0:
        return int(text)
    return max(1, torch.get_num_threads())


def _auto_uses_graphs(device: torch.device) -> bool:
    return device.type == "cpu" and os.environ.get(AUTO_ENV, "").strip().lower() != "torch"


class Engine(Protocol):
    name: str  # torch | onnxruntime | int8

    def logits(self, batch: torch.Tensor) -> torch.Tensor: ...


class GraphEngine:
    """A graph in onnxruntime; ``logits`` is thread-safe, so one engine serves every request.

    A forward pass with no other one running uses ``session`` (``onnxruntime_threads()`` threads: every core); one
    that starts while another runs uses a one-thread session of the same graph, which the concurrent passes share
    (each runs on its caller's thread). That session is made in the background from ``data`` the first time two
    passes overlap (about a second for DenseNet-121; the wide session answers meanwhile), so a one-shot command
    or a server that never sees two requests at once never pays for it. Without ``data``, or on one thread,
    there is only ``session``.
    """

    def __init__(self, name: str, session, data: bytes | None = None, threads: int = 1) -> None:
        self.name, self.session = name, session
        self._data = data if threads > 1 else None  # until the one-thread session is made from it
        self._narrow, self._running, self._lock = None, 0, threading.Lock()

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.detach().to("cpu", torch.float32).contiguous().numpy()
        with self._lock:
            session = self._narrow if self._running and self._narrow is not None else self.session
            if self._running and self._narrow is None and self._data is not None:
                data, self._data = self._data, None
                threading.Thread(target=self._make_narrow, args=(data,), name="ort-one-thread", daemon=True).start()
            self._running += 1
        try:
            return torch.from_numpy(session.run([onnx_graph.OUTPUT_NAME], {onnx_graph.INPUT_NAME: x})[0])
        finally:
            with self._lock:
                self._running -= 1

    def _make_narrow(self, data: bytes) -> None:
        try:
            narrow = onnx_graph.onnxruntime_session(data, 1)
        except Exception as e:  # the wide session, already checked, keeps answering every request
            logger.warning("one-thread %s session not made (%s); concurrent requests share the wide one", self.name, e)
            return
        with self._lock:
            self._narrow = narrow


@dataclass(frozen=True)
class BackendStatus:
    """One backend of one model, as people and programs see it: plain data."""

    backend: str
    state: str  # ready | preparing | not started | failed | not kept | unavailable
    latency_ms: float | None  # batch-1 forward pass on this machine, measured when it became ready
    note: str = ""


@dataclass
class _Slot:
    state: str = "not started"
    engine: Engine | None = None
    note: str = ""
    latency_ms: float | None = None
    done: threading.Event = field(default_factory=threading.Event)


class Graphs:
    """One model's onnxruntime graphs (fp32 and int8) beside its PyTorch engine, prepared one at a time.

    Args:
        model: the network (never modified; exported from a private CPU copy).
        preprocessing: the inputs' shape and normalisation (for the checks and the latency).
        torch_engine: the PyTorch engine, the fallback and the reference.
        checkpoint: the model's checkpoint folder, if any: a run's graphs live in it, its images calibrate int8.
        prepare_image: an image -> the model's input (the Predictor's decode + preprocessing).
        torch_latency_ms: PyTorch's batch-1 latency measured so far (the Predictor times it when it warms up).
        name: what the log calls the model (its preset name or ``run:<id>``).
    """

    def __init__(
        self,
        model: DenseNet,
        preprocessing: Preprocessing,
        torch_engine: Engine,
        checkpoint: Path | None,
        prepare_image: Callable[[object], torch.Tensor],
        torch_latency_ms: float | None = None,
        name: str = "the model",
    ) -> None:
        self._model, self._preprocessing, self._torch, self._name = model, preprocessing, torch_engine, name
        self._checkpoint, self._prepare_image = checkpoint, prepare_image
        self._slots = {"torch": _Slot("ready", torch_engine, latency_ms=torch_latency_ms)}
        self._slots |= {kind: _Slot() for kind in GRAPH_BACKENDS}
        self._lock = threading.Lock()
        self._place: graph_cache.GraphPlace | None = None
        self._fp32: bytes | None = None  # kept only while the fp32 graph is not on disk (int8 starts from it)
        self._dataset: LabeledFiles | None = None

    def select(
        self, backend: str, device: torch.device, how: str = "background", dataset: LabeledFiles | None = None
    ) -> tuple[Engine, str]:
        """The engine that answers ``backend`` now, and a note for people when it is not the one asked for.

        ``how``: ``background`` (prepare what is missing on the worker; never wait), ``wait`` (prepare it here
        and wait: the command line's explicit choice) or ``cached`` (take ``auto``'s graph from the disk cache
        if it is there, never export). ``dataset``: a run's training data, offered for int8's calibration.
        """
        check_backend(backend)
        if backend == "torch" or (backend == "auto" and not _auto_uses_graphs(device)):
            return self._torch, ""
        kind = "onnxruntime" if backend == "auto" else backend
        if dataset is not None:
            self._dataset = dataset
        if how == "cached":
            self._run_once(kind, cache_only=True)
        elif how == "wait":
            self._run_once(kind)
        else:
            self._start(kind)
        slot = self._slots[kind]
        if slot.state == "ready":
            return slot.engine, ""
        fp32 = self._slots["onnxruntime"]
        engine = fp32.engine if kind == "int8" and fp32.state == "ready" else self._torch
        if backend == "auto" and slot.state in _PENDING:
            return engine, ""  # auto promises the fastest ready backend, not a particular one
        return engine, _fallback_note(kind, slot, engine.name)

    def states(self) -> list[BackendStatus]:
        """Every backend's state and measured latency, for the page's Speed choice and the command line."""
        with self._lock:
            return [
                BackendStatus(name, "preparing" if s.state == "queued" else s.state, s.latency_ms, s.note)
                for name, s in self._slots.items()
            ]

    def cached(self, kind: str) -> bool:
        """Whether ``kind``'s graph (or int8's verdict) is on disk already: its preparation is a load, not an export."""
        place = self._where()
        return place.path(kind).is_file() or (kind == "int8" and place.int8_record.is_file())

    def fp32_graph(self) -> bytes | None:
        """The checked fp32 graph's bytes (from the disk cache, or memory when it could not be cached), if made."""
        return self._where().read("onnxruntime") or self._fp32

    def wait(self, kind: str, timeout: float | None = None) -> bool:
        """Block until ``kind`` has been prepared (ready or not); True when done within ``timeout``."""
        return self._slots[kind].done.wait(timeout)

    # -- preparation -----------------------------------------------------------------------------

    def _start(self, kind: str) -> None:
        with self._lock:
            slot = self._slots[kind]
            if slot.state != "not started":
                return
            slot.state = "queued"
        _submit(lambda: self._run_once(kind))

    def _run_once(self, kind: str, cache_only: bool = False) -> None:
        """Prepare ``kind`` in this thread unless it is done or under way elsewhere (then wait for it, unless
        ``cache_only``). A queued job is taken over here: int8 needs fp32 first, on the same single worker."""
        with self._lock:
            slot = self._slots[kind]
            mine = slot.state in ("not started", "queued")
            if mine:
                slot.state = "preparing"
        if not mine:
            if slot.state == "preparing" and not cache_only:
                slot.done.wait()
            return
        try:
            if kind == "onnxruntime":
                self._prepare_fp32(slot, cache_only)
            else:
                self._prepare_int8(slot)
        except (onnx_graph.ExportError, calibration.CalibrationUnavailable) as e:
            self._finish(slot, "unavailable" if isinstance(e, calibration.CalibrationUnavailable) else "failed", e)
            logger.warning("%s for %s not used, PyTorch answers: %s", kind, self._name, e)
        except Exception as e:  # anything else is a bug: keep serving with PyTorch, keep the traceback
            self._finish(slot, "failed", f"{type(e).__name__}: {e}")
            logger.exception("%s for %s failed; PyTorch answers", kind, self._name)
        finally:
            with self._lock:
                if slot.state == "preparing":  # cache only, and nothing cached: a later request may export it
                    slot.state = "not started"
                else:
                    slot.done.set()

    def _finish(self, slot: _Slot, state: str, note: object = "", engine: Engine | None = None) -> None:
        with self._lock:
            slot.state, slot.note, slot.engine = state, str(note), engine

    def _where(self) -> graph_cache.GraphPlace:
        if self._place is None:
            self._place = graph_cache.place_for(self._model, self._checkpoint)
        return self._place

    def _prepare_fp32(self, slot: _Slot, cache_only: bool) -> None:
        place = self._where()
        data = place.read("onnxruntime")
        if data is not None:
            try:
                session = onnx_graph.onnxruntime_session(data, onnxruntime_threads())
                net = onnx_graph.cpu_copy(self._model)
                onnx_graph.check_against_torch(net, session, [onnx_graph.check_batch(self._preprocessing, 1)])
            except Exception as e:  # a truncated or foreign file: make it again
                logger.warning("cached graph %s is unusable (%s); making it again", place.path("onnxruntime").name, e)
                place.remove("onnxruntime")
                data = None
        if data is None:
            if cache_only:
                return
            graph = onnx_graph.checked_graph(self._model, self._preprocessing, graph_cache.OPSET)
            data = graph.data
            session = onnx_graph.onnxruntime_session(data, onnxruntime_threads())
            if not place.write("onnxruntime", data):
                self._fp32 = data
            logger.info(
                "onnxruntime graph for %s ready: max |Δlogit| %.1e, %.1f s", self._name,
                graph.max_abs_diff, graph.seconds,
            )  # fmt: skip
        engine = GraphEngine("onnxruntime", session, data, onnxruntime_threads())
        self._measure(slot, engine)
        self._finish(slot, "ready", "", engine)

    def _prepare_int8(self, slot: _Slot) -> None:
        self._run_once("onnxruntime")
        fp32 = self._slots["onnxruntime"]
        if fp32.state != "ready":
            raise onnx_graph.ExportError(f"int8 starts from the fp32 graph, which is not available ({fp32.note})")
        place = self._where()
        record = place.read_record()
        data = place.read("int8") if record and record.get("kept") else None
        if record and not record.get("kept"):
            self._finish(slot, "not kept", record.get("reason", ""))
            return
        if data is None:
            data, record = self._quantize(place, fp32.engine)
        threads = onnxruntime_threads()
        engine = GraphEngine("int8", onnx_graph.onnxruntime_session(data, threads), data, threads)
        self._measure(slot, engine)
        if record["kept"]:
            self._finish(slot, "ready", record["description"], engine)
        else:
            self._finish(slot, "not kept", record["reason"])
            logger.warning("int8 for %s not kept: %s", self._name, record["reason"])

    def _quantize(self, place: graph_cache.GraphPlace, fp32: GraphEngine) -> tuple[bytes, dict]:
        """Calibrate, quantize, check top-1 against fp32; record the verdict on disk (and the graph if kept)."""
        if self._checkpoint is not None:
            images = calibration.for_checkpoint(self._checkpoint, self._prepare_image, self._dataset)
        else:
            images = calibration.generic(self._prepare_image)
        fp32_data = self.fp32_graph()
        if fp32_data is None:
            raise onnx_graph.ExportError("the fp32 graph is no longer available to quantize")
        data = int8.quantize(fp32_data, images.calibration)
        session = onnx_graph.onnxruntime_session(data, onnxruntime_threads())
        agreed = int8.agreement(fp32.session, session, images.held_out)
        kept = agreed.kept
        reason = "" if kept else f"top-1 agreed with fp32 on only {agreed} (needs {int8.MIN_AGREEMENT:.0%})"
        record = {"kept": kept, "reason": reason, "agreement": agreed.share, "held_out": agreed.total}
        record |= {"description": f"calibrated on {images.description}; top-1 as fp32 on {agreed}"}
        place.write_record(record)
        if kept:
            place.write("int8", data)
        logger.info("int8 for %s: %s", self._name, record["description"])
        return data, record

    def _measure(self, slot: _Slot, engine: Engine) -> None:
        """Batch-1 latency of ``engine`` and of PyTorch, timed alternately, so both see the same machine."""
        x = onnx_graph.check_batch(self._preprocessing, 1)
        engine.logits(x)
        timed: dict[str, list[float]] = {engine.name: [], "torch": []}
        for _ in range(LATENCY_ROUNDS):
            for name, run in ((engine.name, engine.logits), ("torch", self._torch.logits)):
                start = time.perf_counter()
                run(x)
                timed[name].append((time.perf_counter() - start) * 1000.0)
        with self._lock:
            slot.latency_ms = statistics.median(timed[engine.name])
            self._slots["torch"].latency_ms = statistics.median(timed["torch"])


def _fallback_note(kind: str, slot: _Slot, answered_by: str) -> str:
    by = LABELS[answered_by]
    if slot.state in _PENDING:
        return f"{LABELS[kind]} is being prepared in the background (export and check, once); {by} answered."
    return f"{LABELS[kind]} {slot.state}: {slot.note}; {by} answered."


# ---------------------------------------------------------------------------------------------
# The background worker: one graph at a time (an export takes every core for seconds), daemonic (a server that
# stops does not wait for it; a write cut short leaves only a hidden temp file, swept later).

_jobs: queue.Queue[Callable[[], None]] = queue.Queue()
_worker: threading.Thread | None = None
_worker_lock = threading.Lock()


def _submit(job: Callable[[], None]) -> None:
    global _worker
    with _worker_lock:
        if _worker is None or not _worker.is_alive():
            _worker = threading.Thread(target=_work, name="densenet-graphs", daemon=True)
            _worker.start()
    _jobs.put(job)


def _work() -> None:
    while True:
        job = _jobs.get()
        try:
            job()
        except Exception:
            logger.exception("a background graph job failed")
