"""Data-parallel training on ``torchrun``: one process per device, gradients all-reduced by PyTorch's DDP.

``torchrun --nproc-per-node N -m densenet_demo train DATA ...`` starts N copies of the command line; each
calls ``data_parallel()``, which joins the process group from torchrun's environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) over NCCL on CUDA or gloo on the CPU and
hands the ``Trainer`` a ``DataParallel``: how this process takes part in the run. What each rank does:

- every rank splits the images the same way (the split is derived from the seed, not from the rank);
- training images: a ``DistributedSampler`` gives each rank its own shuffled share of each epoch, with
  the per-device batch size, so one optimizer step sees ``batch_size * N`` images (the global batch);
- validation images: each rank evaluates a contiguous share; loss sums and confusion matrices are summed
  over the ranks, so the reported accuracy is that of the whole validation set;
- linear mode: each rank runs the frozen backbone over its share once; the pooled features are gathered,
  so that every rank trains the head on the whole cache, as one process would;
- ranks take every training step together: a one-number all-reduce per step says whether some rank ran out
  of batches or was asked to stop, so that a Stop reaching any rank stops all of them at the same step;
- rank 0 alone writes the checkpoint; a rank that fails records its message in torchrun's key-value store,
  so the others, whose next collective fails, report that message rather than a broken connection.

``launch_torchrun()`` runs such a command as a child process and yields its events (for the web app).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler, Sampler

from ..hosting import gpu
from .data import FeatureCache
from .events import (
    Caching,
    Cancelled,
    CancelToken,
    EpochEnd,
    Evaluated,
    Event,
    Failed,
    Finished,
    Preparing,
    Started,
    Step,
)

__all__ = [
    "ENV_FAKE_GPUS",
    "DataParallel",
    "data_parallel",
    "is_main_process",
    "shard_bounds",
    "gpu_count",
    "launch_torchrun",
    "event_from_dict",
]

logger = logging.getLogger(__name__)

# Test-only switch: pretend this machine has N GPUs; the launcher then runs N gloo processes on the CPU.
ENV_FAKE_GPUS = "DENSENET_DEMO_FAKE_GPUS"

_EVENT_TYPES: dict[str, type[Event]] = {
    cls.kind: cls for cls in (Preparing, Started, Caching, Step, Evaluated, EpochEnd, Finished, Cancelled, Failed)
}
_END_KINDS = ("finished", "cancelled", "failed")


def torchrun_ranks() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) from torchrun's environment; None outside torchrun or with one process."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    world_size = int(os.environ["WORLD_SIZE"])
    if world_size < 2:
        return None
    return int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """True in a single-process run and in rank 0 of a torchrun run: the process that prints and saves."""
    return os.environ.get("RANK", "0") == "0"


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous share of n items; shares differ by at most one, in rank order."""
    return rank * n // world_size, (rank + 1) * n // world_size


