"""Where a training run runs, behind one handle: ``start(config, files, where=...)`` returns a ``TrainingRun`` with
``run_id``, ``config`` (resolved: every default filled in), ``events()`` and ``stop()``, whichever of these runs it:

- ``"here"``: the loop in this process (training/loop.py);
- ``"gpu_calls"``: on ZeroGPU, a chain of GPU calls (hosting/gpu.py), each going on from the ``LoopState`` the last
  one handed back on the CPU (training/state.py);
- ``"torchrun"``: one process per GPU, a torchrun child that reads the run's config from a file and streams its
  events back (training/torchrun.py);
- ``"auto"``: GPU calls on ZeroGPU, else here.

``continue_training(run_dir, files, more_epochs)`` does the same for a finished or stopped run (here, or in GPU
calls). Settings are checked at once (``DatasetError``, ``ValueError``); everything later ends the events with
``Failed``. ``events()`` yields the trainer's events, the same wherever it runs: one ``Started``, the steps and
epochs (across calls without a seam), and one end: ``Finished``, ``Cancelled`` or ``Failed``.

In GPU calls, Stop works inside a call (a thread here relays it to the worker through a file: a forked process
cannot see this process's flags) and between calls (the end is then made here, on the CPU, from the last state).
A call ZeroGPU refuses ends the run with its plain message; the state of the last call stays in the run's
folder, so that the run can be continued later.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..data.datasets import DatasetReport, LabeledFiles
from ..hosting import gpu
from ..weights import resolver as W
from .config import TrainConfig
from .distributed import DataParallel, gpu_count
from .events import CancelToken, Evaluated, Event, Failed, Finished, Paused, Preparing, Started
from .loop import Trainer
from .state import LoopState
from .torchrun import Job, train_in_child

__all__ = [
    "RESERVE_FRACTION",
    "WHERE",
    "GPUCallsRun",
    "LocalRun",
    "TorchrunRun",
    "TrainingRun",
    "continue_training",
    "start",
]

logger = logging.getLogger(__name__)

WHERE = ("auto", "here", "gpu_calls", "torchrun")
# A call plans to pause this share of its duration before its end: the worker's start, the state's trip back and
# a step slower than the last fit in what is left (the trainer also keeps room for its next step or validation).
RESERVE_FRACTION = 0.25
STOP_CHECK_S = 0.1  # how often a Stop is looked for: by the relay here, by the worker in its run's stop file


class TrainingRun:
    """A checked run, ready to start: the same handle wherever it runs.

    ``events()`` runs it (once) and yields its events; ``stop()`` (from any thread) asks it to stop: it ends with
    ``Cancelled``, the best checkpoint so far kept. ``processes``: how many processes train (torchrun: one per
    GPU; they stop together at the end of a step, a single one at once, inside its step).
    """

    run_id: str
    out_dir: Path
    config: TrainConfig  # resolved
    processes: int = 1

    def __init__(self) -> None:
        self._cancel = CancelToken()

    def events(self) -> Iterator[Event]:
        raise NotImplementedError

    def stop(self) -> None:
        self._cancel.cancel()


class LocalRun(TrainingRun):
    """The loop in this process."""

    def __init__(self, trainer: Trainer) -> None:
        super().__init__()
        self.trainer = trainer
        self.run_id, self.out_dir, self.config = trainer.run_id, trainer.out_dir, trainer.config

    def events(self) -> Iterator[Event]:
        return self.trainer.run(self._cancel)


class TorchrunRun(TrainingRun):
    """One process per GPU: a torchrun child started with the run as data (training/torchrun.py).

    Checked at once for what several processes cannot do (a time budget: each process's clock would stop it at
    another step; fewer validation images than processes) and for bad settings (``TrainConfig``); what only the
    child finds (no GPU where one was asked for, the images) ends its events with ``Failed``.
    """

    def __init__(
        self,
        config: TrainConfig,
        files: LabeledFiles,
        report: DatasetReport | None,
        *,
        processes: int,
        out_dir: str | os.PathLike | None = None,
        scratch: str | os.PathLike | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        if processes < 1:
            raise ValueError(f"a torchrun run needs at least one process, got {processes}")
        self.config = config.resolved()
        _, val = files.split(self.config.val_fraction, self.config.seed)
        DataParallel(0, processes, 0, "gloo").check(self.config, len(val))
        self.run_id = W.new_run_id(self.config.model_name)
        self.out_dir = Path(out_dir).resolve() if out_dir else W.run_path(self.run_id).resolve()
        self.processes, self.scratch, self.env = processes, scratch, env
        self.job = Job(self.config, files, report, self.run_id, str(self.out_dir))

    def events(self) -> Iterator[Event]:
        return train_in_child(self.job, self.processes, self._cancel, scratch=self.scratch, env=self.env)


@dataclass(frozen=True)
class _CallEnd:
    """A call's last value when the run paused: ``state`` goes on in the next call."""

    state: LoopState


