"""What the trainer feeds its model: loaders of decoded images, linear mode's feature cache, and where batches go.

``image_loader`` decodes labelled files in batches that skip images failing to decode (``data``'s collate);
``FeatureCache`` holds the pooled backbone features of every image, computed once, and hands them out in
batches; ``Placement`` puts a batch on the run's device, in its memory format, under its mixed precision.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Sampler

from ..data.datasets import DatasetError, ImageFileDataset, Item, collate_skipping_failures
from ..data.images import Preprocessing
from .cancel import check_stop
from .config import TrainConfig
from .events import Caching, CancelToken

__all__ = [
    "Batch",
    "FeatureCache",
    "Placement",
    "cache_features",
    "drops_last",
    "image_loader",
    "iterate_batches",
    "note_failures",
]

Batch = tuple[torch.Tensor, torch.Tensor]  # (inputs, labels)


@dataclass(frozen=True)
class Placement:
    """Where a run's tensors go: its device, channels-last memory for images, mixed precision (None: off)."""

    device: torch.device
    channels_last: bool = False
    amp_dtype: torch.dtype | None = None

    def to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch (inputs, labels) on the device; images (4-d inputs) in channels-last memory when asked."""
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for the forward pass, or nothing when it is off."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def peak_memory_mb(self) -> float | None:
        """Peak CUDA memory allocated so far; None on the CPU."""
        return torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else None


@dataclass(frozen=True)
class FeatureCache:
    """Linear mode: the pooled backbone features of every decoded image and its label, on the device."""

    features: torch.Tensor
    labels: torch.Tensor

    @staticmethod
    def builder(model: torch.nn.Module, placement: Placement) -> _FeatureCacheBuilder:
        """Collects ``model``'s pooled features (eval mode, no gradients) batch by batch: ``add(x, y)``, ``build()``."""
        return _FeatureCacheBuilder(model, placement)

    def batches(self, batch_size: int, shuffle_seed: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(features, labels) in batches: in a random order drawn from ``shuffle_seed``, or as stored for None."""
        n = len(self.labels)
        if shuffle_seed is None:
            order = torch.arange(n)
        else:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(shuffle_seed))
        for i in range(0, n, batch_size):
            index = order[i : i + batch_size].to(self.labels.device)
            yield self.features[index], self.labels[index]


class _FeatureCacheBuilder:
    """Collects a frozen model's pooled features batch by batch (``FeatureCache.builder``)."""

    def __init__(self, model: torch.nn.Module, placement: Placement) -> None:
        self.model, self.placement = model.eval(), placement
        self.features: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.images = 0

    def add(self, x: torch.Tensor | None, y: torch.Tensor | None) -> int:
        """Features of one batch (None: every image of it failed to decode); returns the images added."""
        if x is None:
            return 0
        x, y = self.placement.to_device(x, y)
        with torch.inference_mode(), self.placement.autocast():
            self.features.append(self.model.forward_head(self.model.forward_features(x), pre_logits=True).float())
        self.labels.append(y)
        self.images += len(y)
        return len(y)

    def build(self) -> FeatureCache:
        if not self.features:
            raise DatasetError("none of the images could be decoded; see the skipped files")
        # Outside inference mode, cat makes ordinary tensors, which autograd may save for the head's backward.
        return FeatureCache(torch.cat(self.features), torch.cat(self.labels))


def drops_last(n_images: int, batch_size: int, device: torch.device) -> bool:
    """Whether training leaves out each epoch's odd-sized last batch (the shuffle leaves out other images each
    epoch): on a GPU, where a new batch shape costs new kernels (and cuDNN a new search), once the epoch has 8
    batches or more, so that less than an eighth is left out; anywhere, a last batch of one image, which
    BatchNorm cannot normalise."""
    remainder = n_images % batch_size if n_images > batch_size else 0
    return remainder == 1 or (remainder > 0 and device.type == "cuda" and n_images >= 8 * batch_size)


def image_loader(
    items: list[Item],
    preprocessing: Preprocessing,
    config: TrainConfig,
    device: torch.device,
    *,
    train: bool,
    sampler: Callable[..., Sampler[int]] | None = None,
) -> DataLoader:
    """Batches of (images, labels, failures): augmented and shuffled (seeded) for ``train``, plain and in order
    otherwise. Each batch leaves out the images that failed to decode and names them in ``failures``.

    ``sampler(dataset, shuffle=, seed=)`` picks this process's share of the images (distributed training).
    """
    transform = preprocessing.train_transform(config.augment) if train else preprocessing.to_tensor
    dataset = ImageFileDataset(items, transform, mode=preprocessing.mode, draft_size=preprocessing.resize_size)
    workers = config.num_workers
    if workers is None:  # decoding in the main process on a CPU: its cores are busy training already
        workers = min(8, os.cpu_count() or 1) if device.type == "cuda" else 0
    chosen = sampler(dataset, shuffle=train, seed=config.seed) if sampler is not None else None
    share = len(chosen) if chosen is not None and hasattr(chosen, "__len__") else len(dataset)
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=train and chosen is None,
        sampler=chosen,
        generator=torch.Generator().manual_seed(config.seed),
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
        collate_fn=collate_skipping_failures,
        drop_last=train and drops_last(share, config.batch_size, device),
    )


def note_failures(skipped: list[tuple[str, str]], failed: list[tuple[str, str]]) -> None:
    """Add the images that failed to decode to ``skipped`` (path, reason), each path once."""
    known = {path for path, _ in skipped}
    skipped += [(path, reason) for path, reason in failed if path not in known]


def iterate_batches(
    source: FeatureCache | DataLoader, batch_size: int, shuffle_seed: int | None, skipped: list[tuple[str, str]]
) -> Iterator[Batch]:
    """(inputs, labels) of one pass: from a feature cache, shuffled by ``shuffle_seed`` (None: in order), or
    decoded images minus the failures, which go into ``skipped`` (a loader keeps its own order)."""
    if isinstance(source, FeatureCache):
        yield from source.batches(batch_size, shuffle_seed)
        return
    for x, y, failed in source:
        note_failures(skipped, failed)
        if x is not None:
            yield x, y


def cache_features(
    items: list[Item],
    model: torch.nn.Module,
    preprocessing: Preprocessing,
    config: TrainConfig,
    placement: Placement,
    *,
    cancel: CancelToken,
    skipped: list[tuple[str, str]],
    done: int,
    total: int,
) -> Generator[Caching, None, FeatureCache]:
    """Linear mode: the pooled backbone features of ``items``, computed once, in eval mode and without
    augmentation; ``Caching`` events count ``done`` on towards ``total``. Images that fail to decode go into
    ``skipped``."""
    loader = image_loader(items, preprocessing, config, placement.device, train=False)
    cache = FeatureCache.builder(model, placement)
    for x, y, failed in loader:
        check_stop(cancel)
        done += len(failed) + cache.add(x, y)
        note_failures(skipped, failed)
        yield Caching(done, total)
    return cache.build()
