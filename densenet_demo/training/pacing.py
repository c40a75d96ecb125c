"""How a training run is paced: the lr by the run's progress, when to validate, when a time budget runs out,
how often the loss is read back from the device, and whether cuDNN autotuning pays.

Progress runs from 0 to 1 over the run: by steps when the run is counted in epochs, by the clock under a time
budget. The lr follows progress (a linear warm-up, then the schedule's shape), so a run of 60 seconds decays its
lr to the end of its 60 seconds just as a run of 5 epochs decays it to the end of epoch 5.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .config import TrainConfig

__all__ = [
    "CallDeadline",
    "ClockReading",
    "EpochSums",
    "LRSchedule",
    "RunClock",
    "RunningMetrics",
    "Snapshot",
    "cudnn_autotune_pays",
    "lr_factor",
    "mid_epoch_step",
    "pace",
]

# cuDNN autotuning times every algorithm on the first batch of each new shape (9-31 s for DenseNet-121 on an
# H100, measured) and then runs within +-10% of the untuned speed: only runs of many steps can win that back.
AUTOTUNE_MIN_STEPS = 5_000
AUTOTUNE_MIN_BUDGET_S = 600.0
# One-cycle: the lr climbs from max/25 to max over the first 30% of the run, then anneals (torch's OneCycleLR).
_ONECYCLE_RISE, _ONECYCLE_START = 0.3, 1 / 25
_SMOOTHING = 0.1  # weight of the newest batch in the smoothed training loss
# A pause leaves room for the next step (and the validation after it) to run 1.5x slower than the last one.
SLOWER_STEP = 1.5


def lr_factor(schedule: str, warmup: float, progress: float) -> float:
    """The lr multiplier at ``progress`` (0 -> 1) of the run: a linear warm-up over ``warmup``, then the shape."""
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "onecycle":
        if progress < _ONECYCLE_RISE:
            rise = 0.5 * (1.0 - math.cos(math.pi * progress / _ONECYCLE_RISE))
            return _ONECYCLE_START + (1.0 - _ONECYCLE_START) * rise
        return 0.5 * (1.0 + math.cos(math.pi * (progress - _ONECYCLE_RISE) / (1.0 - _ONECYCLE_RISE)))
    if warmup > 0 and progress < warmup:
        return max(progress / warmup, 0.01)
    if schedule == "step":  # the paper: /10 at 50% and at 75% of the run
        return 1.0 if progress < 0.5 else 0.1 if progress < 0.75 else 0.01
    return 0.5 * (1.0 + math.cos(math.pi * (progress - warmup) / max(1e-9, 1.0 - warmup)))


class LRSchedule:
    """Sets each parameter group's lr from the run's progress; the groups' lrs at creation are the peaks."""

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: str, warmup: float) -> None:
        self.optimizer, self.schedule, self.warmup = optimizer, schedule, warmup
        self.peaks = [group["lr"] for group in optimizer.param_groups]
        self.apply(0.0)

    def apply(self, progress: float) -> None:
        factor = lr_factor(self.schedule, self.warmup, progress)
        for group, peak in zip(self.optimizer.param_groups, self.peaks, strict=True):
            group["lr"] = peak * factor


@dataclass(frozen=True)
class EpochSums:
    """The epoch's running training metrics so far (``pacing.RunningMetrics``) and the time spent in it."""

    seconds: float = 0.0
    seen: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    smoothed_loss: float | None = None  # carries on across epochs


@dataclass(frozen=True)
class ClockReading:
    """A time budget's clock (``pacing.RunClock``), relative to the run's launch."""

    elapsed: float = 0.0  # since the launch, over the calls before (the budget counts these, not the gaps)
    training_started: float | None = None  # seconds after the launch when the first step began
    images: int = 0  # trained on so far (the clock's pace)
    validation_s: float | None = None  # the last validation's duration


