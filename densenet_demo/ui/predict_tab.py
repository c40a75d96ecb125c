"""The Predict tab: classify uploaded images with a preset or a fine-tuned run; top-k, Grad-CAM, a table."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import gradio as gr
import pandas as pd

from .. import data, predict, weights
from ..config import PRESETS
from .common import check_run, unknown_model, user_errors
from .run_controls import build_run_controls

__all__ = ["PredictTab", "build_predict_tab", "predict_images", "PREDICT_CONCURRENCY", "WEIGHTS_CHOICES"]

# Prediction requests served at once (the model cache is shared, read-only). bench/serve.py on 2 CPU cores:
# 2 serves 24% more requests/s than 1, and 4 no more than 2 while holding twice the activations in memory.
PREDICT_CONCURRENCY = 2

WEIGHTS_CHOICES = ("ImageNet", "Random init", "Checkpoint file")


class PredictTab(NamedTuple):
    model: gr.Dropdown  # other tabs refresh its runs
    weights: gr.Radio
    images: gr.File
    label: gr.Label
    info: gr.Markdown
    gallery: gr.Gallery
    table: gr.Dataframe


def build_predict_tab(models: list[tuple[str, str]], state: gr.State, reuse: gr.Dropdown) -> PredictTab:
    """The tab's layout and events; call inside ``gr.Tab``. ``models``: the choices when the page is built;
    ``state``: the session (whose runs it may use); ``reuse``: the Architecture list a deleted run leaves."""
    with gr.Row():
        with gr.Column():
            model = gr.Dropdown(
                models,
                value="densenet121",
                label="Model",
                elem_id="predict-model",
                allow_custom_value=True,  # API clients may name runs made after this page was built
            )
            build_run_controls(model, state, reuse)
            weights_choice = gr.Radio(
                list(WEIGHTS_CHOICES),
                value="ImageNet",
                label="Weights",
                info="ImageNet weights for the four ImageNet presets; fine-tuned runs carry their own.",
            )
            weights_file = gr.File(
                label="Checkpoint file (.safetensors / .pth)", file_types=[".safetensors", ".pth", ".pt"], visible=False
            )
            images = gr.File(label="Images", file_count="multiple", file_types=["image"], elem_id="predict-images")
            with gr.Row():
                top_k = gr.Slider(1, 10, value=5, step=1, label="Top-k")
                show_cam = gr.Checkbox(value=True, label="Grad-CAM")
            button = gr.Button("Classify", variant="primary", elem_id="predict-button")
            gr.Examples(
                [[[str(path)]] for path in data.example_images()],
                inputs=images,
                label="Generated examples (shapes and stripes, as in the example dataset)",
            )
        with gr.Column():
            label = gr.Label(label="Top classes (first image)", elem_id="predict-label")
            info = gr.Markdown(elem_id="predict-info")
            gallery = gr.Gallery(label="Grad-CAM: where the model looked", columns=3, height=300)
            table = gr.Dataframe(label="All images", interactive=False, elem_id="predict-table")
    model.change(_weights_for_model, [model, weights_choice], weights_choice, api_visibility="private")
    weights_choice.change(
        lambda c: gr.update(visible=c == "Checkpoint file"), weights_choice, weights_file, api_visibility="private"
    )
    button.click(
        predict_images,
        [images, model, weights_choice, weights_file, top_k, show_cam, state],
        [label, gallery, table, info],
        api_name="predict",
        concurrency_limit=PREDICT_CONCURRENCY,
        concurrency_id="predict",
    )
    return PredictTab(model, weights_choice, images, label, info, gallery, table)


def predict_images(
    files: list[str] | str | None,
    model: str,
    weights_choice: str,
    weights_file: str | None,
    top_k: float,
    show_cam: bool,
    state: dict[str, Any] | None = None,
) -> tuple[dict[str, float], list[tuple[Any, str]], pd.DataFrame, str]:
    """Classify one or more uploaded images: top-k of the first, Grad-CAM overlays, a table of all."""
    paths = [files] if isinstance(files, str) else list(files or [])
    if not paths:
        raise gr.Error("Upload an image first.")
    predictor = _get_predictor(model, weights_choice, weights_file, state)
    results = predictor.predict_images(paths, top_k=int(top_k), names=[Path(p).name for p in paths])
    good = [r for r in results if isinstance(r, predict.Prediction)]
    errors = [str(r) for r in results if not isinstance(r, predict.Prediction)]
    if not good:
        raise gr.Error("; ".join(errors))
    gallery: list[tuple[Any, str]] = []
    if show_cam:
        for path, result in zip(paths, results, strict=True):
            if isinstance(result, predict.Prediction):
                cam = predictor.gradcam(path)
                gallery.append((cam.overlay, f"{result.name}: Grad-CAM for '{cam.class_name}'"))
    table = pd.DataFrame(
        [
            {
                "image": r.name,
                "top-1": r.labels[0][0],
                "p": round(r.labels[0][1], 4),
                "top-k": ", ".join(f"{lbl} ({p:.1%})" for lbl, p in r.labels),
                "latency ms": round(r.latency_ms, 1),
            }
            for r in good
        ]
    )
    lines = [
        f"**{len(good)} image(s)** classified with **{model}** ({predictor.weights_label}); "
        f"latency {good[0].latency_ms:.0f} ms for the first."
    ]
    if predictor.notice:
        lines.append(f"⚠️ {predictor.notice}")
    lines += [f"❌ {e}" for e in errors]
    return dict(good[0].labels), gallery, table, "\n\n".join(lines)


def _weights_arg(model: str, choice: str, file: str | None) -> str | None:
    if model.startswith("run:"):
        return None
    if choice == "Checkpoint file":
        if not file:
            raise gr.Error("Choose a .safetensors or .pth file, or pick ImageNet / Random init weights.")
        return file
    # "ImageNet" lets the model decide: its ImageNet weights where they exist, else random init.
    return weights.DEFAULT if choice == "ImageNet" else "random"


def _weights_for_model(model: str, choice: str) -> str:
    if model in PRESETS and weights.default_weights(model) == "random" and choice == "ImageNet":
        gr.Info(f"{model} has no ImageNet weights: it starts from random init (fine-tune it first).", duration=8)
        return "Random init"
    return choice


def _get_predictor(
    model: str, weights_choice: str, weights_file: str | None, state: dict[str, Any] | None
) -> predict.Predictor:
    if not model:
        raise gr.Error("Pick a model first.")
    # The engine also takes checkpoint folders by path (for the CLI); a web request may only name a preset or a
    # run in weights/runs/, so it can neither load nor probe folders elsewhere on the server.
    if model not in PRESETS and not model.startswith("run:"):
        raise unknown_model(model)
    if model.startswith("run:"):
        check_run(model, state)  # on a shared server, only the session's own runs and the published ones
    weights_arg = _weights_arg(model, weights_choice, weights_file)
    with user_errors(ValueError, weights.CheckpointError, OSError):
        return predict.get_predictor(model, weights_arg)
