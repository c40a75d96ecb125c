"""The Predict tab: classify a photo (upload, paste, live webcam) or a batch of files with a preset or a
fine-tuned run; top-k per image, Grad-CAM, a table, and an ONNX download of the selected model."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any, NamedTuple

import gradio as gr
import pandas as pd

from ..config import PRESETS
from ..data import examples
from ..serving import export
from ..weights import hub
from ..weights import resolver as weights
from .classify import (
    RANDOM_WARNING,
    TABLE_COLUMNS,
    classify_paths,
    get_predictor,
    model_name,
    open_files_here,
    random_warning,
    user_messages,
)
from .common import MODEL_API, WEIGHTS_LABELS, api_type, names_only, weights_label
from .exports import export_folder
from .hub_models import build_hub_loader
from .run_controls import build_run_controls
from .speed import POLL_S, SPEED_CHOICES, SPEED_INFO, speed_choices, speed_note, speed_status

__all__ = [
    "PredictTab",
    "build_predict_tab",
    "classify",
    "classify_frame",
    "export_onnx",
    "predict_images",
    "EXAMPLE_PHOTOS",
    "PREDICT_CONCURRENCY",
    "TABLE_COLUMNS",
    "WEIGHTS_CHOICES",
]

logger = logging.getLogger(__name__)

# Prediction requests served at once (the model cache is shared, read-only). bench/serve.py on 2 CPU cores:
# 2 serves 24% more requests/s than 1, and 4 no more than 2 while holding twice the activations in memory.
PREDICT_CONCURRENCY = 2
LIVE_FRAME_EVERY_S = 0.1  # how often the browser offers a webcam frame; frames that arrive while busy are dropped

WEIGHTS_CHOICES = (*WEIGHTS_LABELS, "Checkpoint file")
WEIGHTS_INFO = "ImageNet weights exist for densenet121/161/169/201; other presets start from random init."
# Real photos of ImageNet classes (public domain / CC0, see examples/LICENSES.md).
EXAMPLE_PHOTOS = Path(__file__).resolve().parents[2] / "examples"


class PredictTab(NamedTuple):
    model: gr.Dropdown  # other tabs refresh its runs
    weights: gr.Radio
    photo: gr.Image
    images: gr.File
    warning: gr.Markdown
    label: gr.Label
    info: gr.Markdown
    gallery: gr.Gallery
    table: gr.Dataframe
    top_k: gr.Slider
    speed: gr.Radio


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
            api_type(model, MODEL_API)
            build_run_controls(model, state, reuse)
            build_hub_loader(model, state)
            weights_choice = gr.Radio(
                list(WEIGHTS_CHOICES), value="ImageNet", label="Weights", info=WEIGHTS_INFO, elem_id="predict-weights"
            )
            weights_file = gr.File(
                label="Checkpoint: the Fine-tune tab's .zip download, or a .safetensors / .pth file",
                file_types=[".zip", ".safetensors", ".pth", ".pt"],
                visible=False,
                elem_id="predict-checkpoint",
            )
            photo = open_files_here(
                gr.Image(
                    sources=["upload", "clipboard", "webcam"],
                    type="filepath",
                    label="Image: upload, paste (Ctrl+V) or take a photo with the webcam",
                    height=280,
                    elem_id="predict-photo",
                )
            )
            gr.Examples(
                [[str(p)] for p in sorted(EXAMPLE_PHOTOS.glob("*.jpg"))],
                inputs=photo,
                label="Example photos (ImageNet classes: try them with densenet121's ImageNet weights)",
            )
            with gr.Accordion("Live camera: classify what the webcam sees, continuously", open=False):
                camera = gr.Image(
                    sources=["webcam"],
                    type="filepath",
                    streaming=True,  # Gradio streams only a webcam-only input
                    label="Live camera",
                    height=240,
                    elem_id="predict-camera",
                )
            images = gr.File(
                label="Or several images at once", file_count="multiple", file_types=["image"], height=160,
                elem_id="predict-images",  # a bounded list: it scrolls
            )  # fmt: skip
            previews = gr.Gallery(
                show_label=False, columns=8, height=100, object_fit="contain", allow_preview=False, visible=False
            )
            gr.Examples(
                [[[str(path)]] for path in examples.example_images()],
                inputs=images,
                label="Generated examples (shapes and stripes, as in the example dataset)",
            )
            with gr.Row():
                top_k = gr.Slider(1, 10, value=5, step=1, label="Top-k")
                api_type(top_k, {"type": "integer", "description": "classes per image, 1 to 10"})
                show_cam = gr.Checkbox(value=True, label="Grad-CAM (stills)")
            speed = gr.Radio(SPEED_CHOICES, value="auto", label="Speed", info=SPEED_INFO, elem_id="predict-speed")
            speed_info = gr.Markdown(speed_note([]), elem_id="predict-speed-info")
            poll = gr.Timer(POLL_S, active=False)
            button = gr.Button("Classify", variant="primary", elem_id="predict-button")
            with gr.Row():
                export_button = gr.Button("Export ONNX", size="sm", elem_id="predict-export-button")
                export_file = gr.File(label="ONNX bundle", visible=False, elem_id="predict-export")
        with gr.Column():
            warning = gr.Markdown(elem_id="predict-warning")  # right above the label, where the eye goes first
            label = gr.Label(label="Top classes (first image)", elem_id="predict-label")
            info = gr.Markdown(elem_id="predict-info")
            gallery = gr.Gallery(
                label=_gallery_title(True),
                columns=3,
                height="auto",
                object_fit="contain",
                format="png",  # overlays stay sharp (no JPEG blocks)
                elem_id="predict-gallery",
            )
            table = gr.Dataframe(
                pd.DataFrame(columns=TABLE_COLUMNS),
                headers=TABLE_COLUMNS,
                label="All images",
                interactive=False,
                wrap=True,
                column_widths=["22%", "18%", "10%", "12%", "38%"],
                elem_id="predict-table",
            )
            live = gr.State()  # the last webcam frame's time, for the frame rate
    _follow_selection(model, weights_choice, weights_file, export_file, warning)
    images.change(_previews, images, previews, api_visibility="private", show_progress="hidden")
    settings = [model, weights_choice, weights_file, top_k]
    speed_view = [speed, speed_info, poll]
    gr.on(
        [model.change, weights_choice.change, poll.tick],
        speed_status,
        [model, weights_choice, weights_file, state],
        speed_view,
        api_visibility="private",
        show_progress="hidden",
    )
    button.click(
        classify,
        [photo, images, *settings, show_cam, speed, state],
        [warning, label, info, gallery, table, *speed_view],
        api_visibility="private",  # the page's button; programs call /predict or /classify_image
        concurrency_limit=PREDICT_CONCURRENCY,
        concurrency_id="predict",
    )
    camera.stream(
        classify_frame,
        [camera, *settings, speed, live, state],
        [warning, label, info, live],
        api_visibility="private",
        stream_every=LIVE_FRAME_EVERY_S,
        # Gradio's stream default ("multiple"): "always_last" ends the stream after its first frame (Gradio 6.31).
        concurrency_limit=PREDICT_CONCURRENCY,
        concurrency_id="predict",
        show_progress="hidden",
    )
    # The files-only endpoint that API clients call; no button of its own.
    gr.on(
        [],
        predict_images,
        [images, *settings, show_cam, speed, state],
        [label, gallery, table, info],
        api_name="predict",
        concurrency_limit=PREDICT_CONCURRENCY,
        concurrency_id="predict",
    )
    export_button.click(
        export_onnx,
        [model, weights_choice, weights_file, state],
        export_file,
        api_name="export_onnx",
        concurrency_limit=1,
    )
    return PredictTab(model, weights_choice, photo, images, warning, label, info, gallery, table, top_k, speed)


def _follow_selection(
    model: gr.Dropdown, weights_choice: gr.Radio, weights_file: gr.File, export_file: gr.File, warning: gr.Markdown
) -> None:
    """Another model or weights: the weights that go with it, its warning, no stale export, the file box."""
    model.change(natural_weights, model, weights_choice, api_visibility="private")
    # An export belongs to the model it was made of: another selection hides it.
    gr.on(
        [model.change, weights_choice.change],
        lambda: gr.update(value=None, visible=False),
        None,
        export_file,
        api_visibility="private",
        queue=False,
    )
    gr.on(
        [model.change, weights_choice.change],
        _selection_warning,
        [model, weights_choice],
        warning,
        api_visibility="private",
    )
    weights_choice.change(
        lambda c: gr.update(visible=c == "Checkpoint file"), weights_choice, weights_file, api_visibility="private"
    )


# ---------------------------------------------------------------------------------------------
# Handlers


def predict_images(
    files: list[str] | str | None,
    model: str = "densenet121",
    weights_choice: str = "ImageNet",
    weights_file: str | None = None,
    top_k: float = 5,
    show_cam: bool = True,
    backend: str = "auto",
    state: dict[str, Any] | None = None,
) -> tuple[dict[str, float], list[tuple[Any, str]], pd.DataFrame, str]:
    """Classify image files with a DenseNet: the top-k classes of the first image, each image with its top
    classes (on its Grad-CAM overlay: where the model looked), a table of all images, and a note on the model.

    Args:
        files: one or more image files (JPEG, PNG, WebP, ...).
        model: a preset (densenet121/161/169/201 have ImageNet weights) or one of your runs as run:<run-id>.
        weights_choice: "ImageNet" (the model's own: ImageNet where it has them), "Random init" or "Checkpoint file".
        weights_file: with "Checkpoint file": the Fine-tune tab's .zip, or a .safetensors / .pth file.
        top_k: classes per image, 1 to 10.
        show_cam: draw each image's Grad-CAM overlay for its top class (computed with PyTorch).
        backend: "auto" (onnxruntime on a CPU once the model's checked graph is ready, PyTorch until then),
            "torch", "onnxruntime" or "int8" (quantized; kept only where it keeps the answers). The note says which
            one answered, and why when it is not the one asked for.
    """
    paths = [files] if isinstance(files, str) else list(files or [])
    result = classify_paths(paths, model, weights_choice, weights_file, top_k, show_cam, state, backend)
    return result.label, result.gallery, result.table, result.info


def classify(
    photo: str | None = None,
    files: list[str] | None = None,
    model: str = "densenet121",
    weights_choice: str = "ImageNet",
    weights_file: str | None = None,
    top_k: float = 5,
    show_cam: bool = True,
    backend: str = "auto",
    state: dict[str, Any] | None = None,
) -> tuple[Any, ...]:
    """The Classify button: the photo and the files together. A user error is one warning, not an error per panel."""
    paths = ([photo] if photo else []) + list(files or [])
    try:
        result = classify_paths(paths, model, weights_choice, weights_file, top_k, show_cam, state, backend)
    except gr.Error as e:  # one warning, one log line; the results of an earlier request are cleared
        logger.info("/classify refused: %s", e.message)
        gr.Warning(e.message)
        return gr.skip(), None, "", [], pd.DataFrame(columns=TABLE_COLUMNS), gr.skip(), gr.skip(), gr.skip()
    columns = max(1, min(3, len(result.gallery)))  # one image gets the whole width, not a third of it
    preparing = any(s.state == "preparing" for s in result.backends)
    return (
        result.warning,
        gr.update(value=result.label, label=_label_title(result.warning)),
        result.info,
        gr.update(value=result.gallery, columns=columns, label=_gallery_title(show_cam)),
        result.table,
        gr.update(choices=speed_choices(result.backends)),
        speed_note(result.backends),
        gr.Timer(active=preparing),
    )


def classify_frame(
    frame: str | None,
    model: str,
    weights_choice: str,
    weights_file: str | None,
    top_k: float,
    backend: str,
    last: float | None,
    state: dict[str, Any] | None = None,
) -> tuple[Any, ...]:
    """One webcam frame: top-k and the frame rate. Frames come as fast as the previous one is answered."""
    if not frame:
        return gr.skip(), gr.skip(), gr.skip(), last
    try:
        predictor = get_predictor(model, weights_choice, weights_file, state)
        with user_messages():
            (result,) = predictor.predict([frame], top_k=int(top_k), names=["webcam"], backend=backend)
    except gr.Error as e:
        return gr.skip(), gr.skip(), f"Live: {e.message}", last
    now = time.monotonic()
    rate = f"{1.0 / (now - last):.1f} frames/s, " if last and now > last else ""
    warning = random_warning(predictor.weights_label, model)
    by = {value: label for label, value in SPEED_CHOICES}[result.backend]
    info = f"**Live** with **{model}** ({predictor.weights_label}, {by}): {rate}{result.latency_ms:.0f} ms per frame."
    return warning, gr.update(value=dict(result.labels), label=_label_title(warning)), info, now


def natural_weights(model: Any) -> Any:
    """Each model selection gets its own weights: ImageNet where they exist, else random; a run brings its own."""
    if not isinstance(model, str) or not model:
        return gr.skip()
    if model.startswith("run:"):
        return gr.update(value=None, interactive=False, info="A fine-tuned run brings its own weights.")
    if model.startswith(hub.HUB_PREFIX):
        return gr.update(value=None, interactive=False, info="A model from the Hub brings its own weights.")
    return gr.update(value=weights_label(model), interactive=True, info=WEIGHTS_INFO)


def export_onnx(
    model: str, weights_choice: str = "ImageNet", weights_file: str | None = None, state: dict[str, Any] | None = None
) -> Any:
    """The selected model as an ONNX bundle (model, class names and preprocessing, a README) to download."""
    predictor = get_predictor(model, weights_choice, weights_file, state)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", model_name(model).removeprefix("run:")) or "model"
    with user_messages(export.ExportError):
        result = export.export_onnx(predictor, out=export_folder() / f"{stem}.onnx")
    if predictor.notice:  # e.g. ImageNet weights that could not be downloaded: the file holds random weights
        gr.Warning(f"Exported, but: {names_only(predictor.notice)}")
    elif random_warning(predictor.weights_label, model):
        gr.Warning(f"{model_name(model)} with random weights: the exported model classifies nothing yet.")
    return gr.update(value=str(result.bundle_path), visible=True)


# ---------------------------------------------------------------------------------------------
# Helpers


def _gallery_title(show_cam: bool) -> str:
    if show_cam:
        return "Each image's top classes, on its Grad-CAM (where the model looked)"
    return "Each image's top classes"


def _label_title(warning: str) -> str:
    return "Top classes: RANDOM WEIGHTS, meaningless" if warning else "Top classes (first image)"


def _selection_warning(model: Any, choice: str | None) -> str:
    """The warning for what is selected, before anything is classified (an offline fallback shows after)."""
    if not isinstance(model, str) or model not in PRESETS:
        return ""
    setting = WEIGHTS_LABELS.get(choice or "")
    random = setting == "random" or (setting == weights.DEFAULT and weights.default_weights(model) == "random")
    return RANDOM_WARNING.format(model=model) if random else ""


def _previews(files: list[str] | None) -> Any:
    """Thumbnails of the uploaded files (the first few dozen), so people see what they are about to classify."""
    paths = list(files or [])[:32]
    return gr.update(value=[(p, Path(p).name) for p in paths] or None, visible=bool(paths))
