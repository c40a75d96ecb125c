"""Two endpoints made for programs and agents: ``/classify_image`` (one image, its top classes) and
``/architecture_table`` (a preset's per-layer channel growth). With the MCP server on (ui/app.py) they are its
tools ``classify_image`` and ``architecture_table``: their docstrings are what an agent reads."""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd

from ..config import PRESETS
from . import predict_tab
from .architecture_tab import ArchitectureTab, config_fields, show_architecture
from .classify import classify_paths
from .predict_tab import PredictTab

__all__ = ["architecture_table", "classify_image", "wire_agent_tools"]


def wire_agent_tools(predict: PredictTab, architecture: ArchitectureTab, state: gr.State) -> None:
    """The two endpoints, on the tabs' own fields (their defaults are the page's); no button of their own."""
    gr.on(
        [],
        classify_image,
        [predict.photo, predict.model, predict.weights, predict.top_k, predict.speed, state],
        [predict.label, predict.info],
        api_name="classify_image",
        concurrency_limit=predict_tab.PREDICT_CONCURRENCY,  # read now: bench/serve.py sets it
        concurrency_id="predict",
    )
    gr.on(
        [],
        architecture_table,
        [architecture.preset, architecture.size],
        [architecture.summary, architecture.table],
        api_name="architecture_table",
    )


def classify_image(
    image: str | None,
    model: str = "densenet121",
    weights_choice: str = "ImageNet",
    top_k: float = 5,
    backend: str = "auto",
    state: dict[str, Any] | None = None,
) -> tuple[dict[str, float], str]:
    """Classify one image with a DenseNet: its most likely classes, with their probabilities.

    Args:
        image: the image (a photo, a drawing, a scan: JPEG, PNG, WebP, ...), as a URL or a file.
        model: densenet121 (the default), densenet161, densenet169 or densenet201, which know ImageNet's 1000
            classes; the other presets (CIFAR-style models, densenet_fashion) have no trained weights here; or a
            fine-tuned run as run:<run-id>.
        weights_choice: "ImageNet" (the model's trained weights) or "Random init" (untrained: for testing).
        top_k: how many classes to return, 1 to 10.
        backend: "auto" (the fastest one ready), "torch", "onnxruntime" (same answers, faster) or "int8" (quantized).
            int8 answers only where it gives the same top class as the full-precision model on held-out images.

    Returns:
        The top classes with their probabilities (the first is the most likely), and a note naming the model,
        its weights, the backend that answered and the time taken.
    """
    result = classify_paths([image] if image else [], model, weights_choice, None, top_k, False, state, backend)
    info = f"{result.warning}\n\n{result.info}" if result.warning else result.info
    return result.label, info


def architecture_table(model: str = "densenet121", image_size: float | None = None) -> tuple[str, pd.DataFrame]:
    """A DenseNet preset's architecture as a per-layer table: how the channels grow (a dense layer's input is
    k0 + k·(l-1) channels: the block's input and every earlier layer's k new ones), with each layer's output size,
    parameters, multiply-accumulates and activation memory; and a summary of the totals.

    Args:
        model: densenet121, densenet161, densenet169, densenet201 (ImageNet), densenet40_k12, densenet100_k12,
            densenet100_k24, densenet_bc100_k12, densenet_bc250_k24, densenet_bc190_k40 (the paper's CIFAR
            models) or densenet_fashion (a small grayscale model).
        image_size: the input side in pixels (empty or 0: the model's own, 224 for ImageNet models, 32 for CIFAR).

    Returns:
        A summary (variant, depth, growth rate, parameters, MACs, training memory) and the table, one row per layer.
    """
    if not isinstance(model, str) or model not in PRESETS:
        raise gr.Error(f"Unknown model {str(model)[:100]!r}: choose one of {', '.join(PRESETS)}.")
    fields = config_fields(PRESETS[model].config)
    summary, table, _, _ = show_architecture(model, *fields[:8], image_size, "none", fields[8])
    return summary, table
