"""Per image, end to end (decode -> top-5, batch 1): torchvision eager against each backend of the Predictor, in
this process and through the command line's one-shot ``predict``; same weights, same JPEGs, alternating rounds.

    python bench/onnx_latency.py [--run RUN_FOLDER] [--rounds 10] [--cli-rounds 5]

Prints one JSON object. The model is DenseNet-121 at 224x224: by default with random weights (latency does not
depend on the values, and nothing is downloaded); ``--run`` takes a fine-tuned DenseNet-121 run instead (copied
into the bench's own weights folder), whose int8 graph is calibrated on its training images and kept only if its
top-1 agrees with fp32 on its validation images. Random weights give near-uniform logits whose top-1 int8 flips,
so their int8 graph is not kept; its latency is then measured on a graph quantized here the same way.

- ``in_process``: median ms per image of torchvision eager (PIL decode, torchvision's Resize/CenterCrop/Normalize,
  ``densenet121()`` under ``no_grad``, softmax, top-5) and of ``Predictor.predict_with`` for torch, onnxruntime,
  int8 and auto (once the cache exists), the variants' order rotating each round; ratios to torchvision eager.
- ``command_line``: each round, fresh processes: ``python -m densenet_demo predict IMG --backend B --json`` for
  each backend (its JSON ``latency_ms``: decode to top-k of the one image, the process's start not included) and
  the same image through a torchvision eager script (``bench/_torchvision_predict.py``, one warm-up forward first,
  as the Predictor warms up when it is built). The first onnxruntime and int8 runs build the cache: timed apart.
- ``forward_ms``: the forward pass alone at batch 1 and 8 for each backend and torchvision's module.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from densenet_demo.serving import calibration, int8, onnx_graph  # noqa: E402
from densenet_demo.serving.backends import GraphEngine, onnxruntime_threads  # noqa: E402
from densenet_demo.serving.predict import get_predictor  # noqa: E402

BACKENDS = ("torch", "onnxruntime", "int8", "auto")
CLI_BACKENDS = ("torch", "onnxruntime", "int8")
PHOTOS = sorted((ROOT / "examples").glob("*.jpg"))


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _torchvision_model(model: str, weights: Path) -> torch.nn.Module:
    """torchvision's densenet121 with the bench's weights (a .pth state dict, or a run's safetensors)."""
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(weights)
        net = torchvision.models.densenet121(num_classes=state["classifier.weight"].shape[0])
        net.load_state_dict(state)
        return net.eval()
    net = torchvision.models.densenet121()
    net.load_state_dict(torch.load(weights, weights_only=True))
    return net.eval()


def _setup(args: argparse.Namespace, folder: Path) -> tuple[str, str | None, Path]:
    """(model, weights argument, weights file) in the bench's own weights folder."""
    if args.run:
        run = Path(args.run).resolve()
        target = folder / "runs" / run.name
        shutil.copytree(run, target, ignore=shutil.ignore_patterns("onnx"))  # no graph: the bench makes its own
        return f"run:{run.name}", None, target / "model.safetensors"
    torch.manual_seed(0)
    weights = folder / "densenet121-random.pth"
    torch.save(torchvision.models.densenet121().state_dict(), weights)
    return "densenet121", str(weights), weights


def _engines(predictor) -> tuple[dict, dict]:
    """Each backend's engine, prepared now (export, calibration, check), and what that took."""
    engines, notes = {}, {}
    for backend in ("torch", "onnxruntime", "int8", "auto"):
        start = time.perf_counter()
        engine, note = predictor.engine(backend, how="wait")
        notes[backend] = {"answered_by": engine.name, "prepare_s": round(time.perf_counter() - start, 1)}
        if note:
            notes[backend]["note"] = note
        engines[backend] = engine
    if engines["int8"].name != "int8":  # not kept: time a graph quantized here, the same way
        images = calibration.generic(predictor.preprocess).calibration
        data = int8.quantize(predictor.graphs.fp32_graph(), images)
        engines["int8"] = GraphEngine("int8", onnx_graph.onnxruntime_session(data, onnxruntime_threads()))
        notes["int8"]["timed"] = "a graph quantized by this bench the same way (the Predictor did not keep its own)"
    return engines, notes


def _in_process(predictor, engines: dict, eager, preprocessing, jpegs: list[bytes], rounds: int) -> dict:
    transform = torchvision.transforms.Compose(
        [
            torchvision.transforms.Resize(preprocessing.resize_size),
            torchvision.transforms.CenterCrop(preprocessing.image_size),
            torchvision.transforms.ToTensor(),
            torchvision.transforms.Normalize(preprocessing.mean, preprocessing.std),
        ]
    )
    top_k = min(5, len(predictor.class_names))  # a run may have fewer classes than 5

    def torchvision_eager(jpeg: bytes) -> None:
        x = transform(Image.open(io.BytesIO(jpeg)).convert("RGB"))[None]
        with torch.no_grad():
            torch.softmax(eager(x), dim=1).topk(top_k)

    variants = {"torchvision_eager": torchvision_eager}
    for backend in BACKENDS:
        variants[f"predictor_{backend}"] = lambda jpeg, e=engines[backend]: predictor.predict_with(e, [jpeg], top_k)
    for fn in variants.values():  # warm-up: first runs allocate
        fn(jpegs[0])
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for jpeg in jpegs:
            for name in order:
                start = time.perf_counter()
                variants[name](jpeg)
                times[name].append((time.perf_counter() - start) * 1000.0)
    median = {name: statistics.median(t) for name, t in times.items()}
    base = median["torchvision_eager"]
    return {
        "median_ms": {k: round(v, 1) for k, v in median.items()},
        "ratio_to_torchvision_eager": {k: round(v / base, 3) for k, v in median.items()},
    }


def _cli(model: str, weights_arg: str | None, weights: Path, folder: Path, rounds: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "DENSENET_DEMO_AUTO_BACKEND"}
    env["DENSENET_DEMO_WEIGHTS"] = str(folder)

    def run(argv: list[str]) -> tuple[float, float]:
        start = time.perf_counter()
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr}")
        return json.loads(done.stdout.splitlines()[-1])["latency_ms"], wall

    def predict(image: Path, backend: str) -> tuple[float, float]:
        argv = [sys.executable, "-m", "densenet_demo", "predict", str(image), "--model", model, "--json"]
        return run(argv + ["--backend", backend] + (["--weights", weights_arg] if weights_arg else []))

    first_s = {b: round(predict(PHOTOS[0], b)[1], 1) for b in ("onnxruntime", "int8")}  # builds the cache
    variants = {f"predict_{b}": (lambda image, b=b: predict(image, b)) for b in (*CLI_BACKENDS, "auto")}
    script = [sys.executable, str(ROOT / "bench" / "_torchvision_predict.py")]
    variants["torchvision_eager"] = lambda image: run([*script, str(image), str(weights)])
    latency: dict[str, list[float]] = {name: [] for name in variants}
    wall: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        image = PHOTOS[r % len(PHOTOS)]
        for name in names[r % len(names) :] + names[: r % len(names)]:
            ms, seconds = variants[name](image)
            latency[name].append(ms)
            wall[name].append(seconds)
    median = {name: statistics.median(v) for name, v in latency.items()}
    base = median["torchvision_eager"]
    return {
        "first_run_with_export_s": first_s,
        "median_latency_ms": {k: round(v, 1) for k, v in median.items()},
        "ratio_to_torchvision_eager": {k: round(v / base, 3) for k, v in median.items()},
        "median_process_wall_s": {k: round(statistics.median(v), 2) for k, v in wall.items()},
    }


