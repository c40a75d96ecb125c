"""What a training run needs to pause and go on: ``LoopState``, its fields by name.

The loop (training/loop.py) keeps its run's ``LoopState`` up to date as it goes: the epoch it is in, the steps
done, the best epoch so far, the images found broken. At a pause or at the end ``with_tensors`` adds what trains
(weights, optimizer, gradient scaler, RNG), the epoch's running sums and the clock of a time budget, as CPU
tensors and plain data, so that another process can go on with it. Two ways to go on:

- **resume** exactly where a run paused: ``Trainer.run(deadline=...)`` ends with a ``Paused`` event at a step
  boundary when its time is nearly up; ``trainer.paused_state`` then holds everything (linear mode's feature cache
  too) and ``Trainer.from_state(state, files)`` goes on from there, mid-epoch included, on the same batches. On
  ZeroGPU a run is a chain of such calls (training/runners.py).
- **continue** a finished or stopped run for more epochs: every run of one process leaves ``trainer_state.pt``
  beside its checkpoint (``keep``); ``Trainer.from_state(LoopState.load(run_dir), files, more_epochs=N)`` trains N
  epochs more, from the weights it ended with, its optimizer's moments and its best epoch kept. The run then
  counts as one of ``done + N`` epochs: the lr follows the schedule of that longer run from the epoch it goes on at.

A run under torchrun is not resumed (its ranks would each need their share of the state): it keeps no state.
The file holds plain data and tensors only (``torch.load(weights_only=True)`` reads it), laid out by ``to_dict``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Sampler

from ..weights import checkpoints
from .config import TrainConfig
from .evaluation import BestEpoch, ValidationResult
from .pacing import ClockReading, EpochSums

__all__ = ["STATE_FILE", "EpochOrder", "LoopState", "skip_batches"]

STATE_FILE = "trainer_state.pt"  # beside model.safetensors in a run's folder
STATE_VERSION = 1


@dataclass
class LoopState:
    """Where a run is and what it needs to go on. The loop updates the position as it goes; ``with_tensors``
    adds the rest at a pause or at the end."""

    # -- the run
    run_id: str
    out_dir: str
    config: TrainConfig  # resolved: every default filled in
    class_names: list[str]
    # -- where it is
    epoch: int = 1  # the epoch it is in; after an epoch's end, the one it goes on at
    step: int = 0  # steps of ``epoch`` done when it paused (0: from the epoch's start)
    steps_done: int = 0  # optimizer steps of the whole run
    epochs_without_best: int = 0  # early stopping's count
    reported: int = 0  # skipped images an EpochEnd has named already
    # -- what it found
    best: BestEpoch | None = None  # set only once its checkpoint is on disk
    skipped: list[tuple[str, str]] = field(default_factory=list)  # images found corrupt while training
    backbone_images: int = 0  # images through the backbone while caching (linear mode: each image once)
    # -- taken at a pause or at the end (``with_tensors``); empty in a new run
    sums: EpochSums = field(default_factory=EpochSums)
    clock: ClockReading = field(default_factory=ClockReading)
    weights: dict[str, torch.Tensor] | None = None
    head_only: bool = False  # linear mode kept only its head: the frozen backbone is built again
    optimizer: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    rng: dict[str, torch.Tensor] | None = None
    recent_batches: list[torch.Tensor] = field(default_factory=list)  # to recompute BatchNorm statistics from
    cache: list[list[torch.Tensor]] | None = None  # linear mode's features [train, val], each [features, labels]

    def with_tensors(
        self,
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        device: torch.device,
        sums: EpochSums,
        clock: ClockReading,
        cache: list[list[torch.Tensor]] | None = None,
        recent_batches: list[torch.Tensor] | None = None,
    ) -> LoopState:
        """A copy of this state with what the run trains with, as CPU tensors, to go on elsewhere."""
        rng = {"cpu": torch.get_rng_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        return replace(
            self,
            skipped=list(self.skipped),
            sums=sums,
            clock=clock,
            weights=_to_cpu(model.state_dict()),
            optimizer=_to_cpu(optimizer.state_dict()),
            scaler=_to_cpu(scaler.state_dict()),
            rng=rng,
            cache=_to_cpu(cache),
            recent_batches=recent_batches or [],
        )

    def load_into(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        device: torch.device,
    ) -> None:
        """Put the weights, the optimizer's and scaler's state and the RNG back (a run that goes on)."""
        model.load_state_dict(self.weights, strict=not self.head_only)
        optimizer.load_state_dict(self.optimizer)  # the schedule sets each step's lr from the progress
        scaler.load_state_dict(self.scaler)
        torch.set_rng_state(self.rng["cpu"])
        if "cuda" in self.rng and device.type == "cuda":
            torch.cuda.set_rng_state(self.rng["cuda"], device)

    def going_on(self, class_names: list[str], *, more_epochs: int = 0, device: str | None = None) -> LoopState:
        """This state, to go on with on images of ``class_names`` (the run's own: ``ValueError`` for others).

        ``more_epochs``: continue a finished or stopped run for that many epochs more (counted in epochs, also
        after a time budget; early stopping counts afresh). ``device``: where to go on (default: the run's own).
        """
        if list(class_names) != list(self.class_names):
            raise ValueError(
                f"run {self.run_id} was trained on the classes {', '.join(self.class_names)}; these images "
                f"have {', '.join(class_names)}. Continue it on the data it was trained on."
            )
        config, without_best = self.config, self.epochs_without_best
        if more_epochs:  # from the epoch it ended in (finished: the one after its last), for N epochs
            config, without_best = replace(config, epochs=self.epoch - 1 + more_epochs, time_budget_s=None), 0
        if device is not None:
            config = replace(config, device=device, amp="off" if device == "cpu" else config.amp)
        return replace(self, config=config.resolved(), epochs_without_best=without_best, skipped=list(self.skipped))

    # -- as plain data, and on disk ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain data and tensors, in the layout of ``trainer_state.pt`` (version 1)."""
        best = self.best
        position = {
            "epoch": self.epoch, "step": self.step, "steps_done": self.steps_done,
            "epoch_seconds": self.sums.seconds, "seen": self.sums.seen, "loss_sum": self.sums.loss_sum,
            "correct": self.sums.correct, "smoothed_loss": self.sums.smoothed_loss,
            "epochs_without_best": self.epochs_without_best, "reported": self.reported, **asdict(self.clock),
        }  # fmt: skip
        return {
            "version": STATE_VERSION,
            "run_id": self.run_id,
            "out_dir": self.out_dir,
            "config": self.config.to_dict(),
            "class_names": list(self.class_names),
            "model": self.weights,
            "head_only": self.head_only,
            "optimizer": self.optimizer,
            "scaler": self.scaler,
            "rng": self.rng,
            "position": position,
            "best": None if best is None else {"epoch": best.epoch, "train_acc": best.train_acc, **asdict(best.val)},
            "skipped": [list(s) for s in self.skipped],
            "backbone_images": self.backbone_images,
            "cache": self.cache,
            "recent_batches": self.recent_batches,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoopState:
        """The state ``to_dict`` laid out; ``ValueError`` for a version this one does not read."""
        if d.get("version") != STATE_VERSION:
            raise ValueError(f"a training state of version {d.get('version')!r}; this version reads {STATE_VERSION}")
        p, best = d["position"], d["best"]
        if best is not None:
            best = dict(best)
            epoch, train_acc = best.pop("epoch"), best.pop("train_acc")
            best = BestEpoch(epoch=epoch, train_acc=train_acc, val=ValidationResult(**best))
        sums = EpochSums(p["epoch_seconds"], p["seen"], p["loss_sum"], p["correct"], p["smoothed_loss"])
        return cls(
            run_id=d["run_id"],
            out_dir=d["out_dir"],
            config=TrainConfig.from_dict(d["config"]),
            class_names=list(d["class_names"]),
            epoch=p["epoch"],
            step=p["step"],
            steps_done=p["steps_done"],
            epochs_without_best=p["epochs_without_best"],
            reported=p["reported"],
            best=best,
            skipped=[(str(path), str(reason)) for path, reason in d["skipped"]],
            backbone_images=d["backbone_images"],
            sums=sums,
            clock=ClockReading(p["elapsed"], p["training_started"], p["images"], p["validation_s"]),
            weights=d["model"],
            head_only=d.get("head_only", False),
            optimizer=d["optimizer"],
            scaler=d["scaler"],
            rng=d["rng"],
            recent_batches=list(d.get("recent_batches", [])),
            cache=d["cache"],
        )

    def keep(self, run_dir: str | os.PathLike) -> None:
        """Write this state into the run's folder (whole or not at all), where ``load`` finds it.

        What can be made again stays out, since the file counts towards the runs' disk cap: linear mode's feature
        cache (a continued run computes it again) and its frozen backbone (built again from where the run
        started), so a linear run keeps only its head; the batches kept for BatchNorm statistics (only a pause
        carries them). A finetune or scratch run keeps its weights and its optimizer's state.
        """
        kept = replace(self, cache=None, recent_batches=[])
        if self.config.mode == "linear" and self.weights is not None:
            head = {k: v for k, v in self.weights.items() if k.startswith("classifier.")}
            kept = replace(kept, weights=head, head_only=True)
        state = kept.to_dict()
        checkpoints.atomic_write(Path(run_dir) / STATE_FILE, lambda tmp: torch.save(state, tmp))

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> LoopState:
        """The state a finished or stopped run left in its folder; ``FileNotFoundError`` says what to do."""
        path = Path(run_dir) / STATE_FILE
        if not Path(run_dir).is_dir():
            raise FileNotFoundError(
                f"there is no run {Path(run_dir).name}: the Predict tab's model list (run:<id>) names the runs "
                "there are."
            )
        if not path.is_file():
            raise FileNotFoundError(
                f"run {Path(run_dir).name} cannot be continued: it kept no training state (runs trained before "
                "this version, under torchrun, or stopped before their first step keep none). Start a new run "
                "instead; it can start from this run's checkpoint."
            )
        return cls.from_dict(torch.load(path, map_location="cpu", weights_only=True))


class EpochOrder(Sampler[int]):
    """The training images' order for one epoch, drawn from ``seed + epoch`` alone, and started some images in:
    a resumed run draws the order its pass had and leaves out the batches it took already."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.shuffle_seed, self.skip = n, seed, 0

    def start(self, shuffle_seed: int, skip: int) -> None:
        self.shuffle_seed, self.skip = shuffle_seed, skip

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.shuffle_seed))
        return iter(order[self.skip :].tolist())

    def __len__(self) -> int:
        return self.n - self.skip

    @staticmethod
    def for_loader(dataset: Any, shuffle: bool, seed: int) -> EpochOrder | None:
        """``image_loader``'s sampler for a run that may pause: the training images in ``EpochOrder``."""
        return EpochOrder(len(dataset), seed) if shuffle else None


def skip_batches(source: Any, batches: Iterator[Any], shuffle_seed: int, skip: int, batch_size: int) -> Iterator[Any]:
    """One training pass less its first ``skip`` batches (taken already before a pause): an ``EpochOrder`` leaves
    them out before decoding; any other order is drawn whole and they are dropped."""
    order = getattr(source, "sampler", None)
    if isinstance(order, EpochOrder):
        order.start(shuffle_seed, skip * batch_size)
        return batches
    return itertools.islice(batches, skip, None)


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value
