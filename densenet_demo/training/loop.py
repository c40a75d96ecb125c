"""Trainer: fine-tune or train a DenseNet on labelled image files, reporting through events.

``Trainer(config, files).run(cancel)`` yields ``Preparing`` (model build), ``Started``, then (linear mode)
``Caching``, ``Preparing`` (first batch), then ``Step`` ... ``Validating``, ``EpochEnd`` per epoch (a short run
also validates at half an epoch: ``Evaluated``), and ends with exactly one of ``Finished``, ``Cancelled`` or
``Failed``. Nothing here prints: the UI, the CLI and the tests consume the events (training/events.py). A run
logs its start and its end at INFO, and a failure at ERROR with its traceback, for the server's log.

Modes: ``linear``: frozen backbone, each image's pooled features computed once (no augmentation), the new head
trained on that cache (seconds on a CPU); ``finetune``: every layer, the backbone at ``lr * backbone_lr_factor``;
``scratch``: random init, every layer at ``lr``.

What varies is passed in: the recipe (training/config.py) fills in what the config leaves open; training/pacing.py
turns epochs or a time budget into the lr at each step and says when the time is up; a ``parallel`` strategy
(training/distributed.py: ``Alone``, or one torchrun process of several) shares the work; a ``LoopState``
(training/state.py) says where the run is, so that it can pause and go on elsewhere.

The best validation (by accuracy) is saved atomically to ``weights/runs/<run-id>/`` and reloaded at the end.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..data.datasets import DatasetError, DatasetReport, LabeledFiles
from ..data.images import Preprocessing
from ..model import DenseNet
from ..tracing import TRACING
from ..weights import resolver as W
from . import events
from .build import RunParts, build_parts, pick_amp_dtype, pick_device
from .cancel import Stop
from .config import TrainConfig
from .data import FeatureCache, Placement, cache_features, image_loader, iterate_batches
from .distributed import Alone, Parallel
from .evaluation import BestEpoch, ValidationResult, oom_advice, validate
from .events import CancelToken, Event
from .pacing import CallDeadline, EpochSums
from .record import RunRecord
from .state import EpochOrder, LoopState, skip_batches

__all__ = ["Trainer"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _EpochSteps:
    """How an epoch's steps ended: ``"done"`` (its last batch), ``"paused"`` or ``"out_of_time"``."""

    ended: str
    started: float  # time.monotonic() at the epoch's start (a resumed epoch: less the time spent before)
    validated_at: int  # images trained on when it last validated (its half-epoch validation), else 0
    steps: int = 0  # of the epoch taken by its end (a resumed epoch: those before included)


