"""The Fine-tune tab's "use all N GPUs": shown only where the server has more than one GPU. A run with it checked
is a torchrun child, one process per GPU (``runners.start(..., where="torchrun")``), followed like any run."""

from __future__ import annotations

import gradio as gr

from ..data.datasets import DatasetReport, LabeledFiles
from ..hosting import sessions
from ..training import runners
from ..training.config import TrainConfig
from ..training.distributed import gpu_count

__all__ = ["build_gpu_option", "gpu_run"]


def build_gpu_option() -> gr.Checkbox:
    """The checkbox, visible only with two GPUs or more (on one GPU or the CPU the tab stays as it was)."""
    n = gpu_count()
    return gr.Checkbox(
        value=False,
        label=f"Use all {n} GPUs",
        info="one training process per GPU (torchrun, DistributedDataParallel); the batch size is per GPU, so one "
        f"step sees {n} times as many images",
        visible=n > 1,
        elem_id="train-all-gpus",
    )


def gpu_run(
    config: TrainConfig, files: LabeledFiles, report: DatasetReport, session: sessions.Session
) -> runners.TrainingRun:
    """The run on every GPU (its job file in the session's folder); a ``gr.Error`` where there are fewer than two.
    ``ValueError`` for what several processes cannot do (a time budget)."""
    n = gpu_count()
    if n < 2:
        raise gr.Error("This server has one GPU or none: untick 'Use all GPUs' and press Start again.")
    return runners.start(config, files, report=report, where="torchrun", processes=n, scratch=session.folder())
