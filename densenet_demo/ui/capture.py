"""Classes by hand: a class name, then its images, uploaded or captured from the webcam, then "Add class".

The camera streams while its record button is on; every ``CAPTURE_EVERY_S`` one frame is kept, written as a PNG
into the session's folder (it goes with the session) and shown as a thumbnail in the class's gallery, where a
frame can be removed. "Add class" takes the gallery's frames as the class's images, beside any uploaded ones: they
train like uploads.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from ..data.images import ImageError, decode_image
from .finetune_data import add_class, session_of

__all__ = ["CAPTURE_EVERY_S", "MAX_FRAMES", "add_captured_class", "build_classes_by_hand", "capture_frame"]

CAPTURE_EVERY_S = 0.5  # two frames a second: a short burst gives a class a dozen views without near-duplicates
MAX_FRAMES = 100  # per class at a time; a forgotten recording must not fill the server's disk
MAX_SIDE = 448  # frames are kept at most this large: twice the 224 px the largest models see


def build_classes_by_hand(state: gr.State) -> gr.State:
    """The "Classes by hand" accordion and its events; returns the classes built so far ({name: [files]})."""
    by_hand = gr.State({})
    with gr.Accordion("Classes by hand", open=False):
        with gr.Row():
            class_name = gr.Textbox(label="Class name", elem_id="class-name")
            class_files = gr.File(
                label="Its images", file_count="multiple", file_types=["image"], elem_id="class-files"
            )
        with gr.Row():
            camera, frames = _build_camera(state)
        add = gr.Button("Add class", elem_id="class-add")
        classes = gr.Markdown(elem_id="class-list")
    add.click(
        add_captured_class,
        [class_name, class_files, frames, by_hand],
        [by_hand, classes, class_name, class_files, frames],
        api_visibility="private",
    )
    return by_hand


def add_captured_class(
    name: str, files: list[str] | None, frames: list[Any] | None, by_hand: dict[str, list[str]] | None
) -> tuple[Any, ...]:
    """Add the uploaded images and the captured frames under the class name; the inputs are cleared for the next."""
    return (*add_class(name, [*(files or []), *captured_files(frames)], by_hand), [])


def _build_camera(state: gr.State) -> tuple[gr.Image, gr.Gallery]:
    camera = gr.Image(
        sources=["webcam"],
        streaming=True,
        type="numpy",
        label=f"Camera: record to capture a burst ({1 / CAPTURE_EVERY_S:g} frames a second), stop when done",
        elem_id="capture-camera",
    )
    frames = gr.Gallery(
        label="Captured frames (✕ removes one); they join the class with Add class",
        interactive=True,
        columns=8,
        height=220,
        format="png",
        type="filepath",
        elem_id="capture-frames",
    )
    camera.stream(
        capture_frame,
        [camera, frames, state],
        frames,
        stream_every=CAPTURE_EVERY_S,
        api_visibility="private",
        concurrency_limit=None,
    )
    return camera, frames


def capture_frame(frame: np.ndarray | None, frames: list[Any] | None, state: dict[str, Any] | None) -> Any:
    """Keep one frame of the stream: a PNG in the session's folder, appended to the gallery.

    The state is read, not returned: a stream's many updates must not overwrite what a training run writes there
    meanwhile (the session it holds is the same object either way)."""
    if frame is None or len(frames or []) >= MAX_FRAMES:
        return gr.skip()
    try:
        image = decode_image(frame, mode="RGB", name="camera frame")
    except ImageError:
        return gr.skip()  # a frame the browser sent broken: the next one will do
    image.thumbnail((MAX_SIDE, MAX_SIDE))
    folder = session_of(state if state is not None else {}).folder() / "captures"
    folder.mkdir(exist_ok=True)
    path = folder / f"capture-{secrets.token_hex(4)}.png"
    image.save(path)
    return [*(frames or []), (str(path), None)]


def captured_files(frames: list[Any] | None) -> list[str]:
    """The files of the gallery's frames (Gradio gives (path, caption) pairs), in order."""
    files = []
    for item in frames or []:
        path = item[0] if isinstance(item, (list, tuple)) else item
        if isinstance(path, (str, Path)) and Path(path).is_file():
            files.append(str(path))
    return files
