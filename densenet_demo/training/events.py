"""What a training run reports, and how it is stopped: the event dataclasses and the cancel token.

``Trainer.run()`` (training/loop.py) yields these; the UI renders them, the CLI prints them, the tests assert on them.
Each event is a frozen dataclass. One codec carries them wherever a run's events cross a process: ``to_dict()``
gives an event's JSON form, tagged with its ``kind``, and ``from_dict()`` makes the event again (the command
line's ``--json``, a torchrun child's events, the tests).
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

__all__ = [
    "CancelToken",
    "Event",
    "Preparing",
    "Started",
    "Caching",
    "Step",
    "Evaluated",
    "Validating",
    "EpochEnd",
    "Finished",
    "Cancelled",
    "Failed",
    "Paused",
    "from_dict",
]


class CancelToken:
    """Thread-safe stop flag: the UI's Stop button calls ``cancel()``; the trainer checks between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


@dataclass(frozen=True)
class Event:
    kind: ClassVar[str] = "event"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with an ``"event"`` tag (``"step"``, ``"epoch_end"``, ...)."""
        return {"event": self.kind, **asdict(self)}


@dataclass(frozen=True)
class Preparing(Event):
    """Something slow before the first step (building the model, loading weights, the first batch)."""

    kind: ClassVar[str] = "preparing"
    what: str  # for people: "building densenet121 (random weights)"


@dataclass(frozen=True)
class Started(Event):
    kind: ClassVar[str] = "started"
    run_id: str
    classes: list[str]
    n_train: int
    n_val: int
    steps_per_epoch: int
    epochs: int
    device: str
    mode: str
    amp: str | None  # 'bfloat16' / 'float16' when mixed precision is on
    weights: str  # where the starting weights came from, for people
    config: dict[str, Any]
    # Distributed training (torchrun): processes, images per optimizer step over all of them, the lr rule.
    world_size: int = 1
    global_batch_size: int | None = None
    lr_scaling: str = "none: one process"
    time_budget_s: float | None = None  # the run stops on time; ``epochs`` is then only an upper bound


@dataclass(frozen=True)
class Caching(Event):
    """Linear mode: features computed for ``done`` of ``total`` images (train + val), once."""

    kind: ClassVar[str] = "caching"
    done: int
    total: int


@dataclass(frozen=True)
class Step(Event):
    kind: ClassVar[str] = "step"
    epoch: int  # 1-based
    step: int  # 1-based within the epoch
    steps: int  # steps per epoch
    loss: float  # smoothed training loss, as last read from the device (every step on a CPU, ~2x/s on a GPU)
    acc: float  # training accuracy over the epoch so far, read likewise
    lr: float  # the head's
    images_per_s: float  # over the epoch so far
    gpu_memory_mb: float | None  # peak CUDA memory allocated; None on the CPU
    eta_s: float  # until the run ends: at the pace so far, or what is left of the time budget
    progress: float = 0.0  # of the whole run, 0 -> 1 (steps, or the time budget)


@dataclass(frozen=True)
class Evaluated(Event):
    """A validation inside an epoch (a short run's first result at half an epoch); epoch ends bring EpochEnd."""

    kind: ClassVar[str] = "evaluated"
    epoch: float  # epochs done, e.g. 0.5
    val_loss: float
    val_acc: float
    best_val_acc: float
    improved: bool  # the new best, saved
    seconds: float  # since the run started


@dataclass(frozen=True)
class Validating(Event):
    """A validation begins (at half of a short run's first epoch, or at an epoch's end): seconds pass with no
    step, and the clock's estimate stands still meanwhile."""

    kind: ClassVar[str] = "validating"
    epoch: float  # epochs done when it began, e.g. 0.5 or 3
    images: int  # validation images (over every process)


@dataclass(frozen=True)
class EpochEnd(Event):
    kind: ClassVar[str] = "epoch_end"
    epoch: int
    epochs: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    per_class_val_acc: dict[str, float | None]  # None for a class with no val image
    seconds: float
    best_val_acc: float
    improved: bool  # this epoch is the new best and was saved
    skipped: list[tuple[str, str]] = field(default_factory=list)  # found corrupt this epoch (1st: + caching)
    fraction: float = 1.0  # of the epoch's steps taken: less when a time budget ended the run inside it


@dataclass(frozen=True)
class Finished(Event):
    kind: ClassVar[str] = "finished"
    best_val_acc: float
    best_epoch: int
    checkpoint_dir: str
    confusion_matrix: list[list[int]]  # of the best epoch on val; rows: true class, columns: predicted
    class_names: list[str]
    epochs_run: int
    stopped_early: bool
    seconds: float
    skipped: list[tuple[str, str]]  # every image dropped during training (path, reason)
    per_class_val_acc: dict[str, float | None] = field(default_factory=dict)  # of the best epoch, like the matrix
    out_of_time: bool = False  # the time budget ended the run


@dataclass(frozen=True)
class Cancelled(Event):
    kind: ClassVar[str] = "cancelled"
    checkpoint_dir: str | None  # the best so far (or the weights at the cancel, before any epoch ended)
    epoch: int
    best_val_acc: float | None
    confusion_matrix: list[list[int]] | None = None  # of the best epoch so far; None before any epoch ended
    class_names: list[str] = field(default_factory=list)
    per_class_val_acc: dict[str, float | None] = field(default_factory=dict)  # of the best epoch so far


@dataclass(frozen=True)
class Failed(Event):
    kind: ClassVar[str] = "failed"
    message: str  # for people: what went wrong and what to do
    detail: str | None = None  # the traceback, for logs (the trainer logs it at ERROR too)
    checkpoint_dir: str | None = None  # the best so far, if an epoch had ended


@dataclass(frozen=True)
class Paused(Event):
    """The run stopped at a step boundary because its time (``run(deadline=...)``) was up, to go on elsewhere:
    ``Trainer.paused_state`` holds where it was (a GPU call's worth of training on ZeroGPU, training/state.py)."""

    kind: ClassVar[str] = "paused"
    epoch: int
    step: int  # steps of ``epoch`` done


_ALL = (Preparing, Started, Caching, Step, Validating, Evaluated, EpochEnd, Finished, Cancelled, Failed, Paused)
_KINDS: dict[str, type[Event]] = {cls.kind: cls for cls in _ALL}


def from_dict(record: dict[str, Any]) -> Event:
    """The event whose ``to_dict()`` gave ``record``; ``ValueError`` for a record of no event kind.

    Fields this version does not know are left out (a newer writer may add some); the (path, reason) pairs of
    ``skipped`` come back as tuples, so that an event survives the trip unchanged.
    """
    cls = _KINDS.get(record.get("event", ""))
    if cls is None:
        raise ValueError(f"not a training event: {str(record)[:200]}")
    values = {f.name: record[f.name] for f in fields(cls) if f.name in record}
    if "skipped" in values:
        values["skipped"] = [tuple(pair) for pair in values["skipped"]]
    return cls(**values)
