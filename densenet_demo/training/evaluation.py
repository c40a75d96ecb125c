"""What a validation pass measures and which epoch is the best: the trainer's scorekeeping, apart from its loop."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .batchnorm_stats import RecentBatches
from .cancel import check_stop
from .data import Placement
from .distributed import Parallel
from .events import CancelToken

__all__ = ["BestEpoch", "ValidationResult", "confusion_and_loss", "oom_advice", "validate"]


@dataclass(frozen=True)
class ValidationResult:
    """One pass over the validation set."""

    loss: float
    acc: float
    per_class: dict[str, float | None]  # None for a class with no val image
    confusion: list[list[int]]  # rows: true class, columns: predicted

    def beats(self, best: BestEpoch | None) -> bool:
        """Higher accuracy wins; at equal accuracy, lower loss."""
        return best is None or (self.acc, -self.loss) > (best.val.acc, -best.val.loss)

    @classmethod
    def from_counts(cls, confusion: torch.Tensor, loss_sum: float, class_names: list[str]) -> ValidationResult:
        """From a confusion matrix (rows: true class) and the summed loss over the same images."""
        total, per_class_total = int(confusion.sum()), confusion.sum(1)
        return cls(
            loss=loss_sum / max(total, 1),
            acc=float(confusion.diag().sum()) / max(total, 1),
            per_class={
                name: float(confusion[i, i] / per_class_total[i]) if per_class_total[i] else None
                for i, name in enumerate(class_names)
            },
            confusion=confusion.tolist(),
        )


@dataclass(frozen=True)
class BestEpoch:
    """The epoch whose weights are the checkpoint on disk."""

    epoch: int
    train_acc: float
    val: ValidationResult

    def metrics(self) -> dict[str, Any]:
        """What the checkpoint records of it (``model.json``'s metrics)."""
        return {
            "val_acc": self.val.acc,
            "val_loss": self.val.loss,
            "train_acc": self.train_acc,
            "epoch": self.epoch,
            "per_class_val_acc": self.val.per_class,
            "confusion_matrix": self.val.confusion,
        }


def confusion_and_loss(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    forward: Callable[[torch.Tensor], torch.Tensor],
    placement: Placement,
    n_classes: int,
    check_cancel: Callable[[], None],
) -> tuple[torch.Tensor, float]:
    """The confusion matrix (on the CPU) and the summed cross-entropy of ``forward`` over ``batches``, without
    gradients; ``check_cancel()`` runs before each batch (it raises to stop)."""
    n = n_classes
    confusion = torch.zeros(n, n, dtype=torch.long)
    loss_sum = 0.0
    with torch.inference_mode():
        for x, y in batches:
            check_cancel()
            x, y = placement.to_device(x, y)
            with placement.autocast():
                logits = forward(x).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            confusion += torch.bincount(y.cpu() * n + logits.argmax(1).cpu(), minlength=n * n).view(n, n)
    return confusion, loss_sum


def validate(
    model: torch.nn.Module,
    forward: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    placement: Placement,
    class_names: list[str],
    shares: Parallel,
    recent: RecentBatches,
    cancel: CancelToken,
) -> ValidationResult:
    """One pass over the validation set in eval mode, its BatchNorm statistics first recomputed from the recent
    training batches (training/batchnorm_stats.py); counts summed over every process's share (``shares``), so that
    the result is the whole validation set's. A set ``cancel`` raises ``Stop`` between batches."""
    recent.recalibrate(model, placement.autocast())  # statistics of these weights
    model.eval()
    n = len(class_names)
    confusion, loss_sum = confusion_and_loss(batches, forward, placement, n, lambda: check_stop(cancel))
    (loss_sum,) = shares.sum(loss_sum)
    return ValidationResult.from_counts(shares.sum_tensor(confusion), loss_sum, class_names)


def oom_advice(batch_size: int, image_size: int | None, memory_efficient: bool, device: torch.device) -> str:
    """What to change after running out of memory."""
    tips = [f"a smaller batch size (now {batch_size})", f"a smaller image size (now {image_size})"]
    if not memory_efficient:
        tips.append("memory-efficient on (recomputes the concatenations in backward)")
    where = "the GPU" if device.type == "cuda" else "this machine"
    return f"out of memory on {where}; try " + ", ".join(tips[:-1]) + f" or {tips[-1]}"