class _ShardSampler(Sampler[int]):
    """Rank's contiguous share of a dataset, in order, without the padding ``DistributedSampler`` adds."""

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        self.start, self.stop = shard_bounds(n, rank, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class DataParallel:
    """How this process takes part in a data-parallel run (``data_parallel()`` makes one)."""

    rank: int
    world_size: int
    local_rank: int
    backend: str  # 'nccl' (CUDA) or 'gloo' (CPU)
    sync_batchnorm: bool = False
    store: Any = field(default=None, repr=False, compare=False)  # torchrun's key-value store, for failures

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def _device(self) -> torch.device:
        """Where collectives run: NCCL needs CUDA tensors, gloo takes CPU ones."""
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")

    # -- set-up ----------------------------------------------------------------------------------

    def device_for(self, device: torch.device) -> torch.device:
        """This rank's device: its own GPU (``LOCAL_RANK``) on CUDA; the CPU stays the CPU."""
        return torch.device("cuda", self.local_rank) if device.type == "cuda" else device

    def prepare(self, model: torch.nn.Module, *, trains_backbone: bool) -> torch.nn.Module:
        """``--sync-bn``: BatchNorm statistics over the global batch (only when the backbone trains)."""
        if self.sync_batchnorm and trains_backbone:
            # Same parameter objects and state-dict keys: the checkpoint format does not change.
            return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model

    def wrap(self, module: torch.nn.Module, device: torch.device) -> DistributedDataParallel:
        """DDP around the trained part: rank 0's weights broadcast at the start, gradients averaged each step."""
        device_ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids)

    def describe_batch(self, batch_size: int, lr: float, *, sharded: bool) -> tuple[int, str]:
        """(global batch, the lr-scaling rule in words), also logged once."""
        if not sharded:
            rule = "none: every process trains the head on the whole feature cache, one batch per step"
            global_batch = batch_size
        else:
            global_batch = batch_size * self.world_size
            rule = (
                f"none: lr {lr:g} as given for the global batch of {global_batch} "
                f"({self.world_size} x {batch_size}); the linear scaling rule would use {lr * self.world_size:g}"
            )
        logger.info("%d processes (%s), global batch %d; lr: %s", self.world_size, self.backend, global_batch, rule)
        return global_batch, rule

    # -- data ------------------------------------------------------------------------------------

    def sampler(self, dataset: Any, *, shuffle: bool, seed: int) -> Sampler[int]:
        """Training: each rank's shuffled, padded share (the same order on every rank: seed + epoch).

        Validation: each rank's contiguous share, unpadded, so that summed counts cover every image once.
        """
        if shuffle:
            return DistributedSampler(dataset, num_replicas=self.world_size, rank=self.rank, shuffle=True, seed=seed)
        return _ShardSampler(len(dataset), self.rank, self.world_size)

    def samples_per_rank(self, n: int) -> int:
        """Training images per rank and epoch (``DistributedSampler`` pads the last share)."""
        return math.ceil(n / self.world_size)

    def shard(self, items: Sequence[Any]) -> list[Any]:
        start, stop = shard_bounds(len(items), self.rank, self.world_size)
        return list(items[start:stop])

    @staticmethod
    def set_epoch(source: Any, epoch: int) -> None:
        """A new shuffle each epoch for a ``DistributedSampler`` (a feature cache shuffles by itself)."""
        sampler = getattr(source, "sampler", None)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)

    # -- collectives -----------------------------------------------------------------------------

    def sum(self, *values: float) -> tuple[float, ...]:
        """Each number summed over the ranks (integers stay integers)."""
        summed = self.sum_tensor(torch.tensor(values, dtype=torch.float64))
        return tuple(int(s) if isinstance(v, int) else float(s) for v, s in zip(values, summed.tolist(), strict=True))

    def sum_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks, returned on the tensor's own device."""
        reduced = tensor.to(self._device)
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        return reduced.to(tensor.device)

    def gather_cache(self, share: FeatureCache) -> FeatureCache:
        """Every rank's share of the feature cache, concatenated in rank order (= the images' order)."""
        return FeatureCache(self._gather_rows(share.features), self._gather_rows(share.labels))

    def _gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        # all_gather wants equal shapes: pad each share to the longest, then cut the padding off again.
        sizes = torch.zeros(self.world_size, dtype=torch.long, device=self._device)
        sizes[self.rank] = len(tensor)
        dist.all_reduce(sizes)
        longest = int(sizes.max())
        padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=self._device)
        padded[: len(tensor)] = tensor.to(self._device)
        chunks = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(chunks, padded)
        return concat_trimmed(chunks, sizes.tolist()).to(tensor.device)

    def lockstep(self, batches: Iterable[Any], cancel: CancelToken) -> Iterator[Any]:
        """Batches while every rank still has one; a Stop on any rank is set on this rank's token, too.

        DDP needs the same number of backward passes on every rank: shares differ by at most one batch (when
        a whole batch failed to decode), and a rank whose share is longer drops its last batch of the epoch.
        """
        for_all = iter(batches)
        while True:
            batch = next(for_all, None)
            flags = torch.tensor([batch is None, cancel.cancelled], dtype=torch.int32, device=self._device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            ran_out, stop = bool(flags[0]), bool(flags[1])
            if stop and not cancel.cancelled:
                cancel.cancel()
            if ran_out:
                return
            yield batch

    # -- failures --------------------------------------------------------------------------------

    def explain_failure(self, failed: Failed) -> Failed:
        """The root cause: another rank's recorded failure if there is one; else record this one for the others."""
        if self.store is None:
            return failed
        for rank in range(self.world_size):
            key = _failure_key(rank)
            if rank != self.rank and self.store.check([key]):
                message = self.store.get(key).decode("utf-8", errors="replace")
                return dataclasses.replace(failed, message=f"process {rank} of {self.world_size} failed: {message}")
        self.store.set(_failure_key(self.rank), failed.message)
        logger.error("process %d of %d failed: %s", self.rank, self.world_size, failed.message)
        return failed


def _failure_key(rank: int) -> str:
    # torchrun's store outlives a restarted attempt: keep each attempt's keys apart.
    return f"densenet_demo/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/failed/{rank}"


def concat_trimmed(chunks: Sequence[torch.Tensor], sizes: Sequence[int]) -> torch.Tensor:
    """Gathered, padded shares -> one tensor: the first ``sizes[r]`` rows of each chunk, in rank order."""
    return torch.cat([chunk[:size] for chunk, size in zip(chunks, sizes, strict=True)])


@contextlib.contextmanager
def data_parallel(*, sync_batchnorm: bool = False, device: str = "auto") -> Iterator[DataParallel | None]:
    """Join torchrun's process group for the duration of the block; ``None`` outside torchrun.

    NCCL when this process gets a GPU, gloo otherwise. ``ValueError`` for ``sync_batchnorm`` without CUDA.
    """
    ranks = torchrun_ranks()
    if ranks is None:
        yield None
        return
    rank, world_size, local_rank = ranks
    cuda = device != "cpu" and torch.cuda.is_available()
    if sync_batchnorm and not cuda:
        raise ValueError("--sync-bn needs CUDA GPUs (PyTorch's SyncBatchNorm runs on NCCL); on the CPU, leave it off")
    if cuda:
        torch.cuda.set_device(local_rank)
    backend = "nccl" if cuda else "gloo"
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size)
    try:
        # A client of the store the process group met through (torchrun's own, or rank 0's): it outlives a
        # failed rank's connections, so it can carry that rank's message to the others.
        store = dist.TCPStore(
            os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timedelta(seconds=30)
        )
        yield DataParallel(rank, world_size, local_rank, backend, sync_batchnorm, store)
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# Launching a run from the app