class Trainer:
    """One training run: ``Trainer(config, files).run(cancel)`` -> events. A trainer runs once.

    Args:
        config: the run's settings (``TrainConfig``).
        files: labelled images (``data.load_image_folder`` and friends); split by ``config.val_fraction``
            unless they bring their own val split.
        report: the dataset report, recorded in the checkpoint.
        out_dir: where the checkpoint goes; default ``weights.run_path(run_id, runs_root)``.
        run_id: the run's name; default ``weights.new_run_id(model name)``.
        parallel: this process's part in the run (``distributed.data_parallel()``); default ``Alone()``.
        state: where the run goes on from (``from_state`` makes it); default: a new run at epoch 1.

    Raises ``DatasetError`` (too few images to validate on) and ``ValueError`` (no such device) at once;
    everything that goes wrong later becomes a ``Failed`` event.
    """

    def __init__(
        self,
        config: TrainConfig,
        files: LabeledFiles,
        *,
        report: DatasetReport | None = None,
        out_dir: str | os.PathLike | None = None,
        run_id: str | None = None,
        runs_root: str | os.PathLike | None = None,
        parallel: Parallel | None = None,
        state: LoopState | None = None,
    ) -> None:
        self.config = config.resolved()
        self.class_names = list(files.class_names)
        if len(self.class_names) < 2:
            raise DatasetError(f"training needs at least 2 classes, got {len(self.class_names)}")
        self.train_items, self.val_items = files.split(self.config.val_fraction, self.config.seed)
        if not self.val_items or not self.train_items:
            raise DatasetError("too few images to train and validate: give every class at least 2 images")
        self.run_id = run_id or W.new_run_id(self.config.model_name)
        self.out_dir = Path(out_dir) if out_dir else W.run_path(self.run_id, Path(runs_root) if runs_root else None)
        self.parallel = parallel or Alone()
        self.parallel.check(self.config, len(self.val_items))
        if self.parallel.world_size > 1 and state is not None:
            raise ValueError("a run pauses and goes on in one process only; run it without torchrun")
        self.device = self.parallel.device_for(pick_device(self.config.device))
        channels_last = self.config.channels_last
        self.placement = Placement(
            self.device,
            channels_last=channels_last if channels_last is not None else self.device.type in ("cuda", "cpu"),
            amp_dtype=pick_amp_dtype(self.config.amp, self.device),
        )
        self.model: DenseNet | None = None  # after the run: the best epoch's weights, in eval mode
        self.preprocessing: Preprocessing | None = None
        self.goes_on = state is not None  # from a pause or a kept state: its tensors are loaded at the start
        self.state = state or LoopState(self.run_id, str(self.out_dir), self.config, self.class_names)
        self.paused_state: LoopState | None = None  # after a Paused event: what another call goes on from
        self.record = RunRecord(
            self.run_id, self.out_dir, self.config, self.class_names, report, len(self.train_items),
            len(self.val_items), writes=self.parallel.is_main, keeps_state=self.parallel.world_size == 1,
            split=(tuple(self.train_items), tuple(self.val_items)),
        )  # fmt: skip
        self._parts: RunParts | None = None  # what the run trains with, once it has started
        self._cancel_hooks: list[Any] = []  # Stop acts inside a step too (training/cancel.py); removed at the end
        self._anywhere = CancelToken()  # what caching and validation stop on (several processes: only together)
        self._ran = False

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """Images found corrupt while training: (path, reason)."""
        return self.state.skipped

    @property
    def backbone_images(self) -> int:
        """Images through the backbone while caching (linear mode: each image once)."""
        return self.state.backbone_images

    @classmethod
    def from_state(
        cls,
        state: LoopState,
        files: LabeledFiles,
        *,
        report: DatasetReport | None = None,
        more_epochs: int = 0,
        device: str | None = None,
    ) -> Trainer:
        """A trainer that goes on from ``state`` on the same images (``files``: the same split follows);
        ``more_epochs`` and ``device`` as ``LoopState.going_on`` takes them."""
        state = state.going_on(list(files.class_names), more_epochs=more_epochs, device=device)
        return cls(state.config, files, report=report, out_dir=state.out_dir, run_id=state.run_id, state=state)

    def run(self, cancel: CancelToken | None = None, *, deadline: float | None = None) -> Iterator[Event]:
        """Train, yielding events; ends with ``Finished``, ``Cancelled`` or ``Failed`` and never raises. With a
        ``deadline`` (``time.monotonic()``) it may end with ``Paused`` instead, to go on elsewhere: then
        ``paused_state`` holds where it was (training/state.py)."""
        if self._ran:
            raise RuntimeError("a Trainer runs once; make a new one for another run")
        if deadline is not None and self.parallel.world_size > 1:
            raise ValueError("a run pauses and goes on in one process only; run it without torchrun")
        self._ran = True
        end: Event | None = None
        try:
            yield from self._train(cancel or CancelToken(), CallDeadline(deadline, self._val_batches))
        except Stop:
            end = self.record.cancelled(self.state, self._parts, self.device)
        except Exception as e:
            memory = "can't allocate memory" in str(e) or "not enough memory" in str(e)  # the CPU allocator
            if isinstance(e, torch.OutOfMemoryError) or memory:
                message = self._oom_advice
            elif isinstance(e, (DatasetError, W.CheckpointError, ValueError)):
                message = str(e)
            else:
                message = f"training failed: {type(e).__name__}: {e}"
            end = self.record.failed(message, self.state)
            self.model = self._parts = None  # let the memory go (on a GPU, too): the best epoch, if any, is on disk
        finally:
            for hook in self._cancel_hooks:
                hook.remove()
            # Free what the run held, the CUDA cache included, so that the next run in this process can start.
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        if isinstance(end, events.Failed):  # several processes: name the one that failed first
            end = self.parallel.explain_failure(end)
        if end is not None:
            yield end

    def _train(self, cancel: CancelToken, deadline: CallDeadline) -> Iterator[Event]:
        """The loop: epochs of steps, a validation after each (and at half of a short run's first), the best
        checkpoint kept, until the epochs are done, the time is up or early stopping says so."""
        cfg, at = self.config, self.state
        started = time.monotonic()
        with TRACING:  # torch.manual_seed enters torch's process-wide tracing state too (tracing.py)
            torch.manual_seed(cfg.seed)
        yield events.Preparing(f"building {cfg.model_name} ({cfg.weights} weights) on {self.device}")
        self._anywhere = cancel if self.parallel.stops_anywhere else CancelToken()
        p = self._parts = build_parts(
            cfg, self.class_names, placement=self.placement, parallel=self.parallel, cancel=cancel,
            n_train=len(self.train_items), n_val=len(self.val_items), launched=started,
        )  # fmt: skip
        self.model, self.preprocessing, self._cancel_hooks = p.model, p.preprocessing, p.cancel_hooks
        yield self._started_event(p)
        yield from self._sources(p, may_pause=self.goes_on or deadline.deadline is not None)
        if self.goes_on:
            p.go_on_from(self.state, self.device)
        yield events.Preparing("loading the first batch and taking the first step")
        out_of_time = False
        for epoch in range(at.epoch, cfg.epochs + 1):
            at.epoch = epoch
            steps = yield from self._steps(p, epoch, cancel, deadline, started)
            if steps.ended == "paused":
                return
            out_of_time = steps.ended == "out_of_time"
            if out_of_time and p.metrics.seen == steps.validated_at:  # the budget ran out right after a validation
                break
            yield events.Validating(epoch=epoch - 1 + steps.steps / p.steps_per_epoch, images=len(self.val_items))
            yield self._epoch_end(p, epoch, steps.started, steps.steps / p.steps_per_epoch)
            at.epoch, at.step, at.sums, at.reported = epoch + 1, 0, EpochSums(), len(at.skipped)
            patience = cfg.early_stopping_patience
            if out_of_time or (patience and at.epochs_without_best >= patience):
                break
        yield self.record.finished(self.state, p, self.device, launched=started, out_of_time=out_of_time)

    def _steps(
        self, p: RunParts, epoch: int, cancel: CancelToken, deadline: CallDeadline, started: float
    ) -> Generator[Event, None, _EpochSteps]:
        """One epoch's training steps (a resumed epoch: those it had left), and a short run's first validation."""
        cfg, at, clock, metrics = self.config, self.state, p.clock, p.metrics
        p.model.train(not p.linear)  # linear: the frozen backbone keeps its BatchNorm statistics
        metrics.reset()
        if at.sums != EpochSums():  # a run that goes on: the epoch's sums so far, the smoothed loss, come back
            metrics.go_on_from(at.sums)
        done, spent = at.step, at.sums.seconds if at.step else 0.0
        epoch_start, validated_at, taken = time.monotonic() - spent, 0, done
        batches = iterate_batches(p.train_source, cfg.batch_size, cfg.seed + epoch, at.skipped)
        batches = skip_batches(p.train_source, batches, cfg.seed + epoch, done, cfg.batch_size)
        # A Stop comes from the epoch's batches: there, the processes of a torchrun run agree on the step it stops at.
        for step, (x, y) in enumerate(self.parallel.epoch_batches(batches, p.train_source, epoch, cancel), done + 1):
            if clock.out_of_time(at.steps_done):
                return _EpochSteps("out_of_time", epoch_start, validated_at, taken)
            validates = step == p.steps_per_epoch or (epoch == 1 and step == p.mid_step)
            if deadline.time_is_up(epoch, step, steps_done=at.steps_done, validation_follows=validates, clock=clock):
                yield self._pause(p, epoch, step - 1, epoch_start)
                return _EpochSteps("paused", epoch_start, validated_at, taken)
            yield self._step(p, x, y, epoch, step, epoch_start)
            taken = step
            if epoch == 1 and step == p.mid_step:  # a short run's first result, at half an epoch
                yield events.Validating(epoch=round(step / p.steps_per_epoch, 3), images=len(self.val_items))
                yield self._mid_epoch(p, step, started)
                validated_at = metrics.seen
        return _EpochSteps("done", epoch_start, validated_at, taken)

    def _step(self, p: RunParts, x: torch.Tensor, y: torch.Tensor, epoch: int, step: int, epoch_start: float) -> Event:
        """One optimizer step on a batch; its ``Step`` event."""
        cfg, at, clock, metrics, place = self.config, self.state, p.clock, p.metrics, self.placement
        clock.started_training()
        p.schedule.apply(clock.progress(at.steps_done))
        x, y = place.to_device(x, y)
        p.recent.add(x)
        with TRACING:  # torch's tracing state is the process's: an ONNX export waits for the step (tracing.py)
            with place.autocast():
                logits = p.forward(x, p.wrapped)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            p.optimizer.zero_grad(set_to_none=True)
            p.scaler.scale(loss).backward()
            p.scaler.step(p.optimizer)
            p.scaler.update()
        at.steps_done += 1
        metrics.add(loss, logits, y)
        clock.step_done(len(y))
        read = metrics.read() if metrics.due() or step == p.steps_per_epoch else metrics.last
        return events.Step(
            epoch=epoch, step=step, steps=p.steps_per_epoch, loss=read.loss, acc=read.acc,
            lr=p.optimizer.param_groups[-1]["lr"],
            images_per_s=metrics.seen * p.ranks / max(time.monotonic() - epoch_start, 1e-9),
            gpu_memory_mb=place.peak_memory_mb(),
            eta_s=clock.eta_s(at.steps_done),
            progress=min(1.0, clock.progress(at.steps_done)),
        )  # fmt: skip

    def _mid_epoch(self, p: RunParts, step: int, started: float) -> events.Evaluated:
        val, improved = self._validate(p, p.metrics.read().acc)
        p.model.train(not p.linear)
        fraction = round(step / p.steps_per_epoch, 3)
        best = self.state.best.val.acc
        return events.Evaluated(fraction, val.loss, val.acc, best, improved, seconds=time.monotonic() - started)

    def _epoch_end(self, p: RunParts, epoch: int, epoch_start: float, fraction: float) -> events.EpochEnd:
        """The epoch's validation (a new best is saved) and its ``EpochEnd``: train metrics over every process."""
        at, so_far = self.state, p.metrics.read()
        seen, loss_sum, correct = p.shares.sum(so_far.seen, so_far.loss_sum, so_far.correct)
        train_acc = correct / max(seen, 1)
        val, improved = self._validate(p, train_acc)
        at.epochs_without_best = 0 if improved else at.epochs_without_best + 1
        return events.EpochEnd(
            epoch=epoch,
            epochs=self.config.epochs,
            train_loss=loss_sum / max(seen, 1),
            train_acc=train_acc,
            val_loss=val.loss,
            val_acc=val.acc,
            per_class_val_acc=val.per_class,
            seconds=time.monotonic() - epoch_start,
            best_val_acc=at.best.val.acc,
            improved=improved,
            skipped=at.skipped[at.reported :],  # the first epoch also reports what feature caching found
            fraction=round(min(fraction, 1.0), 3),
        )

    def _validate(self, p: RunParts, train_acc: float) -> tuple[ValidationResult, bool]:
        """The validation set's loss, accuracy, per-class accuracy and confusion matrix; a new best is saved.
        The whole is timed: a time budget keeps that much in reserve for the last one."""
        began, at = time.monotonic(), self.state
        batches = iterate_batches(p.val_source, self.config.batch_size, None, at.skipped)
        val = validate(
            p.model, p.forward, batches, placement=self.placement, class_names=self.class_names, shares=p.shares,
            recent=p.recent, cancel=self._anywhere,
        )  # fmt: skip
        improved = val.beats(at.best)
        if improved:  # only once it is on disk does it count as the best (a full disk keeps the old one)
            best = BestEpoch(epoch=at.epoch, train_acc=train_acc, val=val)
            self.record.save(p, best.metrics())
            at.best = best
        p.clock.validated(time.monotonic() - began)
        return val, improved

    @property
    def _val_batches(self) -> int:
        return -(-len(self.val_items) // self.config.batch_size)

    def _weights_label(self, p: RunParts) -> str:
        """Where the weights came from; a run that goes on starts from its own, whatever it began with."""
        if self.goes_on and self.state.epoch > 1:
            return f"run {self.run_id}'s own, as its epoch {self.state.epoch - 1} left them"
        return p.weights_label

    def _started_event(self, p: RunParts) -> events.Started:
        cfg, place = self.config, self.placement
        amp = str(place.amp_dtype).removeprefix("torch.") if place.amp_dtype else None
        logger.info(
            "training run %s started: %s mode, %d train and %d val images, %d epochs on %s",
            *(self.run_id, cfg.mode, len(self.train_items), len(self.val_items), cfg.epochs, self.device),
        )
        return events.Started(
            run_id=self.run_id,
            classes=self.class_names,
            n_train=len(self.train_items),
            n_val=len(self.val_items),
            steps_per_epoch=p.steps_per_epoch,
            epochs=cfg.epochs,
            device=str(self.device),
            mode=cfg.mode,
            amp=amp,
            weights=self._weights_label(p),
            config=cfg.to_dict(),
            world_size=self.parallel.world_size,
            global_batch_size=p.global_batch,
            lr_scaling=p.lr_scaling,
            time_budget_s=cfg.time_budget_s,
        )

    def _sources(self, p: RunParts, *, may_pause: bool) -> Iterator[Event]:
        """Where batches come from: linear mode's feature cache (a resumed run brings it along; several processes
        each compute their share and gather), else loaders of the decoded images."""
        at, cfg, dp = self.state, self.config, self.parallel
        if p.cached and at.cache is not None:
            p.train_source, p.val_source = (FeatureCache(f.to(self.device), y.to(self.device)) for f, y in at.cache)
        elif p.cached:
            total, sources = len(self.train_items) + len(self.val_items), []
            for items, done in ((self.train_items, 0), (self.val_items, len(self.train_items))):
                share = yield from cache_features(
                    dp.shard(items), p.model, p.preprocessing, cfg, self.placement, cancel=self._anywhere,
                    skipped=at.skipped, done=done if dp.world_size == 1 else 0, total=total,
                )  # fmt: skip
                at.backbone_images += len(share.labels)  # each process: its share, once
                sources.append(dp.gather_cache(share))
            p.train_source, p.val_source = sources
        else:  # several processes: each its share; a run that may pause: in an order it can take up again
            sampler = dp.sampler if p.shares is dp else EpochOrder.for_loader if may_pause else None
            loaders = (image_loader(items, p.preprocessing, cfg, self.device, train=train, sampler=sampler)
                       for items, train in ((self.train_items, True), (self.val_items, False)))  # fmt: skip
            p.train_source, p.val_source = loaders

    def _pause(self, p: RunParts, epoch: int, step: int, epoch_start: float) -> events.Paused:
        """The ``Paused`` event after ``step`` steps of ``epoch``; ``paused_state`` holds where the run is."""
        self.state.step = step
        self.paused_state = p.taken(self.state, p.metrics.sums(time.monotonic() - epoch_start), self.device)
        logger.info("training run %s paused after step %d of epoch %d, to go on elsewhere", self.run_id, step, epoch)
        return events.Paused(epoch=epoch, step=step)

    @property
    def _oom_advice(self) -> str:
        size = self.preprocessing.image_size if self.preprocessing else self.config.image_size
        return oom_advice(self.config.batch_size, size, self.config.memory_efficient, self.device)