def _forward(engines: dict, eager, preprocessing, rounds: int) -> dict:
    out = {}
    for batch in (1, 8):
        x = onnx_graph.check_batch(preprocessing, batch)
        variants = {name: engines[name].logits for name in ("torch", "onnxruntime", "int8")}

        def module(x=x) -> None:
            with torch.no_grad():
                eager(x)

        variants["torchvision_module"] = lambda x: module(x)
        for fn in variants.values():
            fn(x)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(rounds):
            for name, fn in variants.items():
                start = time.perf_counter()
                fn(x)
                times[name].append((time.perf_counter() - start) * 1000.0 / batch)
        out[f"batch_{batch}_ms_per_image"] = {k: round(statistics.median(v), 1) for k, v in times.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None, help="a fine-tuned DenseNet-121 run folder (default: random weights)")
    parser.add_argument("--rounds", type=int, default=10, help="in-process rounds over the example photos")
    parser.add_argument("--cli-rounds", type=int, default=5, help="command-line rounds (0: skip)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_backends_") as tmp:
        folder = Path(tmp)
        os.environ["DENSENET_DEMO_WEIGHTS"] = str(folder)
        os.environ.pop("DENSENET_DEMO_AUTO_BACKEND", None)
        model, weights_arg, weights = _setup(args, folder)
        predictor = get_predictor(model, weights_arg)
        engines, prepared = _engines(predictor)
        eager = _torchvision_model(model, weights)
        jpegs = [p.read_bytes() for p in PHOTOS]
        print(f"prepared: {json.dumps(prepared)}", file=sys.stderr)
        result = {
            "benchmark": "backends, per image end to end (decode -> top-5, batch 1)",
            "model": f"{model} ({predictor.weights_label}), {predictor.preprocessing.image_size} px",
            "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()},
            "versions": {"torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__},
            "prepared": prepared,
            "int8": next(s.__dict__ for s in predictor.backend_states() if s.backend == "int8"),
            "in_process": _in_process(predictor, engines, eager, predictor.preprocessing, jpegs, args.rounds),
            "forward_ms": _forward(engines, eager, predictor.preprocessing, args.rounds),
        }
        print(json.dumps(result), file=sys.stderr)  # what is measured so far, should the rest be cut short
        if args.cli_rounds:
            result["command_line"] = _cli(model, weights_arg, weights, folder, args.cli_rounds)
    result["load_average_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
