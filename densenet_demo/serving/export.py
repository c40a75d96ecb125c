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

import copy
import datetime as _dt
import json
import logging
import os
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..tracing import TRACING
from ..weights import checkpoints
from .predict import Predictor, get_predictor

__all__ = [
    "ABS_TOLERANCE",
    "EXPORT_FORMATS",
    "ExportError",
    "ExportResult",
    "bundle_readme",
    "export_onnx",
    "onnx_metadata",
]

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("onnx",)
ABS_TOLERANCE = 1e-4  # max |Δlogit| allowed between onnxruntime and PyTorch (fp32), per unit of logit scale
MIN_OPSET = 18  # the dynamo exporter's lowest; below it torch converts afterwards, which fails for DenseNet
CHECK_BATCH = 3  # the export-time check runs this batch, then batch 1 (the batch dimension must really vary)
INPUT_NAME, OUTPUT_NAME = "input", "logits"
BUNDLE_MODEL, BUNDLE_META, BUNDLE_README = "model.onnx", "model.json", "README.md"
SHARED_FILE_MODE = 0o644  # an export is made to be handed on; the temp file it starts as is private (0600)

# torch.export traces through global state and each export takes seconds of every core: one at a time.
_export_lock = threading.Lock()


class ExportError(RuntimeError):
    """The export failed or did not reproduce PyTorch's outputs; no file was written."""


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
    _check_opset(opset)
    predictor = model if isinstance(model, Predictor) else get_predictor(model, weights)
    start = time.perf_counter()
    with _export_lock:
        net = _export_copy(predictor)
        example = _check_batch(predictor, CHECK_BATCH)
        data = _to_onnx_bytes(net, example, opset)
        opset_used = _opset_of(data)
        max_diff, tolerance = _check_against_torch(net, data, [example, example[:1]])
    metadata = onnx_metadata(predictor, opset=opset_used, max_abs_diff=max_diff, tolerance=tolerance)
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
        tolerance=tolerance,
        size_bytes=len(data),
        bundle_size_bytes=bundle.stat().st_size,
        seconds=seconds,
        metadata=metadata,
        notice=predictor.notice,
    )


def _check_opset(opset: int | None) -> None:
    if opset is None:
        return
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise ValueError(f"opset must be a whole number from {MIN_OPSET} to {newest}, got {opset!r}")


def _export_copy(predictor: Predictor) -> torch.nn.Module:
    """A private CPU copy of the predictor's model, eval mode, memory-efficient path off (the shared one stays)."""
    net = copy.deepcopy(predictor.model).to("cpu").eval()
    net.set_grad_checkpointing(False)  # checkpointing is a training trade-off; the graph must not carry it
    net.requires_grad_(False)
    return net


def _check_batch(predictor: Predictor, n: int) -> torch.Tensor:
    """``n`` random images already normalised like real inputs; seeded, so a failed check can be repeated."""
    p = predictor.preprocessing
    pixels = torch.rand(n, p.in_channels, p.image_size, p.image_size, generator=torch.Generator().manual_seed(0))
    mean = torch.tensor(p.mean).view(1, -1, 1, 1)
    std = torch.tensor(p.std).view(1, -1, 1, 1)
    return (pixels - mean) / std


def _to_onnx_bytes(net: torch.nn.Module, example: torch.Tensor, opset: int | None) -> bytes:
    """The serialized ONNX model, weights inside, batch dimension dynamic."""
    try:
        import onnx
        import onnxscript  # noqa: F401  # the dynamo exporter builds its graph with it: fail here, clearly
    except ImportError as e:
        raise ExportError(
            f"ONNX export needs the onnx and onnxscript packages ({e}); pip install onnx onnxscript"
        ) from None
    batch = torch.export.Dim("batch", min=1)
    try:
        with TRACING:  # torch's tracing state is the process's: a training step elsewhere waits (tracing.py)
            program = torch.onnx.export(
                net,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
                opset_version=opset,
                external_data=False,
                verbose=False,
            )
    except torch.onnx.OnnxExporterError as e:
        raise ExportError(f"torch.onnx.export failed: {type(e).__name__}: {str(e).splitlines()[0]}") from e
    proto = program.model_proto
    external = [t.name for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise ExportError(f"the exported model keeps {len(external)} tensors outside the file; refusing to save it")
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"the exported model is not valid ONNX: {str(e).splitlines()[0]}") from None
    return proto.SerializeToString()


def _opset_of(data: bytes) -> int:
    import onnx

    proto = onnx.load_model_from_string(data)
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _check_against_torch(net: torch.nn.Module, data: bytes, batches: list[torch.Tensor]) -> tuple[float, float]:
    """Max |Δlogit| between onnxruntime and PyTorch over ``batches``, and the tolerance; ``ExportError`` if over."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ExportError(f"checking the export needs onnxruntime ({e}); pip install onnxruntime") from None
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    max_diff, scale = 0.0, 1.0
    for batch in batches:
        with torch.no_grad():
            expected = net(batch).numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})[0]
        if got.shape != expected.shape:
            raise ExportError(
                f"onnxruntime returned shape {got.shape} for batch {len(batch)}, PyTorch {expected.shape}"
            )
        max_diff = max(max_diff, float(np.abs(got - expected).max()))
        scale = max(scale, float(np.abs(expected).max()))
    tolerance = ABS_TOLERANCE * scale
    if not max_diff <= tolerance:  # also catches NaN
        raise ExportError(
            f"onnxruntime's logits differ from PyTorch's by up to {max_diff:.3g} (allowed {tolerance:.3g}); "
            "the export was not written. Try another --opset, or report the model that fails."
        )
    return max_diff, tolerance


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
