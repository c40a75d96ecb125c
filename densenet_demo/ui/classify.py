"""Classification for the Predict tab and the API: the model selection checked (presets and the session's own
runs only), the images classified where GPU work runs (hosting/gpu.py: here, or in ZeroGPU calls within their cap), and
the answer as the page shows it. Engine errors become messages that name files, never server paths.
"""

from __future__ import annotations

import base64
import binascii
import logging
import secrets
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import gradio as gr
import pandas as pd
from gradio.data_classes import ImageData

from ..config import PRESETS
from ..data.images import ImageError
from ..hosting import gpu
from ..serving import predict
from ..serving.backends import GRAPH_BACKENDS, LABELS, BackendStatus, check_backend
from ..units import percent
from ..weights import hub
from ..weights import resolver as weights
from .common import WEIGHTS_LABELS, check_run, model_choices, names_only, unknown_model
from .hub_models import check_hub_model

__all__ = [
    "RANDOM_WARNING",
    "TABLE_COLUMNS",
    "Result",
    "classify_paths",
    "get_predictor",
    "model_name",
    "open_files_here",
    "random_warning",
    "selection",
    "user_messages",
]

logger = logging.getLogger(__name__)

TABLE_COLUMNS = ["image", "top-1", "p", "latency ms", "top-k"]  # the long list last, so no column is cut off
RANDOM_WARNING = (
    "⚠️ **Random weights: these classes mean nothing.** {model} has not learned anything yet; pick ImageNet "
    "weights (densenet121/161/169/201) or a fine-tuned run."
)


def open_files_here(image: gr.Image) -> gr.Image:
    """``image`` (a ``type="filepath"`` input: Predict's Image box, ``/classify_image``) hands its file to the app's
    own checks unopened (``data/images.py``: empty, not an image, truncated, a decompression bomb, each answered
    with its reason), as the multi-image input's files go.

    ``gr.Image`` opens the file while preparing it, and a bad file failed there with Gradio's generic error,
    before the app could say what was wrong (and the page kept the previous results). A subclass would do, but
    Gradio writes a ``.pyi`` stub next to the module of every component class it sees defined; so this one
    component's ``preprocess`` is replaced instead.
    """
    image.preprocess = types.MethodType(_file_unopened, image)  # type: ignore[method-assign]
    return image


def _file_unopened(image: gr.Image, payload: ImageData | None) -> str | None:
    if payload is None:
        return None
    if payload.url and payload.url.startswith("data:"):
        return str(_data_url_file(payload.url, Path(image.GRADIO_CACHE)))
    if payload.path is None:
        raise gr.Error("The image came without a file: upload it (gradio_client: handle_file(path)).")
    return str(payload.path)


def _data_url_file(url: str, cache: Path) -> Path:
    """A ``data:image/...;base64,...`` URL's bytes in a file of their own (checked like any upload afterwards)."""
    header, _, data = url.partition(",")
    if not header.endswith(";base64"):
        raise gr.Error("The image's data URL is not base64: send data:image/png;base64,... or upload the file.")
    try:
        content = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise gr.Error("The image's data URL could not be decoded (invalid base64).") from None
    subtype = header.removeprefix("data:").removesuffix(";base64").partition("/")[2]
    suffix = subtype if subtype.isalnum() and len(subtype) <= 5 else "img"
    folder = cache / secrets.token_hex(10)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"image.{suffix}"
    path.write_bytes(content)
    return path


class Result(NamedTuple):
    """What the page shows of one request: the first image's top classes, the gallery, the table, notes."""

    label: dict[str, float]
    gallery: list[tuple[Any, str]]
    table: pd.DataFrame
    info: str
    warning: str
    backends: list[BackendStatus]  # the model's backends and their measured latency, for the Speed choice


def classify_paths(
    paths: list[str],
    model: str,
    weights_choice: str,
    weights_file: str | None,
    top_k: float,
    show_cam: bool,
    state: dict[str, Any] | None,
    backend: str = "auto",
) -> Result:
    """Classify ``paths`` with the selected model and backend: the checks, the engine call (hosting/gpu.py, or here
    for the onnxruntime backends, which run on this machine's CPU), the page's answer."""
    if not paths:
        raise gr.Error("Add an image first: upload, paste or take one with the webcam, or pick an example.")
    with user_messages():
        check_backend(backend)
    name, weights_arg = selection(model, weights_choice, weights_file, state)
    done = _classify_files(name, weights_arg, paths, int(top_k), show_cam, backend, _run_dataset(name, backend, state))
    results = [r for part in done for r in part.results]
    good = [r for r in results if isinstance(r, predict.Prediction)]
    errors = [str(r) for r in results if not isinstance(r, predict.Prediction)]
    if not good:
        raise gr.Error("; ".join(errors))
    gallery: list[tuple[Any, str]] = []
    overlays = [overlay for part in done for overlay in part.overlays]
    for path, result, overlay in zip(paths, results, overlays, strict=True):
        if isinstance(result, predict.Prediction):
            caption = f"{result.name}: " + ", ".join(f"{lbl} {percent(p)}" for lbl, p in result.labels[:3])
            gallery.append((overlay if show_cam else path, caption))
    table = pd.DataFrame(
        [
            {
                "image": r.name,
                "top-1": r.labels[0][0],
                "p": round(r.labels[0][1], 4),
                "latency ms": round(r.latency_ms, 1),
                "top-k": ", ".join(f"{lbl} ({percent(p)})" for lbl, p in r.labels),
            }
            for r in good
        ],
        columns=TABLE_COLUMNS,
    )
    label, notice, last = done[0].weights_label, done[0].notice, done[-1]
    first = f"latency {good[0].latency_ms:.0f} ms for the first"
    shown = dict((v, name) for name, v in model_choices(state)).get(model, model) if model.startswith("run:") else model
    by = LABELS[last.backend]
    lines = [f"**{len(good)} image(s)** classified with **{shown}** ({label}) by {by}; {first}."]
    if last.backend_note:
        lines.append(f"ℹ️ {names_only(last.backend_note)}")
    if notice:
        lines.append(f"⚠️ {names_only(notice)}")
    lines += [f"❌ {e}" for e in errors]
    warning = random_warning(label, model)
    return Result(dict(good[0].labels), gallery, table, "\n\n".join(lines), warning, last.backends)


