"""onnxruntime vs the project's Predictor: CPU latency of DenseNet-121 exported to ONNX, same run, same inputs.

    python bench/onnx_latency.py [--rounds 20]

Prints one JSON object. Exports DenseNet-121 with random weights (latency does not depend on the values, and
no download is needed) through ``export.export_onnx``, then times, round-robin after a warm-up so that drift
hits all alike: onnxruntime's CPU session (default options) and the Predictor's forward (``Predictor.logits``:
folded BN, channels_last, inference mode), plus the plain ``DenseNet`` module for reference; median ms per
image at batch 1 and batch 8 at 224x224, decode and preprocessing excluded (they are the same for both).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from densenet_demo.serving.export import export_onnx  # noqa: E402
from densenet_demo.serving.predict import build_predictor  # noqa: E402

BATCHES = (1, 8)


def _processor() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    names = [
        line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
    ]
    return names[0] if names else platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    predictor = build_predictor("densenet121", "random", device="cpu")
    with tempfile.TemporaryDirectory(prefix="onnx_latency_") as tmp:
        exported = export_onnx(predictor, out=Path(tmp) / "densenet121.onnx")
        session = ort.InferenceSession(str(exported.onnx_path), providers=["CPUExecutionProvider"])

    generator = torch.Generator().manual_seed(0)
    inputs = {n: torch.randn(n, 3, 224, 224, generator=generator) for n in BATCHES}
    model = predictor.model

    def plain(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x)

    variants = {
        "onnxruntime": lambda x: session.run(None, {"input": x.numpy()})[0],
        "predictor": predictor.logits,
        "pytorch_module": plain,
    }
    agreement = {
        n: float(np.abs(variants["onnxruntime"](x) - predictor.logits(x).numpy()).max()) for n, x in inputs.items()
    }
    per_image_ms: dict[int, dict[str, float]] = {}
    for n, x in inputs.items():
        for fn in variants.values():
            for _ in range(args.warmup):
                fn(x)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, fn in variants.items():
                start = time.perf_counter()
                fn(x)
                times[name].append(time.perf_counter() - start)
        per_image_ms[n] = {name: statistics.median(t) * 1000.0 / n for name, t in times.items()}

    result = {
        "benchmark": "DenseNet-121 at 224x224, CPU, median ms per image (random weights)",
        "cpu": _processor(),
        "torch_threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__},
        "opset": exported.opset,
        "export_s": round(exported.seconds, 1),
        "onnx_mib": round(exported.size_bytes / 2**20, 2),
        "rounds": args.rounds,
    }
    for n, ms in per_image_ms.items():
        result[f"batch_{n}"] = {
            **{f"{name}_ms": round(v, 2) for name, v in ms.items()},
            "onnxruntime_over_predictor": round(ms["onnxruntime"] / ms["predictor"], 2),
            "max_abs_logit_diff": agreement[n],
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
