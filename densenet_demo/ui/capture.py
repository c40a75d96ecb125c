"""Classes by hand from the webcam: record a burst of frames for a class, remove the ones that missed, add the class.

The camera streams while its record button is on; every ``CAPTURE_EVERY_S`` one frame is kept, written as a PNG
into the session's folder (it goes with the session) and shown as a thumbnail in the class's gallery, where a
frame can be removed. "Add class" takes the gallery's frames as the class's images, beside any uploaded ones: they
train like uploads.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any, NamedTuple

import gradio as gr
import numpy as np

from ..data.images import ImageError, decode_image
from .finetune_data import session_of

__all__ = ["CAPTURE_EVERY_S", "MAX_FRAMES", "Capture", "build_capture", "capture_frame", "captured_files"]

CAPTURE_EVERY_S = 0.5  # two frames a second: a short burst gives a class a dozen views without near-duplicates
MAX_FRAMES = 100  # per class at a time; a forgotten recording must not fill the server's disk
MAX_SIDE = 448  # frames are kept at most this large: twice the 224 px the largest models see


class Capture(NamedTuple):
    camera: gr.Image
    frames: gr.Gallery


def build_capture(state: gr.State) -> Capture:
    """The camera and the class's captured frames; call inside "Classes by hand"."""
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
    return Capture(camera, frames)


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
