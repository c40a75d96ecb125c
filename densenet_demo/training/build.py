"""What a training run is built from: the device it trains on, its mixed precision, the model with its starting
weights and a head for the data's classes, the optimizer, and the rest of what the loop trains with (``RunParts``,
built by ``build_parts`` when a run starts). Its settings are training/config.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..data.images import Preprocessing
from ..hosting import gpu
from ..model import DenseNet
from ..weights import checkpoints
from ..weights import resolver as W
from .batchnorm_stats import RecentBatches
from .cancel import stop_inside_steps
from .config import TrainConfig
from .data import Placement, drops_last
from .distributed import Alone, Parallel
from .events import CancelToken
from .pacing import EpochSums, LRSchedule, RunClock, RunningMetrics, cudnn_autotune_pays, pace
from .state import LoopState

__all__ = ["RunParts", "build_model", "build_parts", "make_optimizer", "pick_amp_dtype", "pick_device"]


def pick_device(choice: str) -> torch.device:
    """``auto`` -> CUDA when there is a GPU, else the CPU; asking for CUDA without one is an error.

    Asked when a run starts, never at import: on ZeroGPU there is a GPU only inside a GPU call (hosting/gpu.py), and the
    Space's own process, which checks the settings, works on the CPU whatever was asked for.
    """
    if choice == "auto" or gpu.deferred():
        return gpu.device()
    device = torch.device(choice)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but this machine has no usable GPU; use 'auto' or 'cpu'")
    return device


def pick_amp_dtype(choice: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: ``auto`` is bf16 where the GPU has it, else fp16 (with loss scaling); off on CPUs."""
    if choice == "off" or (choice == "auto" and device.type != "cuda"):
        return None
    if choice == "fp16" and device.type != "cuda":
        raise ValueError("fp16 mixed precision needs a CUDA GPU; use amp 'bf16' or 'off' on the CPU")
    if choice == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if choice == "bf16" else torch.float16


def build_model(cfg: TrainConfig, class_names: list[str]) -> tuple[DenseNet, Preprocessing, str]:
    """The model to train with its starting weights (``weights.resolve``) and a head for ``class_names``.

    Returns ``(model, preprocessing, label)``; the label says where the weights came from.
    """
    n = len(class_names)
    spec = W.resolve(cfg.model, "random" if cfg.mode == "scratch" else cfg.weights)
    if spec.kind == "checkpoint":
        model, info = checkpoints.load_checkpoint(spec.path)
        if list(info.class_names) != list(class_names):
            model.reset_classifier(n)  # other classes: keep the backbone, start a new head
        preprocessing, label = info.preprocessing, f"checkpoint {spec.path.name}"
    else:
        loaded = W.load_model(spec, num_classes=n, fallback_to_random=False)
        model, preprocessing, label = loaded.model, loaded.preprocessing, loaded.label
        if spec.kind == "imagenet":
            label += f", new {n}-class head"
    model.set_grad_checkpointing(cfg.memory_efficient)
    if cfg.image_size is not None and cfg.image_size != preprocessing.image_size:
        preprocessing = preprocessing.with_image_size(cfg.image_size)
    return model, preprocessing, label


def make_optimizer(cfg: TrainConfig, model: DenseNet) -> torch.optim.Optimizer:
    """AdamW, or SGD with Nesterov momentum 0.9 (the paper); finetune gives the backbone a smaller lr."""
    head = list(model.classifier.parameters())
    if cfg.mode == "linear":
        groups = [{"params": head, "lr": cfg.lr}]
    elif cfg.mode == "finetune":
        groups = [{"params": list(model.features.parameters()), "lr": cfg.lr * cfg.backbone_lr_factor}]
        groups.append({"params": head, "lr": cfg.lr})
    else:
        groups = [{"params": list(model.parameters()), "lr": cfg.lr}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    # The fused kernel updates every tensor in one pass: on the CPU 18 ms a step for DenseNet-121 instead of 73 ms.
    fused = all(p.device.type in ("cpu", "cuda") for group in groups for p in group["params"])
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)


