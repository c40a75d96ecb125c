"""How fast a run's settings train on this machine, measured: a few real steps of its model, timed.

``measure(config, n_classes, files)`` builds the run's model (random weights: they time the same as pretrained
ones and need no download), places it as the run will (device, channels-last, mixed precision), makes its own
optimizer (fused AdamW or SGD) and takes ``WARMUP_STEPS`` untimed and then ``TIMED_STEPS`` timed steps at the
run's batch size and image size, with this process's threads; then a few evaluation batches. Decoding is timed
on some of the data's own files through the run's own transform, since a small model at 32 px spends as much
time decoding PNGs as computing. The median step and its spread make ``StepTiming``.

Timings are cached per device, thread count, torch version, model, mode, image size, batch size and placement:
in memory, and in a small JSON file beside the weights (``weights_dir()/cache``), so that the command line's
``train DATA`` (which asks for a suggestion, and so for timings, before it starts) times a model once per
machine. ``measure(..., fresh=True)`` measures again (the Estimate button) and updates the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import statistics
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ..data.datasets import LabeledFiles
from ..data.images import Preprocessing
from ..tracing import TRACING
from ..weights import checkpoints
from .build import build_model, make_optimizer, pick_amp_dtype, pick_device
from .config import TrainConfig
from .data import Placement, image_loader

__all__ = ["StepTiming", "measure"]

logger = logging.getLogger(__name__)

WARMUP_STEPS = 2  # the first steps allocate and pick kernels: seconds slower than the rest on a CPU
TIMED_STEPS = 5  # the median of five is steady to a few per cent on an idle machine
EVAL_BATCHES = 2
DECODED_FILES = 16  # distinct files read through the run's loader to time the data side
CACHE_VERSION = 2

_lock = threading.Lock()
_memory: dict[str, StepTiming] = {}


@dataclass(frozen=True)
class StepTiming:
    """Seconds per image of a training step (median, and the fastest and slowest timed step), of an evaluation
    pass, and of decoding one image; what a run of these settings costs per image on this machine."""

    train_s: float  # per image, median step
    train_low_s: float
    train_high_s: float
    eval_s: float  # per image, forward pass in eval mode (validation, BatchNorm recalibration, feature caching)
    decode_s: float  # per image, through the run's own loader: reading, transforming, batching
    batch_size: int
    image_size: int
    save_s: float = 0.0  # writing the model's checkpoint once (each better validation does)

    @property
    def images_per_s(self) -> float:
        """Training images a second, decoding included."""
        return 1.0 / (self.train_s + self.decode_s)


def _device_key(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            name = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), name)
    except OSError:
        pass
    return f"cpu:{name}:{os.cpu_count()}"


def _key(cfg: TrainConfig, device: torch.device, placement: Placement, image_size: int) -> str:
    parts = [_device_key(device), f"threads={torch.get_num_threads()}", f"torch={torch.__version__}"]
    model = cfg.model if isinstance(cfg.model, str) else hashlib.sha256(cfg.model.to_json().encode()).hexdigest()[:16]
    parts += [f"model={model}", f"mode={cfg.mode}", f"size={image_size}", f"batch={cfg.batch_size}"]
    parts += [f"channels_last={placement.channels_last}", f"amp={placement.amp_dtype}", f"opt={cfg.optimizer}"]
    parts += [f"memory_efficient={cfg.memory_efficient}", f"v={CACHE_VERSION}"]
    return "|".join(parts)


def _cache_file() -> Path:
    return checkpoints.weights_dir() / "cache" / "step_timings.json"


def _read_disk() -> dict[str, dict]:
    try:
        return json.loads(_cache_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _write_disk(key: str, timing: StepTiming) -> None:
    try:
        known = _read_disk()
        known[key] = asdict(timing)
        path = _cache_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        checkpoints.atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(known), encoding="utf-8"))
    except OSError as e:  # a read-only weights folder: the timing is kept in memory only
        logger.info("step timings not cached on disk (%s)", e)


def measure(
    config: TrainConfig, n_classes: int, files: LabeledFiles | None = None, *, fresh: bool = False
) -> StepTiming:
    """The per-image cost of ``config``'s steps on this machine (see the module's docstring); cached unless
    ``fresh``. ``files``: decoding is timed on some of them (none: decoding counts as free)."""
    cfg = config.resolved()
    device = pick_device(cfg.device)
    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type in ("cuda", "cpu")
    placement = Placement(device, channels_last=channels_last, amp_dtype=pick_amp_dtype(cfg.amp, device))
    model, preprocessing, _ = build_model(replace(cfg, weights="random"), [""] * n_classes)
    key = _key(cfg, device, placement, preprocessing.image_size)
    with _lock:
        if not fresh:
            known = _memory.get(key)
            if known is None and (stored := _read_disk().get(key)):
                known = _memory[key] = StepTiming(**stored)
            if known is not None:
                return known
        timing = _time_steps(cfg, model, preprocessing.in_channels, preprocessing.image_size, placement)
        decode = _decode_s(files, preprocessing, cfg, placement.device) if files is not None else 0.0
        timing = replace(timing, decode_s=decode, save_s=_save_s(model))
        _memory[key] = timing
    _write_disk(key, timing)
    logger.info("timed %s: %.3g img/s training, %.3g img/s evaluation", key, 1 / timing.train_s, 1 / timing.eval_s)
    return timing


def _time_steps(cfg: TrainConfig, model: torch.nn.Module, channels: int, size: int, placement: Placement) -> StepTiming:
    device, batch = placement.device, cfg.batch_size
    memory_format = torch.channels_last if placement.channels_last else torch.preserve_format
    model.to(device, memory_format=memory_format)
    linear = cfg.mode == "linear"
    if linear:  # the head trains on cached features: what costs is the backbone's forward pass, once per image
        model.requires_grad_(False).classifier.requires_grad_(True)
    optimizer = make_optimizer(cfg, model)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=generator)
    y = torch.randint(0, model.cfg.num_classes, (batch,), generator=generator)
    x, y = placement.to_device(x, y)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def step() -> None:
        with TRACING, placement.autocast():  # an ONNX export and a step take turns (tracing.py)
            loss = F.cross_entropy(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    def evaluate() -> None:
        with torch.inference_mode(), placement.autocast():
            model(x)

    model.train()
    train = _timed(evaluate if linear else step, sync, WARMUP_STEPS, TIMED_STEPS)
    model.eval()
    evaluation = _timed(evaluate, sync, 1, EVAL_BATCHES)
    if linear:  # a head step on cached features: next to nothing
        train = [0.01 * t for t in evaluation]
    median = statistics.median(train)
    return StepTiming(
        train_s=median / batch,
        train_low_s=min(train) / batch,
        train_high_s=max(train) / batch,
        eval_s=statistics.median(evaluation) / batch,
        decode_s=0.0,
        batch_size=batch,
        image_size=size,
    )


def _timed(work, sync, warmup: int, timed: int) -> list[float]:
    for _ in range(warmup):
        work()
    sync()
    seconds = []
    for _ in range(timed):
        began = time.perf_counter()
        work()
        sync()
        seconds.append(time.perf_counter() - began)
    return seconds


def _decode_s(files: LabeledFiles, preprocessing: Preprocessing, cfg: TrainConfig, device: torch.device) -> float:
    """Seconds per image to read, transform and batch the data's own files through the run's own loader (its
    transform, collate and workers), over two of its batches."""
    items = list(files.train)[:: max(1, len(files.train) // DECODED_FILES)][:DECODED_FILES]
    items = (items * (1 + 2 * cfg.batch_size // max(len(items), 1)))[: 2 * cfg.batch_size]
    if not items:
        return 0.0
    for _ in image_loader(items[: cfg.batch_size], preprocessing, cfg, device, train=True):
        pass  # the first pass of a process imports and allocates: untimed
    began = time.perf_counter()
    for _ in image_loader(items, preprocessing, cfg, device, train=True):
        pass
    return (time.perf_counter() - began) / len(items)


def _save_s(model: torch.nn.Module) -> float:
    """Seconds to write the model's weights as a checkpoint does (safetensors, to a temporary file)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with tempfile.TemporaryDirectory() as folder:
        save_file(state, str(Path(folder) / "warm-up.safetensors"))
        began = time.perf_counter()
        save_file(state, str(Path(folder) / "model.safetensors"))
        return time.perf_counter() - began
