"""What a training run leaves behind and says at its end: the best epoch's checkpoint in the run's folder (with the
record of the files it learns from, for its review), the state to continue from, and its last event (``Finished``,
``Cancelled`` or ``Failed``).

The ``Trainer`` (training/loop.py) holds one ``RunRecord``; of several processes only the main one writes the
checkpoint, and only a run of one process keeps a state (``LoopState.keep``): its ranks would each need theirs.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..data.datasets import DatasetReport, Item
from ..weights import resolver as W
from ..weights.run_data import DATA_FILE, record_run_data
from .build import RunParts
from .config import TrainConfig
from .events import Cancelled, Failed, Finished
from .pacing import EpochSums
from .state import LoopState

__all__ = ["RunRecord"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunRecord:
    """A run's folder and its outcome: ``save`` the best epoch, ``keep`` the state, the end events."""

    run_id: str
    out_dir: Path
    config: TrainConfig  # resolved
    class_names: list[str]
    report: DatasetReport | None
    n_train: int
    n_val: int
    writes: bool = True  # the main process: the one that writes the checkpoint
    keeps_state: bool = True  # a run of one process: one that can go on
    split: tuple[tuple[Item, ...], tuple[Item, ...]] = ((), ())  # the (train, val) files, for data.json

    def save(self, p: RunParts, metrics: dict[str, Any]) -> None:
        """The checkpoint (``weights.save_checkpoint``, atomic), with what the run was."""
        if not self.writes:
            return
        extra = {"train_config": self.config.to_dict(), "run_id": self.run_id, "initial_weights": p.weights_label}
        if self.report is not None:
            extra["dataset"] = {"source": self.report.source, "counts": self.report.counts}
        W.save_checkpoint(
            self.out_dir,
            p.model,
            class_names=self.class_names,
            preprocessing=p.preprocessing,
            metrics={**metrics, "n_train": self.n_train, "n_val": self.n_val},
            extra=extra,
        )
        # With the first checkpoint, which files the run learns from (weights/run_data.py); a run continued (or
        # going on in another call) trains on the same files, so the first record stands.
        if not (self.out_dir / DATA_FILE).is_file():
            root = self.report.root if self.report is not None else None
            record_run_data(self.out_dir, self.class_names, *self.split, root)

    def keep(self, state: LoopState, p: RunParts | None, device: torch.device) -> None:
        """At a run's end: its state beside the checkpoint, so that it can be continued for more epochs from
        ``state.epoch`` on. Nothing for a run that took no step or ran in several processes."""
        if p is None or state.steps_done == 0 or not self.keeps_state:
            return
        state.step, state.reported = 0, len(state.skipped)
        try:
            p.taken(state, EpochSums(), device).keep(self.out_dir)
        except OSError as e:  # the checkpoint is what matters; without the state the run just cannot go on
            logger.warning("run %s: its training state was not saved (%s); it cannot be continued", self.run_id, e)

    def finished(
        self, state: LoopState, p: RunParts, device: torch.device, *, launched: float, out_of_time: bool
    ) -> Finished:
        """Keep the state (to continue later) and leave the best epoch's weights in ``p.model``, so that the
        trainer's model predicts what the checkpoint predicts."""
        self.keep(state, p, device)
        # (Several processes: only the main one wrote it, maybe on another machine; the others end here anyway.)
        if self.writes:
            p.model.load_state_dict(load_file(str(self.out_dir / W.CHECKPOINT_WEIGHTS), device=str(device)))
        p.model.eval()
        best, epochs_run = state.best, state.epoch - 1
        logger.info(
            "training run %s finished: best val acc %.4f at epoch %d of %d, saved to %s",
            *(self.run_id, best.val.acc, best.epoch, epochs_run, self.out_dir),
        )
        return Finished(
            best_val_acc=best.val.acc,
            best_epoch=best.epoch,
            checkpoint_dir=str(self.out_dir),
            confusion_matrix=best.val.confusion,
            class_names=self.class_names,
            epochs_run=epochs_run,
            stopped_early=epochs_run < self.config.epochs and not out_of_time,
            seconds=time.monotonic() - launched,
            skipped=list(state.skipped),
            per_class_val_acc=best.val.per_class,
            out_of_time=out_of_time,
        )

    def cancelled(self, state: LoopState, p: RunParts | None, device: torch.device) -> Cancelled | Failed:
        """Keep the best epoch; before any epoch has ended, keep the weights trained so far. Either way the
        state stays too, so that the run can be continued from the epoch it stopped in."""
        best, here = state.best, str(self.out_dir)
        if best is not None:
            val = best.val
            cancelled = Cancelled(here, state.epoch, val.acc, val.confusion, list(self.class_names), val.per_class)
        elif state.steps_done > 0:
            try:
                self.save(p, {"epoch": state.epoch, "cancelled_mid_epoch": True, "steps": state.steps_done})
            except W.CheckpointError as e:
                return self.failed(f"stopped, but {e}", state)
            p.model.eval()
            cancelled = Cancelled(checkpoint_dir=here, epoch=state.epoch, best_val_acc=None)
        else:
            cancelled = Cancelled(checkpoint_dir=None, epoch=state.epoch, best_val_acc=None)
        if cancelled.checkpoint_dir:
            self.keep(state, p, device)  # the epoch it stopped in starts again
        logger.info("training run %s stopped in epoch %d; kept: %s", self.run_id, state.epoch, cancelled.checkpoint_dir)
        return cancelled

    def failed(self, message: str, state: LoopState) -> Failed:
        """The run's end after an exception (called while handling it): logged at ERROR with its traceback."""
        detail = traceback.format_exc()
        logger.error("training run %s failed: %s\n%s", self.run_id, message, detail.rstrip())
        kept = str(self.out_dir) if state.best is not None else None
        return Failed(message=message, detail=detail, checkpoint_dir=kept)