def gpu_count() -> int:
    """GPUs a run could use: CUDA's count, or ``DENSENET_DEMO_FAKE_GPUS`` in tests."""
    fake = os.environ.get(ENV_FAKE_GPUS)
    if fake:
        return int(fake)
    if gpu.zero_gpu():  # one GPU lent per call, and CUDA must not be touched outside one: no torchrun there
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def event_from_dict(record: dict[str, Any]) -> Event | None:
    """A JSON event line's dict -> the trainer's event dataclass; None for other records (``dataset``)."""
    cls = _EVENT_TYPES.get(record.get("event", ""))
    if cls is None:
        return None
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in record.items() if k in names})


def launch_torchrun(
    train_args: Sequence[str],
    nproc: int,
    *,
    cancel: CancelToken | None = None,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    stop_grace_s: float = 60.0,
) -> Iterator[Event]:
    """Run ``python -m densenet_demo train *train_args --json`` on ``nproc`` processes; yield its events.

    The events are the trainer's own dataclasses, so the same view renders them. ``cancel`` reaching the
    iterator sends SIGINT to torchrun, which passes it to every rank: they stop together at the next step,
    rank 0 keeps the best checkpoint and reports ``Cancelled``. If the child ends without an end event, the
    iterator ends with a ``Failed`` that quotes its last error lines, or with a ``Cancelled`` when it was stopped
    before it started training. ``cwd``: the child's working folder (relative paths in ``train_args`` start
    there). With ``DENSENET_DEMO_FAKE_GPUS`` set (tests), the ranks run on the CPU over gloo.
    """
    cancel = cancel or CancelToken()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    command += ["-m", "densenet_demo", "train", *train_args, "--json"]
    child_env = {**os.environ, **(env or {})}
    package_root = str(Path(__file__).resolve().parents[2])
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, child_env.get("PYTHONPATH")) if p)
    if child_env.get(ENV_FAKE_GPUS):
        child_env["CUDA_VISIBLE_DEVICES"] = ""  # the stand-in "GPUs" are CPU processes on gloo
    logger.info("starting %s", " ".join(command))
    process = subprocess.Popen(
        command,
        env=child_env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: a signal to it reaches torchrun, not this app
    )
    lines: queue.Queue[str | None] = queue.Queue()
    errors: deque[str] = deque(maxlen=200)
    readers = [
        threading.Thread(target=_pump, args=(process.stdout, lines.put, True), daemon=True),
        threading.Thread(target=_pump, args=(process.stderr, errors.append, False), daemon=True),
    ]
    for reader in readers:
        reader.start()
    ended, started, stopped_at = False, False, None
    try:
        while True:
            if cancel.cancelled and stopped_at is None:
                stopped_at = time.monotonic()
                _signal_group(process, signal.SIGINT)
            elif stopped_at is not None and time.monotonic() - stopped_at > stop_grace_s:
                _signal_group(process, signal.SIGKILL)  # the ranks did not stop in time
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                break
            event = _parse(line)
            if event is not None:
                ended = ended or event.kind in _END_KINDS
                started = started or isinstance(event, Started)
                yield event
        code = process.wait()
        for reader in readers:
            reader.join(timeout=5)
        if not ended and cancel.cancelled and not started:  # stopped while the ranks were starting: nothing saved
            yield Cancelled(checkpoint_dir=None, epoch=0, best_val_acc=None)
        elif not ended:
            yield Failed(f"the {nproc}-process training run ended without a result (exit code {code}): {_why(errors)}")
    finally:
        if ended and process.poll() is None:  # the run reported its end: the processes are on their way out
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=stop_grace_s)
        if process.poll() is None:  # the consumer stopped listening: stop the ranks, too
            _signal_group(process, signal.SIGINT)
            try:
                process.wait(timeout=stop_grace_s)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()


def _pump(stream: Any, put: Any, mark_end: bool) -> None:
    for line in stream:
        put(line)
    if mark_end:  # tell the reader that the stream ended
        put(None)


def _parse(line: str) -> Event | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        logger.debug("not an event: %s", line.rstrip())
        return None
    return event_from_dict(record) if isinstance(record, dict) else None


def _why(stderr_lines: Sequence[str]) -> str:
    """The command line's own ``error: ...`` line if it printed one, else the last lines torchrun printed."""
    lines = [line.strip() for line in stderr_lines if line.strip()]
    ours = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    return ours[-1] if ours else " | ".join(lines[-5:])[-1500:]


def _signal_group(process: subprocess.Popen, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
