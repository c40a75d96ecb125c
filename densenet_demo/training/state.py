"""A training run's state as plain data and CPU tensors, so that another process can go on with it.

The ``Trainer`` (training/loop.py) takes this mixin. Two ways to go on:

- **resume** exactly where a run paused: ``run(deadline=...)`` ends with a ``Paused`` event at a step boundary
  when its time is nearly up, ``state_dict()`` then holds everything (weights, optimizer, gradient scaler, RNG,
  where in which epoch with that epoch's running sums, the clock of a time budget, the best epoch so far, the
  images found broken, linear mode's feature cache), and ``Trainer.from_state(state, files)`` goes on from
  there, mid-epoch included, on the same batches. On ZeroGPU a run is a chain of such calls (training/runners.py).
- **continue** a finished or stopped run for more epochs: every run of one process leaves ``trainer_state.pt``
  beside its checkpoint; ``from_state(load_state(run_dir), files, more_epochs=N)`` trains N epochs more, from
  the weights it ended with, its optimizer's moments and its best epoch kept. The run then counts as one of
  ``done + N`` epochs: the lr follows the schedule of that longer run from the epoch it goes on at.

A run under torchrun is not resumed (its ranks would each need their share of the state): it keeps no state.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Sampler

from ..config import DenseNetConfig
from ..data.datasets import DatasetReport, LabeledFiles
from ..weights import checkpoints
from ..weights import resolver as W
from . import events
from .data import Batch, FeatureCache
from .evaluation import BestEpoch, ValidationResult
from .setup import TrainConfig

if TYPE_CHECKING:
    from .loop import Trainer
    from .pacing import RunClock, RunningMetrics

__all__ = ["STATE_FILE", "EpochOrder", "Position", "Resumable", "keep_state", "load_state"]

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.pt"  # beside model.safetensors in a run's folder
STATE_VERSION = 1
# A pause leaves room for the next step (and the validation after it) to run 1.5x slower than the last one.
SLOWER_STEP = 1.5


@dataclass(frozen=True)
class Position:
    """Where a run is: ``step`` steps of ``epoch`` done, and what its loop had counted by then."""

    epoch: int = 1
    step: int = 0
    steps_done: int = 0  # optimizer steps of the whole run
    epoch_seconds: float = 0.0  # time spent in ``epoch`` so far
    seen: int = 0  # the epoch's running training metrics (pacing.RunningMetrics)
    loss_sum: float = 0.0
    correct: int = 0
    smoothed_loss: float | None = None
    epochs_without_best: int = 0
    reported: int = 0  # skipped images an EpochEnd has named already
    elapsed: float = 0.0  # since the run's launch, over the calls before (the time budget's clock)
    training_started: float | None = None  # seconds after the launch when the first step began
    images: int = 0  # trained on so far (the clock's pace)
    validation_s: float | None = None  # the last validation's duration


def load_state(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The state a finished or stopped run left in its folder; ``FileNotFoundError`` says what to do."""
    path = Path(run_dir) / STATE_FILE
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(
            f"there is no run {Path(run_dir).name}: the Predict tab's model list (run:<id>) names the runs there are."
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"run {Path(run_dir).name} cannot be continued: it kept no training state (runs trained before "
            "this version, under torchrun, or stopped before their first step keep none). Start a new run instead; "
            "it can start from this run's checkpoint."
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def keep_state(run_dir: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` into the run's folder (whole or not at all), where ``load_state`` finds it.

    What can be made again stays out, since the file counts towards the runs' disk cap: linear mode's feature
    cache (a continued run computes it again) and its frozen backbone (built again from where the run started),
    so a linear run keeps only its head. A finetune or scratch run keeps its weights and its optimizer's state.
    """
    if state["config"]["mode"] == "linear":
        head = {k: v for k, v in state["model"].items() if k.startswith("classifier.")}
        state = {**state, "model": head, "head_only": True}
    state = {**state, "cache": None}
    checkpoints.atomic_write(Path(run_dir) / STATE_FILE, lambda tmp: torch.save(state, tmp))


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


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


class Resumable:
    """What ``Trainer`` needs to hand its state over, take it back and keep it when it ends (a mixin)."""

    def _init_resumable(self: Trainer) -> None:
        self._at = Position()  # a new run starts at epoch 1
        self._deadline: float | None = None  # run(deadline=...): pause at the first step boundary after it
        self._carried: dict[str, Any] | None = None  # the state a resumed trainer goes on from
        self._carried_cache: list[FeatureCache] = []  # linear mode's features, brought along (train, val)
        self._parts: tuple[Any, ...] = ()  # model, optimizer, scaler, clock, metrics, sources, steps per epoch...
        self._state: dict[str, Any] | None = None  # taken at the pause
        self._steps_at_start = 0
        self._last_check: tuple[int, int, float] | None = None  # (epoch, step, time) of the last pause check
        self._step_s: float | None = None  # the last step's duration

    # -- in the loop (training/loop.py) -------------------------------------------------------------------

    def _order_sampler(self: Trainer) -> Any:
        """For ``image_loader``: a run that may pause shuffles by ``EpochOrder``; others as always (None)."""
        if self._deadline is None and self._carried is None:
            return None
        return lambda dataset, shuffle, seed: EpochOrder(len(dataset), seed) if shuffle else None

    def _resume(
        self: Trainer,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        clock: RunClock,
        metrics: RunningMetrics,
        sources: tuple[Any, Any],
        steps_per_epoch: int,
        mid_step: int | None,
    ) -> None:
        """Keep what a pause hands over; a resumed run loads its weights, optimizer, scaler, RNG and clock."""
        self._parts = (model, optimizer, scaler, clock, metrics, sources, steps_per_epoch, mid_step)
        state, at = self._carried, self._at
        if self.data_parallel is not None and (state is not None or self._deadline is not None):
            raise ValueError("a run pauses and goes on in one process only; run it without torchrun")
        if state is None:
            return
        model.load_state_dict(state["model"], strict=not state.get("head_only", False))
        optimizer.load_state_dict(state["optimizer"])  # the schedule sets each step's lr from the progress
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["cpu"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        clock.launched -= at.elapsed  # a time budget counts the calls before this one, not the gaps between
        clock.train_start = None if at.training_started is None else clock.launched + at.training_started
        clock.images, clock.validation_s = at.images, at.validation_s
        self._steps_done = self._steps_at_start = at.steps_done
        self._recent.load(state.get("recent_batches", []), self.device)

    def _resume_epoch(self: Trainer, epoch: int, metrics: RunningMetrics) -> tuple[int, float]:
        """(steps of ``epoch`` done before, seconds spent in it): a resumed epoch's running sums come back."""
        at, device = self._at, metrics.loss_sum.device
        if epoch != at.epoch:
            return 0, 0.0
        if at.smoothed_loss is not None:  # the smoothed loss carries on across epochs
            metrics.smoothed = torch.tensor(at.smoothed_loss, device=device)
        if at.step == 0:
            return 0, 0.0
        metrics.seen = at.seen
        metrics.loss_sum = torch.tensor(at.loss_sum, dtype=metrics.loss_sum.dtype, device=device)
        metrics.correct = torch.tensor(at.correct, dtype=metrics.correct.dtype, device=device)
        return at.step, at.epoch_seconds

    def _epoch_batches(
        self: Trainer, source: FeatureCache | DataLoader, shuffle_seed: int, skip: int
    ) -> Iterator[Batch]:
        """One training pass in the order of ``shuffle_seed``, less its first ``skip`` batches (taken already)."""
        order = getattr(source, "sampler", None)
        if isinstance(order, EpochOrder):
            order.start(shuffle_seed, skip * self.config.batch_size)
            return self._batches(source, shuffle_seed=shuffle_seed)
        return itertools.islice(self._batches(source, shuffle_seed=shuffle_seed), skip, None)

    def _time_is_up(self: Trainer, epoch: int, step: int) -> bool:
        """Before step ``step``: pause here if that step (and a validation after it) may not end by the deadline.
        A call always takes at least one step, so that a chain of calls gets on."""
        if self._deadline is None:
            return False
        now, last = time.monotonic(), self._last_check
        self._last_check = (epoch, step, now)
        if last is not None and last[:2] == (epoch, step - 1):
            self._step_s = now - last[2]
        if self._step_s is None or self._steps_done == self._steps_at_start:
            return False
        _, _, _, clock, _, _, steps_per_epoch, mid_step = self._parts
        ahead = self._step_s
        if step == steps_per_epoch or (epoch == 1 and step == mid_step):  # a validation follows this step
            batches = -(-len(self.val_items) // self.config.batch_size)
            ahead += clock.validation_s if clock.validation_s is not None else self._step_s * batches / 3
        return now + SLOWER_STEP * ahead >= self._deadline

    def _paused(
        self: Trainer, epoch: int, step: int, epoch_start: float, without_best: int, reported: int
    ) -> events.Paused:
        """The ``Paused`` event after ``step`` steps of ``epoch``; ``state_dict()`` holds where the run is."""
        metrics = self._parts[4]
        smoothed = None if metrics.smoothed is None else float(metrics.smoothed)
        sums = {"seen": metrics.seen, "loss_sum": float(metrics.loss_sum), "correct": int(metrics.correct)}
        at = Position(epoch, step, epoch_seconds=time.monotonic() - epoch_start, smoothed_loss=smoothed, **sums)
        self._state = self._state_at(replace(at, epochs_without_best=without_best, reported=reported))
        self._state["recent_batches"] = self._recent.state()  # only across a pause: a kept run's state stays small
        logger.info(
            "training run %s paused after step %d of epoch %d, to go on in another call", self.run_id, step, epoch
        )
        return events.Paused(epoch=epoch, step=step)

    # -- handing over -------------------------------------------------------------------------------

    def state_dict(self: Trainer) -> dict[str, Any]:
        """Where the run paused, as plain data and CPU tensors (after a ``Paused`` event)."""
        if self._state is None:
            raise RuntimeError("a trainer has a state to hand over once it has paused (run(deadline=...))")
        return self._state

    def _state_at(self: Trainer, at: Position) -> dict[str, Any]:
        model, optimizer, scaler, clock, _, (train_source, val_source), _, _ = self._parts
        now = time.monotonic()
        started = None if clock.train_start is None else clock.train_start - clock.launched
        at = replace(at, steps_done=self._steps_done, elapsed=now - clock.launched, training_started=started)
        at = replace(at, images=clock.images, validation_s=clock.validation_s)
        rng = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        cache = None
        if isinstance(train_source, FeatureCache):
            cache = [_to_cpu([part.features, part.labels]) for part in (train_source, val_source)]
        best = self._best
        return {
            "version": STATE_VERSION,
            "run_id": self.run_id,
            "out_dir": str(self.out_dir),
            "config": self.config.to_dict(),
            "class_names": list(self.class_names),
            "model": _to_cpu(model.state_dict()),
            "optimizer": _to_cpu(optimizer.state_dict()),
            "scaler": _to_cpu(scaler.state_dict()),
            "rng": rng,
            "position": asdict(at),
            "best": None if best is None else {"epoch": best.epoch, "train_acc": best.train_acc, **asdict(best.val)},
            "skipped": [list(s) for s in self.skipped],
            "backbone_images": self.backbone_images,
            "cache": cache,
        }

    def _keep_state(self: Trainer, next_epoch: int) -> None:
        """At a run's end: write its state beside the checkpoint, so that it can be continued for more epochs
        from ``next_epoch`` on. Nothing for a run that took no step or ran under torchrun."""
        if not self._parts or self._steps_done == 0 or self.data_parallel is not None:
            return
        state = self._state_at(Position(next_epoch, reported=len(self.skipped)))
        try:
            keep_state(self.out_dir, state)
        except OSError as e:  # the checkpoint is what matters; without the state the run just cannot go on
            logger.warning("run %s: its training state was not saved (%s); it cannot be continued", self.run_id, e)

    # -- taking back --------------------------------------------------------------------------------

    @classmethod
    def from_state(
        cls,
        state: dict[str, Any],
        files: LabeledFiles,
        *,
        report: DatasetReport | None = None,
        more_epochs: int = 0,
        device: str | None = None,
    ) -> Trainer:
        """A trainer that goes on from ``state`` on the same images (``files``: the same split follows).

        ``more_epochs``: continue a finished or stopped run for that many epochs more (counted in epochs, also
        after a time budget). ``device``: where to go on (default: the run's own setting).
        """
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                f"a training state of version {state.get('version')!r}; this version reads {STATE_VERSION}"
            )
        if list(files.class_names) != list(state["class_names"]):
            raise ValueError(
                f"run {state['run_id']} was trained on the classes {', '.join(state['class_names'])}; these images "
                f"have {', '.join(files.class_names)}. Continue it on the data it was trained on."
            )
        raw = dict(state["config"])
        if isinstance(raw["model"], dict):
            raw["model"] = DenseNetConfig.from_dict(raw["model"])
        config, at = TrainConfig(**raw), Position(**state["position"])
        if more_epochs:  # from the epoch it ended in (finished: the one after its last), for N epochs
            config = replace(config, epochs=at.epoch - 1 + more_epochs, time_budget_s=None)
            at = replace(at, epochs_without_best=0)  # early stopping counts afresh
        if device is not None:
            config = replace(config, device=device, amp="off" if device == "cpu" else config.amp)
        trainer = cls(config, files, report=report, out_dir=state["out_dir"], run_id=state["run_id"])
        trainer._carried, trainer._at = state, at
        trainer.skipped = [(str(path), str(reason)) for path, reason in state["skipped"]]
        trainer.backbone_images = state["backbone_images"]
        if state["cache"] is not None:
            trainer._carried_cache = [
                FeatureCache(features.to(trainer.device), labels.to(trainer.device))
                for features, labels in state["cache"]
            ]
        if state["best"] is not None:
            best = dict(state["best"])
            epoch, train_acc = best.pop("epoch"), best.pop("train_acc")
            trainer._best = BestEpoch(epoch=epoch, train_acc=train_acc, val=ValidationResult(**best))
        return trainer

    # -- the end of a stopped run -------------------------------------------------------------------

    def _cancelled(self: Trainer) -> events.Cancelled | events.Failed:
        """Keep the best epoch; before any epoch has ended, keep the weights trained so far. Either way the
        state stays too, so that the run can be continued."""
        best = self._best
        if best is not None:
            cancelled = events.Cancelled(
                checkpoint_dir=str(self.out_dir),
                epoch=self._epoch,
                best_val_acc=best.val.acc,
                confusion_matrix=best.val.confusion,
                class_names=list(self.class_names),
                per_class_val_acc=best.val.per_class,
            )
        elif self._steps_done > 0:
            try:
                self._save({"epoch": self._epoch, "cancelled_mid_epoch": True, "steps": self._steps_done})
            except W.CheckpointError as e:
                return self._failed(f"stopped, but {e}")
            self.model.eval()
            cancelled = events.Cancelled(checkpoint_dir=str(self.out_dir), epoch=self._epoch, best_val_acc=None)
        else:
            cancelled = events.Cancelled(checkpoint_dir=None, epoch=self._epoch, best_val_acc=None)
        if cancelled.checkpoint_dir:
            self._keep_state(next_epoch=self._epoch)  # the epoch it stopped in starts again
        logger.info("training run %s stopped in epoch %d; kept: %s", self.run_id, self._epoch, cancelled.checkpoint_dir)
        return cancelled
