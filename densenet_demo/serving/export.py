"""ONNX export of any model the app predicts with, checked against PyTorch, plus a download bundle.

``export_onnx("run:<id>", out=Path("cats.onnx"))`` writes ``cats.onnx`` (one self-contained file: weights
embedded, dynamic batch dimension) and ``cats.zip``, the bundle to hand to someone else: ``model.onnx``,
``model.json`` (class names, input size, channels, mean/std, opset, where the weights came from) and a
``README.md`` whose snippet classifies an image with numpy, Pillow and onnxruntime only.

Before anything is written, onnxruntime runs the exported graph on a test batch and its logits are compared
with PyTorch's; a mismatch raises ``ExportError`` and leaves no file behind. ``onnx``, ``onnxscript`` and
``onnxruntime`` are imported inside the functions that need them, so importing this module (and starting
the app) does not pay for them.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..weights import checkpoints
from .onnx_graph import (
    ABS_TOLERANCE,
    CHECK_BATCH,
    INPUT_NAME,
    MIN_OPSET,
    OUTPUT_NAME,
    ExportError,
    checked_graph,
    validate_opset,
)
from .predict import Predictor, get_predictor

__all__ = [
    "ABS_TOLERANCE",
    "EXPORT_FORMATS",
    "MIN_OPSET",
    "ExportError",
    "ExportResult",
    "bundle_readme",
    "export_onnx",
    "onnx_metadata",
]

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("onnx",)
BUNDLE_MODEL, BUNDLE_META, BUNDLE_README = "model.onnx", "model.json", "README.md"
SHARED_FILE_MODE = 0o644  # an export is made to be handed on; the temp file it starts as is private (0600)


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote and how well onnxruntime reproduced PyTorch."""

    onnx_path: Path
    bundle_path: Path  # the zip: model.onnx + model.json + README.md
    opset: int
    max_abs_diff: float  # max |Δlogit| between onnxruntime and PyTorch over the check batches
    tolerance: float  # the bound it was held to: ABS_TOLERANCE x max(1, max |logit|)
    size_bytes: int  # of the .onnx file
    bundle_size_bytes: int
    seconds: float
    metadata: dict[str, Any] = field(repr=False)  # the bundle's model.json
    notice: str | None = None  # set when the weights asked for were unavailable (random weights exported)


def export_onnx(
    model: str | Predictor,
    weights: str | os.PathLike | None = None,
    *,
    out: str | os.PathLike,
    opset: int | None = None,
) -> ExportResult:
    """Export ``model`` (preset, ``run:<id>``, checkpoint folder, or a ``Predictor``) to ``out`` (``.onnx``).

    ``weights`` as for ``predict.get_predictor`` (ignored for a ``Predictor`` and for checkpoints); ``opset``
    defaults to the exporter's own choice. Also writes the bundle ``out`` with ``.zip`` instead of ``.onnx``.
    Raises ``ValueError`` (bad ``out``, unknown preset), ``CheckpointError`` (missing or broken run) or
    ``ExportError`` (the exporter failed, or onnxruntime disagreed with PyTorch).
    """
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise ValueError(f"the output file must end in .onnx, got {str(out)!r}")
    if out.is_dir():
        raise ValueError(f"{out} is a folder; give a file name ending in .onnx")
    validate_opset(opset)
    predictor = model if isinstance(model, Predictor) else get_predictor(model, weights)
    start = time.perf_counter()
    graph = checked_graph(predictor.model, predictor.preprocessing, opset)
    data, opset_used, max_diff = graph.data, graph.opset, graph.max_abs_diff
    metadata = onnx_metadata(predictor, opset=opset_used, max_abs_diff=max_diff, tolerance=graph.tolerance)
    bundle = out.with_suffix(".zip")
    _write_outputs(out, bundle, data, metadata)
    seconds = time.perf_counter() - start
    logger.info(
        "exported %s (%s) to %s: opset %d, %.1f MiB, max |Δlogit| %.2e, %.1f s",
        predictor.model_key, predictor.weights_label, out, opset_used, len(data) / 2**20, max_diff, seconds,
    )  # fmt: skip
    return ExportResult(
        onnx_path=out,
        bundle_path=bundle,
        opset=opset_used,
        max_abs_diff=max_diff,
        tolerance=graph.tolerance,
        size_bytes=len(data),
        bundle_size_bytes=bundle.stat().st_size,
        seconds=seconds,
        metadata=metadata,
        notice=predictor.notice,
    )


