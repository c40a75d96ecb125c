"""A DenseNet as an ONNX graph, checked against PyTorch: what the export download and the onnxruntime backend share.

``checked_graph(model, preprocessing)`` exports an eval-mode CPU copy of ``model`` with
``torch.onnx.export(dynamo=True)`` (weights inside, batch dimension dynamic), runs it in onnxruntime on a test
batch and at batch 1, and compares the logits with PyTorch's; a mismatch raises ``ExportError``, so no caller
ever holds a graph that answers differently from the model. In the graph each transition pools before its 1x1
convolution (``pool_first``): the same function with a quarter of the transitions' multiply-adds.

``onnx``, ``onnxscript`` and ``onnxruntime`` are imported inside the functions that need them: importing this
module (and starting the app) does not pay for them.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..data.images import Preprocessing
from ..model import DenseNet, Transition
from ..tracing import TRACING

__all__ = [
    "ABS_TOLERANCE",
    "CHECK_BATCH",
    "INPUT_NAME",
    "MIN_OPSET",
    "OUTPUT_NAME",
    "CheckedGraph",
    "ExportError",
    "check_against_torch",
    "check_batch",
    "checked_graph",
    "cpu_copy",
    "onnxruntime_session",
    "pool_first",
    "validate_opset",
]

logger = logging.getLogger(__name__)

ABS_TOLERANCE = 1e-4  # max |Δlogit| allowed between onnxruntime and PyTorch (fp32), per unit of logit scale
MIN_OPSET = 18  # the dynamo exporter's lowest; below it torch converts afterwards, which fails for DenseNet
CHECK_BATCH = 3  # the check runs this batch, then batch 1 (the batch dimension must really vary)
INPUT_NAME, OUTPUT_NAME = "input", "logits"

# torch.export traces through global state and each export takes seconds of every core: one at a time.
_export_lock = threading.Lock()


class ExportError(RuntimeError):
    """The export failed or did not reproduce PyTorch's outputs; no file was written."""


@dataclass(frozen=True)
class CheckedGraph:
    """A serialized ONNX model whose logits matched PyTorch's."""

    data: bytes
    opset: int
    max_abs_diff: float  # max |Δlogit| between onnxruntime and PyTorch over the check batches
    tolerance: float  # the bound it was held to: ABS_TOLERANCE x max(1, max |logit|)
    seconds: float  # export + check


def validate_opset(opset: int | None) -> None:
    """``ValueError`` unless ``opset`` is None (the exporter's choice) or an opset the dynamo exporter can write."""
    if opset is None:
        return
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise ValueError(f"opset must be a whole number from {MIN_OPSET} to {newest}, got {opset!r}")


def checked_graph(model: DenseNet, preprocessing: Preprocessing, opset: int | None = None) -> CheckedGraph:
    """``model`` exported to ONNX and checked in onnxruntime against PyTorch; ``ExportError`` if either fails.

    The model is not touched: a private CPU copy (memory-efficient path off) is exported.
    """
    validate_opset(opset)
    start = time.perf_counter()
    with _export_lock:
        net = cpu_copy(model)
        example = check_batch(preprocessing, CHECK_BATCH)
        data = _to_onnx_bytes(pool_first(net), example, opset)
        session = onnxruntime_session(data)
        max_diff, tolerance = check_against_torch(net, session, [example, example[:1]])  # the model as defined
    return CheckedGraph(data, _opset_of(data), max_diff, tolerance, time.perf_counter() - start)


def cpu_copy(model: DenseNet) -> DenseNet:
    """A private CPU copy of ``model``, eval mode, memory-efficient path off (the shared one stays as it is)."""
    net = copy.deepcopy(model).to("cpu").eval()
    net.set_grad_checkpointing(False)  # checkpointing is a training trade-off; the graph must not carry it
    net.requires_grad_(False)
    return net


def pool_first(net: DenseNet) -> DenseNet:
    """A copy of ``net`` whose transitions average-pool before their 1x1 convolution: the same function, faster.

    Both steps are linear and the 1x1 convolution (stride 1, no padding) acts on each pixel alone, so they commute
    (up to float rounding). Pooling first leaves the convolution a quarter of the pixels: 4x fewer multiply-adds
    in every transition, 8% of DenseNet-121's at 224 px (onnxruntime at batch 1: 0.93x the time).
    """
    fast = copy.deepcopy(net)
    for module in fast.modules():
        if isinstance(module, Transition):
            module._modules["conv"] = module._modules.pop("conv")  # a Sequential runs its children in this order
    return fast


def check_batch(preprocessing: Preprocessing, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` random images already normalised like real inputs; seeded, so a failed check can be repeated."""
    p = preprocessing
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand(n, p.in_channels, p.image_size, p.image_size, generator=generator)
    mean = torch.tensor(p.mean).view(1, -1, 1, 1)
    std = torch.tensor(p.std).view(1, -1, 1, 1)
    return (pixels - mean) / std


def onnxruntime_session(data: bytes, threads: int | None = None):
    """An onnxruntime CPU session for a serialized graph; ``threads``: intra-op threads (None: onnxruntime's)."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ExportError(f"running the graph needs onnxruntime ({e}); pip install onnxruntime") from None
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    # Idle threads sleep instead of spinning: spinning saves ~2 ms of a 36 ms forward pass, but it takes the cores
    # from whatever runs next (Grad-CAM in PyTorch right after it: 99 -> 128 ms per image on 2 cores).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: the quantized graph's optimizer notes are not for people
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def check_against_torch(net: torch.nn.Module, session, batches: list[torch.Tensor]) -> tuple[float, float]:
    """Max |Δlogit| between onnxruntime and PyTorch over ``batches``, and the tolerance; ``ExportError`` if over."""
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
