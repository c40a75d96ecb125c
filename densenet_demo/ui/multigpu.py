"""The Fine-tune tab's "use all N GPUs": shown only where the server has more than one GPU. A run with it checked
is a ``torchrun`` child process (``multi_gpu.train_on_all_gpus``) whose events the tab renders as its own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr

from ..hosting import sessions
from ..training import distributed
from ..training import loop as train
from ..training import torchrun as multi_gpu
from .common import user_errors

__all__ = ["build_gpu_option", "gpu_run", "starting_text"]


def build_gpu_option() -> gr.Checkbox:
    """The checkbox, visible only with two GPUs or more (on one GPU or the CPU the tab stays as it was)."""
    n = distributed.gpu_count()
    return gr.Checkbox(
        value=False,
        label=f"Use all {n} GPUs",
        info="one training process per GPU (torchrun, DistributedDataParallel); the batch size is per GPU, so one "
        f"step sees {n} times as many images",
        visible=n > 1,
        elem_id="train-all-gpus",
    )


def gpu_run(
    config: train.TrainConfig, dataset: tuple[Any, Any], session: sessions.Session, cancel: train.CancelToken
) -> Iterator[train.Event]:
    """The run's events from one process per GPU; a ``gr.Error`` at once where that cannot be."""
    n = distributed.gpu_count()
    if n < 2:
        raise gr.Error("This server has one GPU or none: untick 'Use all GPUs' and press Start again.")
    files, report = dataset
    with user_errors(ValueError):
        return multi_gpu.train_on_all_gpus(config, files, report, nproc=n, scratch=session.folder(), cancel=cancel)


def starting_text() -> str:
    """The status line while torchrun starts its processes (each imports torch: seconds before the first event)."""
    return f"Starting {distributed.gpu_count()} training processes (torchrun)…"