def _classify_files(
    name: str,
    weights_arg: str | None,
    paths: list[str],
    top_k: int,
    show_cam: bool,
    backend: str,
    dataset: Any,
) -> list[predict.Classified]:
    """The images classified where GPU work runs (hosting/gpu.py): here, or on ZeroGPU in calls of at most the
    cap each. The onnxruntime backends run here, on the CPU, in one go: a GPU call would only add its wait."""
    on_cpu = backend in GRAPH_BACKENDS
    per_call, names = (len(paths) if on_cpu else gpu.images_per_call()), [Path(p).name for p in paths]
    done = []
    with user_messages(gpu.GPUUnavailable):
        for i in range(0, len(paths), per_call):
            part, kwargs = paths[i : i + per_call], {"names": names[i : i + per_call], "backend": backend}
            kwargs |= {"top_k": top_k, "gradcam": bool(show_cam), "dataset": dataset}
            if on_cpu:
                done.append(predict.classify_files(name, weights_arg, part, **kwargs))
            else:
                seconds = gpu.prediction_seconds(len(part))
                done.append(gpu.run(predict.classify_files, name, weights_arg, part, seconds=seconds, **kwargs))
    return done


def _run_dataset(model: str, backend: str, state: dict[str, Any] | None) -> Any:
    """The session's dataset, offered for int8's calibration of a run (the engine takes it only if it is the
    run's own: same classes, same counts)."""
    dataset = (state or {}).get("dataset")
    if backend != "int8" or not model.startswith("run:") or not dataset:
        return None
    return dataset[0]


def random_warning(weights_label: str, model: str) -> str:
    """The warning over the answer of a model with random weights; empty otherwise."""
    return RANDOM_WARNING.format(model=model) if weights_label == weights.RANDOM_LABEL else ""


def model_name(model: Any) -> str:
    """The model asked for, or a message to pick one."""
    if not isinstance(model, str) or not model.strip():
        raise gr.Error("Pick a model from the Model list first.")
    return model


def _weights_arg(model: str, choice: str | None, file: str | None) -> str | None:
    if model.startswith("run:"):
        return None
    if choice == "Checkpoint file":
        if not file:
            raise gr.Error("Choose a checkpoint (.zip, .safetensors or .pth), or pick ImageNet / Random init weights.")
        with user_messages():
            return str(predict.checkpoint_from_upload(file))
    return WEIGHTS_LABELS[choice or "ImageNet"]


def get_predictor(
    model: Any, weights_choice: str | None, weights_file: str | None, state: dict[str, Any] | None
) -> predict.Predictor:
    """The selected model's predictor, built here (the live camera and the ONNX export run on this machine)."""
    with user_messages():
        return predict.get_predictor(*selection(model, weights_choice, weights_file, state))


def selection(
    model: Any, weights_choice: str | None, weights_file: str | None, state: dict[str, Any] | None
) -> tuple[str, str | None]:
    """(model, weights) for the engine, checked without building the model: a preset or this session's run."""
    name = model_name(model)
    # The engine also takes checkpoint folders by path (for the CLI); a web request may only name a preset, a
    # run in weights/runs/ or a Hub model it loaded, so it can neither load nor probe folders elsewhere.
    if name.startswith(hub.HUB_PREFIX):
        check_hub_model(name, state)  # only the Hub models this session loaded, with its own sign-in
        return name, None
    if name not in PRESETS and not name.startswith("run:"):
        raise unknown_model(name)
    if name.startswith("run:"):
        check_run(name, state)  # on a shared server, only the session's own runs and the published ones
    return name, _weights_arg(name, weights_choice, weights_file)


@contextmanager
def user_messages(*extra: type[Exception]) -> Iterator[None]:
    """The engine's errors as messages that name files, never server paths (those go to the log)."""
    try:
        yield
    except (ValueError, weights.CheckpointError, ImageError, OSError, *extra) as e:
        logger.debug("refused, in full: %s", e)  # the INFO line is the request's (app_blocks.py), paths shortened
        raise gr.Error(names_only(str(e))) from None
