"""How the processes of a run share it: ``Alone`` (one process) or ``DataParallel`` (one of N torchrun processes,
gradients all-reduced by PyTorch's DDP). The ``Trainer`` (training/loop.py) takes either as its ``parallel``
strategy and calls the same hooks; ``Alone``'s do nothing.

``torchrun --nproc-per-node N -m densenet_demo train DATA ...`` (or the app's child, training/torchrun.py) starts N
processes; each calls ``data_parallel()``, which joins the process group from torchrun's environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) over NCCL on CUDA or gloo on the CPU and hands
the ``Trainer`` a ``DataParallel``: how this process takes part in the run. What each rank does:

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
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler, Sampler

from ..data.datasets import DatasetError
from ..hosting import gpu
from .cancel import Stop, check_stop
from .config import TrainConfig
from .data import FeatureCache
from .events import CancelToken, Failed

__all__ = [
    "ENV_FAKE_GPUS",
    "Alone",
    "DataParallel",
    "Parallel",
    "data_parallel",
    "gpu_count",
    "is_main_process",
    "shard_bounds",
]

logger = logging.getLogger(__name__)

# Test-only switch: pretend this machine has N GPUs; the launcher then runs N gloo processes on the CPU.
ENV_FAKE_GPUS = "DENSENET_DEMO_FAKE_GPUS"


def gpu_count() -> int:
    """GPUs a run could use: CUDA's count, or ``DENSENET_DEMO_FAKE_GPUS`` in tests."""
    fake = os.environ.get(ENV_FAKE_GPUS)
    if fake:
        return int(fake)
    if gpu.zero_gpu():  # one GPU lent per call, and CUDA must not be touched outside one: no torchrun there
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


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


class Alone:
    """A run of one process: it trains on every image, saves, pauses and stops wherever it is; every hook is a
    no-op."""

    world_size = 1
    is_main = True
    stops_anywhere = True  # Stop acts at once: inside a step, while caching, while validating

    def check(self, config: TrainConfig, n_val: int) -> None:
        """Nothing to refuse alone."""

    def device_for(self, device: torch.device) -> torch.device:
        return device

    def prepare(self, model: torch.nn.Module, *, trains_backbone: bool) -> torch.nn.Module:
        return model

    def wrap(self, module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        return module

    def describe_batch(self, batch_size: int, lr: float, *, sharded: bool) -> tuple[int, str]:
        return batch_size, "none: one process"

    def samples_per_rank(self, n: int) -> int:
        return n

    def shard(self, items: Sequence[Any]) -> list[Any]:
        return list(items)

    def gather_cache(self, share: FeatureCache) -> FeatureCache:
        return share

    def epoch_batches(self, batches: Iterable[Any], source: Any, epoch: int, cancel: CancelToken) -> Iterator[Any]:
        """The epoch's batches; ``Stop`` before the next one once ``cancel`` is set."""
        for batch in batches:
            check_stop(cancel)
            yield batch

    def sum(self, *values: float) -> tuple[float, ...]:
        return values

    def sum_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def explain_failure(self, failed: Failed) -> Failed:
        return failed


@dataclass(frozen=True)
class DataParallel:
    """How this process takes part in a data-parallel run (``data_parallel()`` makes one)."""

    rank: int
    world_size: int
    local_rank: int
    backend: str  # 'nccl' (CUDA) or 'gloo' (CPU)
    sync_batchnorm: bool = False
    store: Any = field(default=None, repr=False, compare=False)  # torchrun's key-value store, for failures

    stops_anywhere = False  # the ranks stop together, at a training step (``lockstep``)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def _device(self) -> torch.device:
        """Where collectives run: NCCL needs CUDA tensors, gloo takes CPU ones."""
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")

    # -- set-up ----------------------------------------------------------------------------------

    def check(self, config: TrainConfig, n_val: int) -> None:
        """``ValueError`` for what a run of several processes cannot do; ``DatasetError`` when some process would
        have no validation image."""
        if config.time_budget_s is not None:  # each rank's clock would stop it at another step
            raise ValueError("a time budget is not supported on several GPUs (torchrun) yet: clear it and give epochs")
        if n_val < self.world_size:
            raise DatasetError(
                f"{n_val} validation images for {self.world_size} processes: give every process at least one "
                "(more images, or fewer processes)"
            )

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

    def epoch_batches(self, batches: Iterable[Any], source: Any, epoch: int, cancel: CancelToken) -> Iterator[Any]:
        """An epoch's training batches: a new shuffle of each share, and every rank takes the same steps."""
        self.set_epoch(source, epoch)
        return self.lockstep(batches, cancel)

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
        """Batches while every rank still has one; ``Stop`` on every rank at the same step once any rank's token is
        set. Only the ranks' agreement stops a rank: a token set by a signal after the agreement waits for the next
        one (a rank that stopped on its own token alone would leave the others waiting in the step's collectives).

        DDP needs the same number of backward passes on every rank: shares differ by at most one batch (when
        a whole batch failed to decode), and a rank whose share is longer drops its last batch of the epoch.
        """
        for_all = iter(batches)
        while True:
            batch = next(for_all, None)
            flags = torch.tensor([batch is None, cancel.cancelled], dtype=torch.int32, device=self._device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            ran_out, stop = bool(flags[0]), bool(flags[1])
            if stop:
                cancel.cancel()  # the rest of the run sees it too
                raise Stop
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


Parallel = Alone | DataParallel