class _StopFile(CancelToken):
    """Cancelled once the run's stop file exists (looked for at most every STOP_CHECK_S: it is asked per layer)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path, self._looked = path, 0.0

    @property
    def cancelled(self) -> bool:
        now = time.monotonic()
        if not super().cancelled and now - self._looked >= STOP_CHECK_S:
            self._looked = now
            if self.path.exists():
                self.cancel()
        return super().cancelled


@contextlib.contextmanager
def _relay(cancel: CancelToken, stop_file: Path) -> Iterator[None]:
    """While a GPU call runs: a Stop pressed here becomes the stop file its worker looks for."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(STOP_CHECK_S):
            if cancel.cancelled:
                stop_file.touch()
                return

    watcher = threading.Thread(target=watch, name="stop-relay", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


class GPUCallsRun(TrainingRun):
    """On ZeroGPU: a chain of GPU calls, each going on from the state the last one handed back."""

    def __init__(
        self,
        trainer: Trainer,
        files: LabeledFiles,
        report: DatasetReport | None,
        *,
        state: LoopState | None = None,
        more_epochs: int = 0,
    ) -> None:
        super().__init__()
        # Made here to check the settings and name the run; each call makes its own.
        self.run_id, self.out_dir, self.config = trainer.run_id, trainer.out_dir, trainer.config
        self.files, self.report = files, report
        self.state, self.more_epochs = state, more_epochs  # a continued run: where it goes on from

    def events(self) -> Iterator[Event]:
        with tempfile.TemporaryDirectory(prefix="densenet_demo_run_") as scratch:
            yield from self._chain(self._cancel, Path(scratch) / "stop")

    def _chain(self, cancel: CancelToken, stop_file: Path) -> Iterator[Event]:
        seconds, began = gpu.call_seconds(), time.monotonic()
        state, more, calls = self.state, self.more_epochs, 0
        while True:
            if cancel.cancelled and state is not None:  # between calls: the end is made here, on the CPU
                yield from self._end_here(state)
                return
            calls += 1
            paused = None
            args = (self.config, self.files, self.report, self.run_id, str(self.out_dir), state, more)
            try:
                with _relay(cancel, stop_file):
                    values = gpu.stream(_train_in_call, *args, str(stop_file), seconds, seconds=seconds)
                    for value in _drained(values):
                        if isinstance(value, _CallEnd):
                            paused = value.state
                        elif calls == 1 or not isinstance(value, (Started, Preparing)):  # one start per run
                            yield _timed(value, began)
            except gpu.GPUUnavailable as e:
                yield self._refused(str(e), state)
                return
            if paused is None:  # the run ended inside the call
                logger.info("training run %s took %d GPU call(s) of at most %d s", self.run_id, calls, seconds)
                return
            state, more = paused, 0

    def _end_here(self, state: LoopState) -> Iterator[Event]:
        """Stopped between calls: the trainer's own end (best checkpoint and state kept), made on the CPU."""
        trainer = Trainer.from_state(state, self.files, report=self.report, device="cpu")
        stopped = CancelToken()
        stopped.cancel()
        for event in trainer.run(stopped):
            if not isinstance(event, (Started, Preparing)):
                yield event

    def _refused(self, message: str, state: LoopState | None) -> Failed:
        """ZeroGPU refused a call: the run ends with its message; the best checkpoint and the last state stay."""
        kept = (self.out_dir / W.CHECKPOINT_WEIGHTS).is_file()
        if kept and state is not None:
            try:
                state.keep(self.out_dir)
                message += " Continue training goes on from where it stopped."
            except OSError as e:  # the checkpoint stays; only going on from here is lost
                logger.warning("run %s: its training state was not saved (%s)", self.run_id, e)
        return Failed(message=message, detail=None, checkpoint_dir=str(self.out_dir) if kept else None)


def _drained(values: Iterator[Any]) -> Iterator[Any]:
    """``values`` read on a thread of their own as soon as they come and handed on as they are asked for: a GPU
    call's time runs while it waits to hand a value over, so it must never wait for the page to draw the last one
    (a fast call hands over many steps; the page draws curves). An exception comes through in its place."""
    box: queue.Queue[tuple[bool, Any]] = queue.Queue()
    end = object()

    def pump() -> None:
        try:
            for value in values:
                box.put((True, value))
        except BaseException as e:  # raised again on the consumer's side
            box.put((False, e))
        else:
            box.put((True, end))

    threading.Thread(target=pump, name="gpu-call-values", daemon=True).start()
    while True:
        ok, value = box.get()
        if not ok:
            raise value
        if value is end:
            return
        yield value


def _timed(event: Event, began: float) -> Event:
    """A call's event with its times counted from the run's start, not the call's."""
    if isinstance(event, (Finished, Evaluated)):
        return replace(event, seconds=time.monotonic() - began)
    return event


def _train_in_call(
    config: TrainConfig,
    files: LabeledFiles,
    report: DatasetReport | None,
    run_id: str,
    out_dir: str,
    state: LoopState | None,
    more_epochs: int,
    stop_file: str,
    seconds: float,
) -> Iterator[Event | _CallEnd]:
    """One GPU call's worth of training: from ``state`` (None: the start) until its time is nearly up."""
    deadline = time.monotonic() + seconds * (1 - RESERVE_FRACTION)
    if not gpu.can_start_processes():  # a daemonic worker: the images are decoded in the training process
        config = replace(config, num_workers=0)
        state = None if state is None else replace(state, config=replace(state.config, num_workers=0))
    if state is None:
        trainer = Trainer(config, files, report=report, out_dir=out_dir, run_id=run_id)
    else:
        trainer = Trainer.from_state(state, files, report=report, more_epochs=more_epochs)
    for event in trainer.run(_StopFile(Path(stop_file)), deadline=deadline):
        if isinstance(event, Paused):
            yield _CallEnd(trainer.paused_state)
            return
        yield event


def start(
    config: TrainConfig,
    files: LabeledFiles,
    *,
    report: DatasetReport | None = None,
    where: str = "auto",
    processes: int | None = None,
    out_dir: str | os.PathLike | None = None,
    runs_root: str | os.PathLike | None = None,
    scratch: str | os.PathLike | None = None,
) -> TrainingRun:
    """A new run of ``config`` on ``files``, its settings checked (``DatasetError``, ``ValueError`` at once).

    ``where``: ``auto`` | ``here`` | ``gpu_calls`` | ``torchrun`` (see the module's docstring). Under torchrun:
    ``processes`` (default: one per GPU) and ``scratch``, a folder for the child's job file (default: the system's
    temporary folder).
    """
    if where not in WHERE:
        raise ValueError(f"where must be one of {', '.join(WHERE)}, got {where!r}")
    if where == "torchrun":
        nproc = processes or gpu_count()
        return TorchrunRun(config, files, report, processes=nproc, out_dir=out_dir, scratch=scratch)
    trainer = Trainer(config, files, report=report, out_dir=out_dir, runs_root=runs_root)
    if where == "gpu_calls" or (where == "auto" and gpu.zero_gpu()):
        return GPUCallsRun(trainer, files, report)
    return LocalRun(trainer)


def continue_training(
    run_dir: str | os.PathLike, files: LabeledFiles, more_epochs: int, *, report: DatasetReport | None = None
) -> TrainingRun:
    """The finished or stopped run in ``run_dir``, trained ``more_epochs`` more on ``files`` (its own data): here,
    or in GPU calls on ZeroGPU.

    ``FileNotFoundError`` for a run that kept no state, ``ValueError`` for other classes or a bad number."""
    if isinstance(more_epochs, bool) or not isinstance(more_epochs, int) or not 1 <= more_epochs <= 10_000:
        raise ValueError(f"more epochs must be a whole number from 1 to 10000, got {more_epochs!r}")
    state = LoopState.load(run_dir)
    trainer = Trainer.from_state(state, files, report=report, more_epochs=more_epochs)
    if gpu.zero_gpu():
        return GPUCallsRun(trainer, files, report, state=state, more_epochs=more_epochs)
    return LocalRun(trainer)