def onnx_metadata(predictor: Predictor, *, opset: int, max_abs_diff: float, tolerance: float) -> dict[str, Any]:
    """The bundle's ``model.json``: everything needed to feed the model and read its output."""
    p = predictor.preprocessing
    cfg = predictor.cfg.replace(memory_efficient=False)
    return {
        "model": predictor.model_key,
        "weights": predictor.weights_label,
        "variant": cfg.variant,
        "class_names": list(predictor.class_names),
        "preprocessing": p.to_dict(),
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", p.in_channels, p.image_size, p.image_size],
            "dtype": "float32",
            "color_mode": p.mode,
            "how": "decode as color_mode, resize the shorter side to resize_size (bilinear), centre-crop "
            "image_size, scale pixels to [0, 1], subtract mean and divide by std per channel, NCHW",
        },
        "output": {"name": OUTPUT_NAME, "shape": ["batch", cfg.num_classes], "meaning": "logits; softmax them"},
        "opset": opset,
        "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
        "check": {"max_abs_logit_diff": max_abs_diff, "tolerance": tolerance, "batch_sizes": [CHECK_BATCH, 1]},
        "config": cfg.to_dict(),
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


# The README's snippet; a test extracts it from a real bundle and runs it against `predict`.
SNIPPET = """\
import json, sys
import numpy as np, onnxruntime as ort
from PIL import Image, ImageOps

meta = json.load(open("model.json"))
p = meta["preprocessing"]
img = ImageOps.exif_transpose(Image.open(sys.argv[1])).convert(meta["input"]["color_mode"])
r, c = p["resize_size"], p["image_size"]
w, h = img.size
img = img.resize((r, int(r * h / w)) if w <= h else (int(r * w / h), r), Image.BILINEAR)
left, top = round((img.width - c) / 2), round((img.height - c) / 2)
x = np.asarray(img.crop((left, top, left + c, top + c)), np.float32).reshape(c, c, -1) / 255
x = ((x - p["mean"]) / p["std"]).transpose(2, 0, 1)[None].astype(np.float32)
logits = ort.InferenceSession("model.onnx").run(None, {"input": x})[0][0]
probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
for i in probs.argsort()[::-1][:5]:
    print(f"{probs[i]:.2%}  {meta['class_names'][i]}")
"""


def bundle_readme(metadata: dict[str, Any]) -> str:
    """The bundle's README: what is inside, what the model expects, and the snippet."""
    p, n = metadata["preprocessing"], len(metadata["class_names"])
    return f"""# {metadata["model"]} as ONNX

Exported by densenet_demo from `{metadata["model"]}` ({metadata["weights"]}), {metadata["variant"]},
{n} classes, ONNX opset {metadata["opset"]}.

- `model.onnx`: the network, weights inside; input `{INPUT_NAME}` float32 (batch, {p["in_channels"]}, \
{p["image_size"]}, {p["image_size"]}), output `{OUTPUT_NAME}` (batch, {n}); any batch size.
- `model.json`: class names (in output order), preprocessing (resize {p["resize_size"]}, crop \
{p["image_size"]}, mean {p["mean"]}, std {p["std"]}), and the export check: onnxruntime matched PyTorch \
within {metadata["check"]["max_abs_logit_diff"]:.1e} on the logits.

## Classify an image

`pip install onnxruntime numpy pillow`, then in this folder `python classify.py photo.jpg` with
`classify.py`:

```python
{SNIPPET}```

It prints the top 5 classes with their probabilities.
"""


def _write_outputs(out: Path, bundle: Path, data: bytes, metadata: dict[str, Any]) -> None:
    """The bundle, then the .onnx, each atomically; if the second fails the first is removed too."""
    meta_text = json.dumps(metadata, indent=2) + "\n"
    readme = bundle_readme(metadata)

    def write_zip(tmp: Path) -> None:
        tmp.chmod(SHARED_FILE_MODE)
        with zipfile.ZipFile(tmp, "w") as z:
            # Float weights barely compress: store them, so building the download costs no CPU time.
            z.writestr(BUNDLE_MODEL, data, compress_type=zipfile.ZIP_STORED)
            z.writestr(BUNDLE_META, meta_text, compress_type=zipfile.ZIP_DEFLATED)
            z.writestr(BUNDLE_README, readme, compress_type=zipfile.ZIP_DEFLATED)

    try:
        checkpoints.atomic_write(bundle, write_zip)
        try:
            checkpoints.atomic_write(out, lambda tmp: (tmp.chmod(SHARED_FILE_MODE), tmp.write_bytes(data)))
        except BaseException:
            bundle.unlink(missing_ok=True)
            raise
    except OSError as e:
        raise ExportError(f"could not write {out} / {bundle.name} ({e.strerror or e}); nothing was saved") from e