class RunClock:
    """Where a run stands: its progress by steps, or by time under a budget, and whether its time is up.

    Under a budget the time is counted from ``launched`` (before the model is built). Training stops early
    enough for the last validation and the checkpoint to fit in the budget: that reserve is the last measured
    validation (+20%), or before any, the validation images at a third of a training image's time each.
    """

    def __init__(self, total_steps: int, *, budget_s: float | None, launched: float, n_val: int) -> None:
        self.total_steps, self.budget_s, self.launched, self.n_val = max(1, total_steps), budget_s, launched, n_val
        self.train_start: float | None = None
        self.images = 0
        self.validation_s: float | None = None

    def step_done(self, images: int) -> None:
        self.images += images

    def started_training(self) -> None:
        if self.train_start is None:
            self.train_start = time.monotonic()

    def validated(self, seconds: float) -> None:
        self.validation_s = seconds

    def reading(self) -> ClockReading:
        """Where the clock stands, relative to the launch (to go on elsewhere)."""
        started = None if self.train_start is None else self.train_start - self.launched
        return ClockReading(time.monotonic() - self.launched, started, self.images, self.validation_s)

    def go_on_from(self, reading: ClockReading) -> None:
        """A resumed run's clock: the budget counts the time of the calls before this one, not the gaps."""
        self.launched -= reading.elapsed
        self.train_start = None if reading.training_started is None else self.launched + reading.training_started
        self.images, self.validation_s = reading.images, reading.validation_s

    def _reserve_s(self, now: float) -> float:
        if self.validation_s is not None:
            return 1.2 * self.validation_s
        per_image = (now - self.train_start) / self.images if self.images and self.train_start else 0.0
        return 1.2 * per_image * self.n_val / 3 + 0.5

    def _training_end(self, now: float) -> float:
        return self.launched + self.budget_s - self._reserve_s(now)

    def progress(self, steps_done: int) -> float:
        """0 -> 1 over the run: steps done of all steps, or the share of the training time spent."""
        if self.budget_s is None:
            return steps_done / self.total_steps
        now = time.monotonic()
        start = self.train_start or now
        return (now - start) / max(self._training_end(now) - start, 1e-9)

    def eta_s(self, steps_done: int) -> float:
        """Seconds until the run ends: what is left of the budget, or the steps left at the pace so far."""
        now = time.monotonic()
        if self.budget_s is not None:
            return max(0.0, self.launched + self.budget_s - now)
        spent = now - (self.train_start or now)
        return spent / max(steps_done, 1) * max(self.total_steps - steps_done, 0)

    def out_of_time(self, steps_done: int) -> bool:
        """True once the budget (less the reserve) is spent; never before the first step, so there is a result."""
        return self.budget_s is not None and steps_done > 0 and time.monotonic() >= self._training_end(time.monotonic())


class CallDeadline:
    """``Trainer.run(deadline=...)``: pause before a step that (with a validation after it) may not end by the
    deadline (``time.monotonic()``), to go on in another call (training/state.py). A call always takes at least one
    step, so that a chain of calls gets on; no deadline, no pause."""

    def __init__(self, deadline: float | None, val_batches: int) -> None:
        self.deadline, self.val_batches = deadline, val_batches
        self._last: tuple[int, int, float] | None = None  # (epoch, step, time) of the last check
        self._step_s: float | None = None  # the last step's duration
        self._steps_at_start: int | None = None  # the run's steps done when this call began

    def time_is_up(self, epoch: int, step: int, *, steps_done: int, validation_follows: bool, clock: RunClock) -> bool:
        """Before step ``step`` of ``epoch``, with ``steps_done`` steps of the run done."""
        if self.deadline is None:
            return False
        if self._steps_at_start is None:
            self._steps_at_start = steps_done
        stepped = steps_done > self._steps_at_start
        now, last = time.monotonic(), self._last
        self._last = (epoch, step, now)
        if last is not None and last[:2] == (epoch, step - 1):
            self._step_s = now - last[2]
        if self._step_s is None or not stepped:
            return False
        ahead = self._step_s
        if validation_follows:  # before any validation, one takes about a third of a step per batch
            ahead += clock.validation_s if clock.validation_s is not None else self._step_s * self.val_batches / 3
        return now + SLOWER_STEP * ahead >= self.deadline


