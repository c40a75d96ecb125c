"""The Predict tab's Speed choice: which backend answers (``serving.backends``), each with the latency measured on
this server for the selected model, and what is being prepared, failed or was not kept, and why."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gradio as gr

from ..serving import predict
from ..serving.backends import LABELS, BackendStatus
from .classify import selection

__all__ = ["POLL_S", "SPEED_CHOICES", "SPEED_INFO", "speed_choices", "speed_note", "speed_status"]

SPEED_CHOICES = [(LABELS[b], b) for b in ("auto", "torch", "onnxruntime", "int8")]
SPEED_INFO = (
    "Auto: ONNX Runtime once it is ready (prepared in the background on first use of a model), PyTorch until "
    "then. int8: quantized, kept only where it gives the same top class on 99% of held-out images."
)
POLL_S = 2.0  # while a backend is being prepared, the page asks for its state this often
NOT_MEASURED = "Each backend's latency on this server shows here once the model has answered a first time."


def speed_choices(states: Sequence[BackendStatus]) -> list[tuple[str, str]]:
    """The radio's choices, each with its measured batch-1 latency (the forward pass) when there is one."""
    by_name = {s.backend: s for s in states}
    choices = []
    for label, value in SPEED_CHOICES:
        status = by_name.get("onnxruntime" if value == "auto" else value)
        if value == "auto":
            ready = status is not None and status.state == "ready"
            status = status if ready else by_name.get("torch")
        ms = status.latency_ms if status is not None and status.state in ("ready", "not kept") else None
        choices.append((f"{label} · {ms:.0f} ms" if ms else label, value))
    return choices


def speed_note(states: Sequence[BackendStatus]) -> str:
    """One line per backend that is not simply ready: being prepared, failed, not kept or unavailable, and why."""
    if not states:
        return NOT_MEASURED
    lines = ["Latency: one image's forward pass on this server, measured when each backend became ready."]
    for status in states:
        if status.state == "ready" and status.backend == "int8" and status.note:
            lines.append(f"int8: {status.note}.")
        elif status.state == "preparing":
            lines.append(f"{LABELS[status.backend]}: being prepared in the background (export and check, once)…")
        elif status.state in ("failed", "not kept", "unavailable"):
            lines.append(f"{LABELS[status.backend]} {status.state}: {status.note}")
    return "\n\n".join(lines)


def speed_status(
    model: Any, weights_choice: str | None, weights_file: str | None, state: dict[str, Any] | None
) -> tuple[Any, str, Any]:
    """The Speed radio, its note and the poll timer for the selected model, from the cached predictor (a model not
    built yet is not built here: its latencies show after its first answer)."""
    try:
        predictor = predict.cached_predictor(*selection(model, weights_choice, weights_file, state))
    except gr.Error:
        predictor = None
    states = predictor.backend_states() if predictor is not None else []
    preparing = any(s.state == "preparing" for s in states)
    return gr.update(choices=speed_choices(states)), speed_note(states), gr.Timer(active=preparing)
