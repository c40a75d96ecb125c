"""Static int8 quantization of a checked fp32 graph, kept only where it keeps the answers.

Static, not dynamic: dynamic quantization turns each Conv into ``ConvInteger``, whose CPU kernels are slower than
fp32; static QDQ graphs become ``QLinearConv`` with the activations' scales fixed by calibration. Weights per output
channel (a DenseNet's 1x1 bottlenecks see channels of very different ranges), signed int8; activations unsigned
int8. A DenseNet's pre-activation BatchNorms cannot be folded into a convolution (a ReLU stands between), and left
in float they cost a dequantize, a float pass and a quantize before every layer; each becomes a 1x1 depthwise
convolution instead (the same per-channel scale and shift), so the whole graph runs in int8 between its input and
its logits (DenseNet-121 on an AVX2 CPU: 0.6x the time of Conv-only int8 in onnxruntime's profile). Calibration
records each activation's min and max over the calibration images (MinMax: the others need far more images than a
run or a preset has here).

``quantize(fp32_graph, calibration)`` returns the int8 graph; ``agreement(fp32, int8, held_out)`` the share of
held-out images whose top-1 class is the same in both. The caller keeps int8 only at ``MIN_AGREEMENT`` or more.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .onnx_graph import INPUT_NAME, OUTPUT_NAME, ExportError

__all__ = ["MIN_AGREEMENT", "OP_TYPES", "Agreement", "agreement", "quantize"]

logger = logging.getLogger(__name__)

MIN_AGREEMENT = 0.99  # share of held-out images whose top-1 must not change, or int8 is not kept
OP_TYPES = None
# Calibration runs the graph with a ReduceMin and a ReduceMax added after every tensor: per batch it keeps two
# numbers per tensor, so memory does not grow with the images. (onnxruntime 1.32's CalibMaxIntermediateOutputs,
# meant to bound that memory, drops the batches it clears instead of merging their ranges: not used.)
CALIBRATION_BATCH = 8


@dataclass(frozen=True)
class Agreement:
    """How often int8's top-1 matched fp32's on the held-out images."""

    same: int
    total: int

    @property
    def share(self) -> float:
        return self.same / self.total if self.total else 0.0

    @property
    def kept(self) -> bool:
        return self.total > 0 and self.share >= MIN_AGREEMENT

    def __str__(self) -> str:
        return f"{self.same} of {self.total} held-out images ({self.share:.1%})"


def quantize(fp32_graph: bytes, calibration: Sequence[torch.Tensor]) -> bytes:
    """The static int8 QDQ graph of ``fp32_graph``, calibrated on ``calibration`` (preprocessed (C, H, W) inputs).

    Raises ``ExportError`` when onnxruntime's quantization tools are missing or fail.
    """
    if not calibration:
        raise ExportError("int8 needs calibration images, and there are none")
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as e:
        raise ExportError(f"int8 needs onnxruntime's quantization tools ({e}); pip install onnx onnxruntime") from None

    class _Batches(CalibrationDataReader):
        def __init__(self) -> None:
            stacked = torch.stack(list(calibration)).numpy()
            self._batches = iter(np.array_split(stacked, max(1, -(-len(stacked) // CALIBRATION_BATCH))))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {INPUT_NAME: np.ascontiguousarray(batch)}

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="densenet_int8_") as tmp:
        source, prepared, out = Path(tmp) / "fp32.onnx", Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(_batchnorms_as_depthwise_convs(fp32_graph))
        try:
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            quantize_static(
                str(prepared),
                str(out),
                _Batches(),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=OP_TYPES,  # None: every operator onnxruntime can quantize
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
        except Exception as e:  # onnxruntime raises plain Exceptions of many kinds here
            raise ExportError(f"int8 quantization failed: {type(e).__name__}: {str(e).splitlines()[0]}") from e
        data = out.read_bytes()
    logger.info("int8 graph: calibrated on %d images in %.1f s", len(calibration), time.perf_counter() - start)
    return data


def agreement(fp32_session, int8_session, held_out: Sequence[torch.Tensor], batch: int = 16) -> Agreement:
    """Top-1 of the int8 graph against the fp32 graph's on ``held_out`` (preprocessed inputs), in batches."""
    same = 0
    for i in range(0, len(held_out), batch):
        x = torch.stack(list(held_out[i : i + batch])).numpy()
        expected = fp32_session.run([OUTPUT_NAME], {INPUT_NAME: x})[0].argmax(axis=1)
        got = int8_session.run([OUTPUT_NAME], {INPUT_NAME: x})[0].argmax(axis=1)
        same += int((expected == got).sum())
    return Agreement(same, len(held_out))


def _batchnorms_as_depthwise_convs(graph: bytes) -> bytes:
    """``graph`` with each BatchNormalization (constant parameters) as the equivalent 1x1 depthwise Conv."""
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load_model_from_string(graph)
    constants = {t.name: t for t in proto.graph.initializer}
    nodes = []
    for node in proto.graph.node:
        params = node.input[1:5]
        if node.op_type != "BatchNormalization" or len(node.output) != 1 or not all(p in constants for p in params):
            nodes.append(node)
            continue
        gamma, beta, mean, var = (numpy_helper.to_array(constants[p]).astype(np.float64) for p in params)
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        scale = gamma / np.sqrt(var + eps)
        shift = beta - mean * scale
        weight, bias = f"{node.name}.depthwise.weight", f"{node.name}.depthwise.bias"
        proto.graph.initializer.extend(
            [
                numpy_helper.from_array(scale.reshape(-1, 1, 1, 1).astype(np.float32), weight),
                numpy_helper.from_array(shift.astype(np.float32), bias),
            ]
        )
        conv = helper.make_node(
            "Conv", [node.input[0], weight, bias], list(node.output), name=f"{node.name}.depthwise",
            group=len(scale), kernel_shape=[1, 1],
        )  # fmt: skip
        nodes.append(conv)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    used = {name for node in proto.graph.node for name in node.input}
    kept = [t for t in proto.graph.initializer if t.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    return proto.SerializeToString()