def mid_epoch_step(epochs: int, steps_per_epoch: int, *, budget_s: float | None) -> int | None:
    """The step of epoch 1 after which to validate as well, so that a short run shows a first result at half an
    epoch: for runs under a time budget and runs of at most 5 epochs, with 10 steps or more per epoch. A quick
    run from scratch is often as good at half an epoch as a plain loop after a whole one (bench/recipe_sweep.py)."""
    if (budget_s is None and epochs > 5) or steps_per_epoch < 10:
        return None
    return steps_per_epoch // 2


def cudnn_autotune_pays(total_steps: int, budget_s: float | None) -> bool:
    """Whether to let cuDNN time its kernels: only for long runs (see AUTOTUNE_MIN_STEPS)."""
    if budget_s is not None:
        return budget_s >= AUTOTUNE_MIN_BUDGET_S
    return total_steps >= AUTOTUNE_MIN_STEPS


@dataclass(frozen=True)
class Snapshot:
    """The training metrics as last read from the device."""

    loss: float  # smoothed over the last batches (exponential moving average)
    seen: int  # images this epoch
    loss_sum: float  # over the epoch so far (mean loss x images)
    correct: int

    @property
    def acc(self) -> float:
        return self.correct / max(self.seen, 1)


class RunningMetrics:
    """The epoch's training loss and accuracy, summed on the device without waiting for it; ``read()`` (a host
    sync on a GPU) when ``due()``: at most every ``interval_s`` (0: every step, free on a CPU) and at an epoch end.
    """

    def __init__(self, device: torch.device, interval_s: float) -> None:
        self.device, self.interval_s = device, interval_s
        self.smoothed: torch.Tensor | None = None
        self.last = Snapshot(float("nan"), 0, 0.0, 0)
        self._read_at = -math.inf
        self.reset()

    def reset(self) -> None:
        """A new epoch: the sums start again; the smoothed loss carries on."""
        self.seen = 0
        self.loss_sum = torch.zeros((), device=self.device)
        self.correct = torch.zeros((), dtype=torch.long, device=self.device)

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        loss = loss.detach().float()
        self.seen += len(labels)
        self.loss_sum += loss * len(labels)
        self.correct += (logits.detach().argmax(1) == labels).sum()
        self.smoothed = loss.clone() if self.smoothed is None else self.smoothed.lerp(loss, _SMOOTHING)

    def sums(self, seconds: float) -> EpochSums:
        """The epoch's sums so far (a host sync on a GPU), with the ``seconds`` spent in it."""
        smoothed = None if self.smoothed is None else float(self.smoothed)
        return EpochSums(seconds, self.seen, float(self.loss_sum), int(self.correct), smoothed)

    def go_on_from(self, sums: EpochSums) -> None:
        """A resumed epoch's sums come back; the smoothed loss carries on whenever the run goes on."""
        if sums.smoothed_loss is not None:
            self.smoothed = torch.tensor(sums.smoothed_loss, device=self.device)
        self.seen = sums.seen
        self.loss_sum = torch.tensor(sums.loss_sum, dtype=self.loss_sum.dtype, device=self.device)
        self.correct = torch.tensor(sums.correct, dtype=self.correct.dtype, device=self.device)

    def due(self) -> bool:
        return time.monotonic() - self._read_at >= self.interval_s

    def read(self) -> Snapshot:
        self._read_at = time.monotonic()
        smoothed = self.smoothed.item() if self.smoothed is not None else float("nan")
        self.last = Snapshot(smoothed, self.seen, self.loss_sum.item(), int(self.correct.item()))
        return self.last


def pace(
    cfg: TrainConfig,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    steps_per_epoch: int,
    launched: float,
    n_val: int,
) -> tuple[LRSchedule, RunClock, RunningMetrics, int | None]:
    """A run's lr schedule, clock, running metrics and mid-epoch validation step, from its (resolved) config."""
    clock = RunClock(steps_per_epoch * cfg.epochs, budget_s=cfg.time_budget_s, launched=launched, n_val=n_val)
    # A read of the running loss waits for the GPU: at most twice a second there; on a CPU it costs nothing.
    metrics = RunningMetrics(device, interval_s=0.5 if device.type == "cuda" else 0.0)
    mid_step = mid_epoch_step(cfg.epochs, steps_per_epoch, budget_s=cfg.time_budget_s)
    return LRSchedule(optimizer, cfg.schedule, cfg.warmup), clock, metrics, mid_step
