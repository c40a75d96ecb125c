"""Trainer: fine-tune or train a DenseNet on labelled image files, reporting through events.

``Trainer(config, files).run(cancel)`` yields ``Preparing`` (model build), ``Started``, then (linear mode)
``Caching``, ``Preparing`` (first batch), then ``Step`` ... ``EpochEnd`` per epoch (a short run also validates
at half an epoch: ``Evaluated``), and ends with exactly one of ``Finished``, ``Cancelled`` or ``Failed``.
Nothing here prints: the UI, the CLI and the tests are all consumers of the events (training/events.py). A run logs its
start and its end at INFO, and a failure at ERROR with its traceback, for the server's log.

Modes:
- ``linear``: frozen backbone; each image's pooled features are computed once, without augmentation,
  and the new head trains on that cache (seconds on a CPU instead of minutes);
- ``finetune``: every layer trains; the backbone at ``lr * backbone_lr_factor``, the new head at ``lr``;
- ``scratch``: random init, every layer at ``lr``.
The recipe (training/setup.py) fills in what the config leaves open; training/pacing.py turns epochs or a time budget
into the lr at each step and says when the time is up.

The best validation (by accuracy) is saved atomically through ``weights.save_checkpoint`` to
``weights/runs/<run-id>/`` and reloaded into ``trainer.model`` at the end.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import time
import traceback
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from ..data.datasets import DatasetError, DatasetReport, Item, LabeledFiles
from ..data.images import Preprocessing
from ..model import DenseNet
from ..weights import resolver as W
from ..weights.run_data import record_run_data
from . import events
from .batchnorm_stats import RecentBatches
from .cancel import stop_inside_steps
from .data import Batch, FeatureCache, Placement, drops_last, image_loader, iterate_batches, note_failures
from .evaluation import BestEpoch, ValidationResult, confusion_and_loss, oom_advice
from .events import *  # noqa: F403  (re-exported: consumers import the events with the Trainer)
from .events import CancelToken, Event
from .pacing import RunClock, cudnn_autotune_pays, pace
from .setup import MODES, TrainConfig, build_model, example_config, make_optimizer, pick_amp_dtype, pick_device
from .state import Resumable

# The events (training/events.py) are re-exported: consumers import them with the Trainer.
__all__ = ["MODES", "TrainConfig", "Trainer", "example_config", *events.__all__]

if TYPE_CHECKING:
    from .distributed import DataParallel

logger = logging.getLogger(__name__)


class _Stop(Exception):
    """Raised at a step boundary when the cancel token is set; becomes a ``Cancelled`` event."""


# ---------------------------------------------------------------------------------------------
# Trainer


class Trainer(Resumable):
    """One training run: ``Trainer(config, files).run(cancel)`` -> events. A trainer runs once.

    Args:
        config: the run's settings (``TrainConfig``).
        files: labelled images (``data.load_image_folder`` and friends); split by ``config.val_fraction``
            unless they bring their own val split.
        report: the dataset report, recorded in the checkpoint.
        out_dir: where the checkpoint goes; default ``weights.run_path(run_id, runs_root)``.
        run_id: the run's name; default ``weights.new_run_id(model name)``.
        data_parallel: this process's part in a torchrun run (``distributed.data_parallel()``); None: alone.

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
        data_parallel: DataParallel | None = None,
    ) -> None:
        self.config = config.resolved()
        self.class_names = list(files.class_names)
        if len(self.class_names) < 2:
            raise DatasetError(f"training needs at least 2 classes, got {len(self.class_names)}")
        self.train_items, self.val_items = files.split(self.config.val_fraction, self.config.seed)
        if not self.val_items or not self.train_items:
            raise DatasetError("too few images to train and validate: give every class at least 2 images")
        self.report = report
        self.run_id = run_id or W.new_run_id(self.config.model_name)
        self.out_dir = Path(out_dir) if out_dir else W.run_path(self.run_id, Path(runs_root) if runs_root else None)
        self.device = pick_device(self.config.device)
        # -- distributed hook: each rank on its own GPU; every rank needs a validation image --
        self.data_parallel = data_parallel
        if data_parallel is not None:
            self.device = data_parallel.device_for(self.device)
            if self.config.time_budget_s is not None:  # each rank's clock would stop it at another step
                raise ValueError("a time budget is not supported under torchrun yet; give --epochs instead")
            if len(self.val_items) < data_parallel.world_size:
                raise DatasetError(
                    f"{len(self.val_items)} validation images for {data_parallel.world_size} processes: "
                    "give every process at least one (more images, or fewer processes)"
                )
        channels_last = self.config.channels_last
        self._placement = Placement(
            self.device,
            channels_last=channels_last if channels_last is not None else self.device.type in ("cuda", "cpu"),
            amp_dtype=pick_amp_dtype(self.config.amp, self.device),
        )
        self.model: DenseNet | None = None  # after the run: the best epoch's weights, in eval mode
        self.preprocessing: Preprocessing | None = None
        self.backbone_images = 0  # images through the backbone while caching (linear mode: each image once)
        self.skipped: list[tuple[str, str]] = []  # images found corrupt while training: (path, reason)
        self._ran = False
        self._weights_label = ""
        self._steps_done = 0
        self._epoch = 0
        self._best: BestEpoch | None = None  # set only once its checkpoint is on disk
        self._data_recorded = False  # data.json, written with the first checkpoint
        self._sharded = False  # distributed, each rank on its own share of the images (not the gathered cache)
        self._cancel_hooks: list[Any] = []  # Stop acts inside a step too (training/cancel.py); removed at the end
        self._init_resumable()  # a new run starts at epoch 1; from_state goes on elsewhere (training/state.py)
        self._recent = RecentBatches(0)  # inputs to recompute BatchNorm statistics from before a validation

    def run(self, cancel: CancelToken | None = None, *, deadline: float | None = None) -> Iterator[Event]:
        """Train, yielding events; ends with ``Finished``, ``Cancelled`` or ``Failed`` and never raises. With a
        ``deadline`` (``time.monotonic()``) it may end with ``Paused`` instead, to go on elsewhere
        (training/state.py)."""
        if self._ran:
            raise RuntimeError("a Trainer runs once; make a new one for another run")
        self._ran, self._deadline = True, deadline
        end: Event | None = None
        try:
            yield from self._train(cancel or CancelToken())
        except _Stop:
            end = self._cancelled()
        except torch.OutOfMemoryError:
            end = self._failed(self._oom_advice)
        except (DatasetError, W.CheckpointError, ValueError) as e:
            end = self._failed(str(e))
        except Exception as e:
            memory = "can't allocate memory" in str(e) or "not enough memory" in str(e)  # the CPU allocator
            end = self._failed(self._oom_advice if memory else f"training failed: {type(e).__name__}: {e}")
        finally:
            for hook in self._cancel_hooks:
                hook.remove()
            # Free what the run held, the CUDA cache included, so that the next run in this process can start.
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        # Distributed hook: name the rank that failed first, not the broken connection the others saw.
        if isinstance(end, events.Failed) and self.data_parallel is not None:
            end = self.data_parallel.explain_failure(end)
        if end is not None:
            yield end

    def _train(self, cancel: CancelToken) -> Iterator[Event]:
        cfg, device = self.config, self.device
        started = time.monotonic()
        torch.manual_seed(cfg.seed)
        yield events.Preparing(f"building {cfg.model_name} ({cfg.weights} weights) on {device}")
        model, self.preprocessing, self._weights_label = build_model(cfg, self.class_names)
        place = self._placement
        model.to(device, memory_format=torch.channels_last if place.channels_last else torch.preserve_format)
        self.model = model

        linear = cfg.mode == "linear"
        cached = linear and cfg.cache_features
        if linear:
            model.requires_grad_(False).classifier.requires_grad_(True)
        # -- distributed hook: sync BN, DDP around what trains, each rank's share of the images --
        dp, n_train = self.data_parallel, len(self.train_items)
        global_batch, lr_rule = cfg.batch_size, "none: one process"
        self._sharded = dp is not None and not cached
        ranks = dp.world_size if self._sharded else 1
        if dp is not None:
            model = self.model = dp.prepare(model, trains_backbone=not linear)
            n_train = dp.samples_per_rank(n_train) if self._sharded else n_train
            global_batch, lr_rule = dp.describe_batch(cfg.batch_size, cfg.lr, sharded=self._sharded)
        # Distributed: ranks stop together at a training step (lockstep below); caching and evaluation run on.
        local_cancel = cancel if dp is None else CancelToken()
        if dp is None:  # alone, Stop need not wait for the step to end (ranks must stop at the same step)
            self._cancel_hooks = stop_inside_steps(model, cancel, _Stop)
        trained = model.classifier if linear else model
        wrapped = dp.wrap(trained, device) if dp is not None else trained
        batches_of = math.floor if drops_last(n_train, cfg.batch_size, device) and not cached else math.ceil
        steps_per_epoch = batches_of(n_train / cfg.batch_size)
        total_steps = steps_per_epoch * cfg.epochs
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = cudnn_autotune_pays(total_steps, cfg.time_budget_s)
            torch.cuda.reset_peak_memory_stats(device)
        optimizer = make_optimizer(cfg, model)
        self._recent = RecentBatches(0 if linear else cfg.bn_recalibration)  # linear: the backbone keeps its own
        schedule, clock, metrics, mid_step = pace(cfg, optimizer, device, steps_per_epoch, started, len(self.val_items))
        scaler = torch.amp.GradScaler(device.type, enabled=place.amp_dtype == torch.float16)
        amp_name = str(place.amp_dtype).removeprefix("torch.") if place.amp_dtype else None
        logger.info(
            "training run %s started: %s mode, %d train and %d val images, %d epochs on %s",
            *(self.run_id, cfg.mode, len(self.train_items), len(self.val_items), cfg.epochs, device),
        )
        yield events.Started(
            run_id=self.run_id,
            classes=self.class_names,
            n_train=len(self.train_items),
            n_val=len(self.val_items),
            steps_per_epoch=steps_per_epoch,
            epochs=cfg.epochs,
            device=str(device),
            mode=cfg.mode,
            amp=amp_name,
            weights=self._weights_label,
            config=cfg.to_dict(),
            world_size=dp.world_size if dp is not None else 1,
            global_batch_size=global_batch,
            lr_scaling=lr_rule,
            time_budget_s=cfg.time_budget_s,
        )

        if cached and dp is not None:  # distributed hook: each rank runs the backbone on its share; gather
            train_source = yield from self._cache_features(dp.shard(self.train_items), local_cancel, done=0)
            val_source = yield from self._cache_features(dp.shard(self.val_items), local_cancel, done=0)
            train_source, val_source = dp.gather_cache(train_source), dp.gather_cache(val_source)
        elif cached:
            train_source = yield from self._cache_features(self.train_items, cancel, done=0)
            val_source = yield from self._cache_features(self.val_items, cancel, done=len(self.train_items))
        else:
            sampler = dp.sampler if self._sharded else self._order_sampler()  # distributed: each rank its share
            train_source = image_loader(self.train_items, self.preprocessing, cfg, device, train=True, sampler=sampler)
            val_source = image_loader(self.val_items, self.preprocessing, cfg, device, train=False, sampler=sampler)
        self._resume(model, optimizer, scaler, clock, metrics, (train_source, val_source), steps_per_epoch, mid_step)

        def forward(x: torch.Tensor, trained: torch.nn.Module = trained) -> torch.Tensor:
            """Logits; training passes the DDP wrapper as ``trained``, evaluation the plain module (no collectives)."""
            if cached:  # x holds pooled features already
                return trained(x)
            if linear:  # frozen backbone, run on every batch of every epoch
                with torch.no_grad():
                    x = model.forward_head(model.forward_features(x), pre_logits=True)
                return trained(x.float())
            return trained(x)

        yield events.Preparing("loading the first batch and taking the first step")
        epochs_without_best, reported, out_of_time = self._at.epochs_without_best, self._at.reported, False
        next_epoch = self._at.epoch  # the epoch a continuation starts with: the one after the last that ended
        for epoch in range(self._at.epoch, cfg.epochs + 1):
            self._epoch = epoch
            model.train(not linear)  # linear: the frozen backbone keeps its BatchNorm statistics
            metrics.reset()
            done, spent = self._resume_epoch(epoch, metrics)  # a resumed epoch: its steps taken already
            epoch_start, validated_at = time.monotonic() - spent, 0  # images at the epoch's last validation
            batches = self._epoch_batches(train_source, cfg.seed + epoch, skip=done)
            if dp is not None:  # distributed hook: a new shuffle of each share; every rank takes the same steps
                dp.set_epoch(train_source, epoch)
                batches = dp.lockstep(batches, cancel)
            for step, (x, y) in enumerate(batches, start=done + 1):
                if cancel.cancelled:
                    raise _Stop
                if clock.out_of_time(self._steps_done):
                    out_of_time = True
                    break
                if self._time_is_up(epoch, step):  # run(deadline=...): go on in another call (training/state.py)
                    yield self._paused(epoch, step - 1, epoch_start, epochs_without_best, reported)
                    return
                clock.started_training()
                schedule.apply(clock.progress(self._steps_done))
                x, y = place.to_device(x, y)
                self._recent.add(x)
                with place.autocast():
                    logits = forward(x, wrapped)
                    loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()

                self._steps_done += 1
                metrics.add(loss, logits, y)
                clock.step_done(len(y))
                read = metrics.read() if metrics.due() or step == steps_per_epoch else metrics.last
                now = time.monotonic()
                yield events.Step(
                    epoch=epoch,
                    step=step,
                    steps=steps_per_epoch,
                    loss=read.loss,
                    acc=read.acc,
                    lr=optimizer.param_groups[-1]["lr"],
                    images_per_s=metrics.seen * ranks / max(now - epoch_start, 1e-9),
                    gpu_memory_mb=place.peak_memory_mb(),
                    eta_s=clock.eta_s(self._steps_done),
                    progress=min(1.0, clock.progress(self._steps_done)),
                )
                if epoch == 1 and step == mid_step:  # a short run's first result, at half an epoch
                    val, improved = self._validate(val_source, forward, local_cancel, clock, epoch, metrics.read().acc)
                    validated_at = metrics.seen
                    yield events.Evaluated(
                        *(round(step / steps_per_epoch, 3), val.loss, val.acc, self._best.val.acc, improved),
                        seconds=time.monotonic() - started,
                    )
                    model.train(not linear)

            if out_of_time and metrics.seen == validated_at:  # the budget ran out right after a validation
                break
            so_far = metrics.read()
            seen, loss_sum, correct = so_far.seen, so_far.loss_sum, so_far.correct
            if self._sharded:  # distributed hook: the epoch's train loss and accuracy over every rank's share
                seen, loss_sum, correct = dp.sum(seen, loss_sum, correct)
            train_acc = correct / max(seen, 1)
            val, improved = self._validate(val_source, forward, local_cancel, clock, epoch, train_acc)
            epochs_without_best = 0 if improved else epochs_without_best + 1
            yield events.EpochEnd(
                epoch=epoch,
                epochs=cfg.epochs,
                train_loss=loss_sum / max(seen, 1),
                train_acc=train_acc,
                val_loss=val.loss,
                val_acc=val.acc,
                per_class_val_acc=val.per_class,
                seconds=time.monotonic() - epoch_start,
                best_val_acc=self._best.val.acc,
                improved=improved,
                skipped=self.skipped[reported:],  # the first epoch also reports what feature caching found
            )
            reported, next_epoch = len(self.skipped), epoch + 1
            if out_of_time or (cfg.early_stopping_patience and epochs_without_best >= cfg.early_stopping_patience):
                break

        # So that the run can be continued (training/state.py). A budget that ran out before the epoch's end (right
        # after its start or its half-epoch validation) leaves that epoch to be trained again, from its start.
        self._keep_state(next_epoch=next_epoch)
        # Leave the best epoch's weights in memory, so that trainer.model predicts what the checkpoint predicts.
        # (Distributed: only rank 0 wrote it, maybe on another machine; the other ranks end here anyway.)
        if dp is None or dp.is_main:
            model.load_state_dict(load_file(str(self.out_dir / W.CHECKPOINT_WEIGHTS), device=str(device)))
        model.eval()
        best, epochs_run = self._best, next_epoch - 1
        logger.info(
            "training run %s finished: best val acc %.4f at epoch %d of %d, saved to %s",
            *(self.run_id, best.val.acc, best.epoch, epochs_run, self.out_dir),
        )
        yield events.Finished(
            best_val_acc=best.val.acc,
            best_epoch=best.epoch,
            checkpoint_dir=str(self.out_dir),
            confusion_matrix=best.val.confusion,
            class_names=self.class_names,
            epochs_run=epochs_run,
            stopped_early=epochs_run < cfg.epochs and not out_of_time,
            seconds=time.monotonic() - started,
            skipped=list(self.skipped),
            per_class_val_acc=best.val.per_class,
            out_of_time=out_of_time,
        )

    # -- data ------------------------------------------------------------------------------------

    def _batches(self, source: FeatureCache | DataLoader, *, shuffle_seed: int | None) -> Iterator[Batch]:
        """(inputs, labels) of one pass (``train_data.iterate_batches``), noting the images that failed to decode."""
        return iterate_batches(source, self.config.batch_size, shuffle_seed, self.skipped)

    def _cache_features(
        self, items: list[Item], cancel: CancelToken, *, done: int
    ) -> Generator[Event, None, FeatureCache]:
        """Pooled backbone features of every image, computed once, in eval mode and without augmentation."""
        if self._carried_cache:  # a resumed run brings them along (training/state.py)
            return self._carried_cache.pop(0)
        total = len(self.train_items) + len(self.val_items)
        loader = image_loader(items, self.preprocessing, self.config, self.device, train=False)
        cache = FeatureCache.builder(self.model, self._placement)
        for x, y, failed in loader:
            if cancel.cancelled:
                raise _Stop
            done += len(failed) + cache.add(x, y)
            note_failures(self.skipped, failed)
            yield events.Caching(done, total)
        self.backbone_images += cache.images
        return cache.build()

    # -- evaluation and checkpoints --------------------------------------------------------------

    def _validate(
        self,
        source: FeatureCache | DataLoader,
        forward: Callable[[torch.Tensor], torch.Tensor],
        cancel: CancelToken,
        clock: RunClock,
        epoch: int,
        train_acc: float,
    ) -> tuple[ValidationResult, bool]:
        """Loss, accuracy, per-class accuracy and confusion matrix on the validation set; a new best is saved.
        The whole is timed: a time budget keeps that much in reserve for the last one."""

        def check_cancel() -> None:
            if cancel.cancelled:
                raise _Stop

        began = time.monotonic()
        self._recent.recalibrate(self.model, self._placement.autocast())  # statistics of these weights
        self.model.eval()
        batches = self._batches(source, shuffle_seed=None)
        confusion, loss_sum = confusion_and_loss(batches, forward, self._placement, len(self.class_names), check_cancel)
        if self._sharded:  # distributed hook: sums over every rank's share = the whole validation set
            confusion = self.data_parallel.sum_tensor(confusion)
            (loss_sum,) = self.data_parallel.sum(loss_sum)
        val = ValidationResult.from_counts(confusion, loss_sum, self.class_names)
        improved = val.beats(self._best)
        if improved:  # only once it is on disk does it count as the best (a full disk keeps the old one)
            best = BestEpoch(epoch=epoch, train_acc=train_acc, val=val)
            self._save(best.metrics())
            self._best = best
        clock.validated(time.monotonic() - began)
        return val, improved

    def _save(self, metrics: dict[str, Any]) -> None:
        # Distributed hook: rank 0 writes the one checkpoint.
        if self.data_parallel is not None and not self.data_parallel.is_main:
            return
        extra = {"train_config": self.config.to_dict(), "run_id": self.run_id, "initial_weights": self._weights_label}
        if self.report is not None:
            extra["dataset"] = {"source": self.report.source, "counts": self.report.counts}
        W.save_checkpoint(
            self.out_dir,
            self.model,
            class_names=self.class_names,
            preprocessing=self.preprocessing,
            metrics={**metrics, "n_train": len(self.train_items), "n_val": len(self.val_items)},
            extra=extra,
        )
        if not self._data_recorded:  # once per run: the files it learns from, for its review (weights/run_data.py)
            root = self.report.root if self.report is not None else None
            self._data_recorded = record_run_data(
                self.out_dir, self.class_names, self.train_items, self.val_items, root
            )

    @property
    def _oom_advice(self) -> str:
        size = self.preprocessing.image_size if self.preprocessing else self.config.image_size
        return oom_advice(self.config.batch_size, size, self.config.memory_efficient, self.device)

    def _failed(self, message: str) -> events.Failed:
        """The run's end after an exception (called while handling it): logged at ERROR with its traceback."""
        self.model = None  # let the memory go (on a GPU, too): the best epoch, if any, is on disk
        detail = traceback.format_exc()
        logger.error("training run %s failed: %s\n%s", self.run_id, message, detail.rstrip())
        return events.Failed(
            message=message, detail=detail, checkpoint_dir=str(self.out_dir) if self._best is not None else None
        )