@dataclass
class RunParts:
    """What a run trains with, built when it starts (``build_parts``), by name."""

    model: DenseNet
    preprocessing: Preprocessing
    weights_label: str  # where the starting weights came from, for people
    linear: bool  # a frozen backbone: only the head trains
    cached: bool  # linear mode on a feature cache: the inputs are pooled features
    trained: nn.Module  # what the optimizer updates: the head in linear mode, else the model
    wrapped: nn.Module  # ``trained`` behind the parallel strategy's wrapper (DDP), for the training steps
    shares: Parallel  # sums per-image counts: the strategy when each process trains on its share, else Alone
    global_batch: int  # images per optimizer step over every process
    lr_scaling: str  # the lr rule for that batch, in words
    steps_per_epoch: int
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedule: LRSchedule
    clock: RunClock
    metrics: RunningMetrics
    mid_step: int | None  # the step of epoch 1 after which a short run validates too
    recent: RecentBatches  # inputs to recompute BatchNorm statistics from before a validation
    cancel_hooks: list[RemovableHandle] = field(default_factory=list)  # Stop inside a step; removed at the end
    train_source: Any = None  # a FeatureCache or a DataLoader, once the run has them
    val_source: Any = None

    @property
    def ranks(self) -> int:
        """Processes whose images add up to an epoch."""
        return self.shares.world_size

    def go_on_from(self, state: LoopState, device: torch.device) -> None:
        """A run that goes on: weights, optimizer, scaler, RNG, clock and BatchNorm batches from ``state``."""
        state.load_into(self.model, self.optimizer, self.scaler, device)
        self.clock.go_on_from(state.clock)
        self.recent.load(state.recent_batches, device)

    def taken(self, state: LoopState, sums: EpochSums, device: torch.device) -> LoopState:
        """``state`` with what the run trains with now, as CPU tensors (to go on elsewhere)."""
        cache = [[s.features, s.labels] for s in (self.train_source, self.val_source)] if self.cached else None
        return state.with_tensors(
            model=self.model, optimizer=self.optimizer, scaler=self.scaler, device=device, sums=sums,
            clock=self.clock.reading(), cache=cache, recent_batches=self.recent.state(),
        )  # fmt: skip

    def forward(self, x: torch.Tensor, trained: nn.Module | None = None) -> torch.Tensor:
        """Logits; training passes ``wrapped`` as ``trained``, evaluation the plain module (no collectives)."""
        trained = trained or self.trained
        if self.cached:  # x holds pooled features already
            return trained(x)
        if self.linear:  # frozen backbone, run on every batch of every epoch
            with torch.no_grad():
                x = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
            return trained(x.float())
        return trained(x)


def build_parts(
    cfg: TrainConfig,
    class_names: list[str],
    *,
    placement: Placement,
    parallel: Parallel,
    cancel: CancelToken,
    n_train: int,
    n_val: int,
    launched: float,
) -> RunParts:
    """The model with its starting weights on the run's device, what trains and its optimizer, the pacing and the
    share of each process (the sources come later: linear mode computes its feature cache with events).
    ``launched``: ``time.monotonic()`` at the run's start, before the model was built (a time budget counts
    from there)."""
    device = placement.device
    model, preprocessing, label = build_model(cfg, class_names)
    model.to(device, memory_format=torch.channels_last if placement.channels_last else torch.preserve_format)
    linear = cfg.mode == "linear"
    cached = linear and cfg.cache_features
    if linear:
        model.requires_grad_(False).classifier.requires_grad_(True)
    sharded = parallel.world_size > 1 and not cached  # each process on its share, not the gathered cache
    model = parallel.prepare(model, trains_backbone=not linear)
    n_train = parallel.samples_per_rank(n_train) if sharded else n_train
    global_batch, lr_rule = parallel.describe_batch(cfg.batch_size, cfg.lr, sharded=sharded)
    # Alone, Stop need not wait for the step to end (several processes must stop at the same step).
    hooks = stop_inside_steps(model, cancel) if parallel.stops_anywhere else []
    trained = model.classifier if linear else model
    batches_of = math.floor if drops_last(n_train, cfg.batch_size, device) and not cached else math.ceil
    steps_per_epoch = batches_of(n_train / cfg.batch_size)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cudnn_autotune_pays(steps_per_epoch * cfg.epochs, cfg.time_budget_s)
        torch.cuda.reset_peak_memory_stats(device)
    optimizer = make_optimizer(cfg, model)
    schedule, clock, metrics, mid_step = pace(cfg, optimizer, device, steps_per_epoch, launched, n_val)
    return RunParts(
        model=model,
        preprocessing=preprocessing,
        weights_label=label,
        linear=linear,
        cached=cached,
        trained=trained,
        wrapped=parallel.wrap(trained, device),
        shares=parallel if sharded else Alone(),
        global_batch=global_batch,
        lr_scaling=lr_rule,
        steps_per_epoch=steps_per_epoch,
        optimizer=optimizer,
        scaler=torch.amp.GradScaler(device.type, enabled=placement.amp_dtype == torch.float16),
        schedule=schedule,
        clock=clock,
        metrics=metrics,
        mid_step=mid_step,
        recent=RecentBatches(0 if linear else cfg.bn_recalibration),  # linear: the backbone keeps its own
        cancel_hooks=hooks,
    )
