"""OpenVINO beside onnxruntime on this CPU: DenseNet-121's forward pass at batch 1, fp32 and int8, same graphs.

    pip install openvino   # not a dependency of the project: this bench decides whether it should become one
    python bench/openvino_vs_onnxruntime.py [--rounds 20] [--threads 1,2]

Prints one JSON object. The graphs are the onnxruntime backend's own: DenseNet-121 (random weights: latency does
not depend on the values) exported and checked by the Predictor, and its static int8 QDQ graph quantized the same
way the int8 backend does (calibrated on the presets' calibration set). OpenVINO compiles both ONNX files for its
CPU plugin: fp32 as is (and with bf16 inference precision where the CPU has bf16), int8 from the QDQ graph (its
FakeQuantize path), with the LATENCY hint. Each (runtime, precision, threads) runs in turn each round, after a
warm-up; medians, and each one's ratio to onnxruntime's best. OpenVINO is worth a backend only at >= 1.5x.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from densenet_demo.serving import calibration, int8, onnx_graph  # noqa: E402
from densenet_demo.serving.predict import get_predictor  # noqa: E402

ADOPT_AT = 1.5  # OpenVINO's speed-up over onnxruntime's best that would make it worth a backend


def _graphs(folder: Path) -> tuple[bytes, bytes]:
    os.environ["DENSENET_DEMO_WEIGHTS"] = str(folder)
    predictor = get_predictor("densenet121", "random")
    predictor.engine("onnxruntime", how="wait")
    fp32 = predictor.graphs.fp32_graph()
    return fp32, int8.quantize(fp32, calibration.generic(predictor.preprocess).calibration)


def _openvino(core, data: bytes, path: Path, threads: int, bf16: bool):
    path.write_bytes(data)
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    if bf16:
        config["INFERENCE_PRECISION_HINT"] = "bf16"
    compiled = core.compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})


def _logits(result) -> np.ndarray:
    """onnxruntime returns a list of outputs, OpenVINO a mapping of them: the one output either way."""
    return np.asarray(result[0] if isinstance(result, list) else next(iter(result.values())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", default="1,2")
    args = parser.parse_args()
    try:
        import openvino
    except ImportError:
        raise SystemExit("this bench needs OpenVINO: pip install openvino") from None
    core = openvino.Core()
    capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench_openvino_") as tmp:
        fp32, quantized = _graphs(Path(tmp))
        x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
        variants = {}
        for threads in [int(t) for t in args.threads.split(",")]:
            for name, data in (("fp32", fp32), ("int8", quantized)):
                session = onnx_graph.onnxruntime_session(data, threads)
                variants[f"onnxruntime_{name}_{threads}t"] = lambda x, s=session: s.run(None, {"input": x})
                path = Path(tmp) / f"{name}.onnx"
                variants[f"openvino_{name}_{threads}t"] = _openvino(core, data, path, threads, bf16=False)
            if "BF16" in capabilities:
                variants[f"openvino_bf16_{threads}t"] = _openvino(core, fp32, Path(tmp) / "bf16.onnx", threads, True)
        outputs = {name: _logits(fn(x)) for name, fn in variants.items()}
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, fn in variants.items():
                start = time.perf_counter()
                fn(x)
                times[name].append((time.perf_counter() - start) * 1000.0)
    median = {name: statistics.median(t) for name, t in times.items()}
    best_ort = min(v for k, v in median.items() if k.startswith("onnxruntime"))
    best_ov = min(v for k, v in median.items() if k.startswith("openvino"))
    reference = outputs[next(k for k in outputs if k.startswith("onnxruntime_fp32"))]
    print(
        json.dumps(
            {
                "benchmark": "OpenVINO vs onnxruntime, DenseNet-121 forward at batch 1, 224x224, CPU",
                "versions": {"openvino": openvino.__version__, "onnxruntime": __import__("onnxruntime").__version__},
                "cpu_capabilities": capabilities,
                "median_ms": {k: round(v, 1) for k, v in median.items()},
                "best_ms": {k: round(min(t), 1) for k, t in times.items()},
                "max_abs_logit_diff_to_onnxruntime_fp32": {
                    k: float(np.abs(v.reshape(reference.shape) - reference).max()) for k, v in outputs.items()
                },
                "openvino_speedup_over_onnxruntime_best": round(best_ort / best_ov, 2),
                "adopt_at": ADOPT_AT,
                "rounds": args.rounds,
                "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
