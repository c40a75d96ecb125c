"""Serving /predict under load: latency and throughput for each prediction concurrency limit.

    python bench/serve.py [--model densenet_bc100_k12] [--limits 1,2,4] [--requests 64] [--sequential 30]

For each limit, starts `python app.py` with `PREDICT_CONCURRENCY` set to it (a fresh process, its own weights
folder, loopback only), warms the model up, then measures through `gradio_client`:
- sequential: one request at a time, p50/p95 latency;
- concurrent: all --requests submitted at once; throughput (requests/s over the wall time) and p50/p95
  latency from submit to result (queue wait included).
Prints one JSON object. One 224x224 JPEG per request, top-5, Grad-CAM off (classification alone).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._app_process import start_app, stop_app  # noqa: E402

# The app with another prediction concurrency limit: the module constant is read when the page is built.
_LAUNCH = (
    "import sys; import densenet_demo.ui as ui; from densenet_demo.ui import predict_tab; "
    "predict_tab.PREDICT_CONCURRENCY = int(sys.argv[1]); ui.launch(ui.build_app())"
)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _summary(latencies_s: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in latencies_s]
    return {"p50_ms": round(statistics.median(ms), 1), "p95_ms": round(_percentile(ms, 0.95), 1)}


def _measure(url: str, image: Path, model: str, requests: int, sequential: int) -> dict:
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    args = ([handle_file(str(image))], model, "Random init", None, 5, False)
    for _ in range(3):  # the first builds and caches the predictor
        client.predict(*args, api_name="/predict")

    def timed_call() -> tuple[float, bool]:
        t = time.perf_counter()
        label = client.predict(*args, api_name="/predict")[0]
        return time.perf_counter() - t, bool(label.get("confidences"))

    one_by_one = [timed_call()[0] for _ in range(sequential)]

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=requests) as pool:
        outcomes = list(pool.map(lambda _: timed_call(), range(requests)))
    wall = time.perf_counter() - start
    latencies = [seconds for seconds, _ in outcomes]
    answered = sum(ok for _, ok in outcomes)
    return {
        "sequential": {
            "requests": sequential,
            "requests_per_s": round(sequential / sum(one_by_one), 1),
            **_summary(one_by_one),
        },
        "concurrent": {
            "requests": requests,
            "answered": answered,
            "wall_s": round(wall, 2),
            "requests_per_s": round(requests / wall, 1),
            **_summary(latencies),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="densenet_bc100_k12")
    parser.add_argument("--limits", default="1,2,4", help="prediction concurrency limits to compare")
    parser.add_argument("--requests", type=int, default=64, help="submitted at once")
    parser.add_argument("--sequential", type=int, default=30)
    args = parser.parse_args()
    weights_dir = tempfile.mkdtemp(prefix="bench_serve_weights_")
    image = Path(weights_dir) / "photo.jpg"
    Image.radial_gradient("L").convert("RGB").resize((224, 224)).save(image, quality=90)

    results = {}
    for limit in [int(x) for x in args.limits.split(",")]:
        proc, url, _ = start_app(["-c", _LAUNCH, str(limit)], weights_dir)
        try:
            results[str(limit)] = _measure(url, image, args.model, args.requests, args.sequential)
        finally:
            stop_app(proc)
    print(
        json.dumps(
            {
                "benchmark": "serve",
                "model": args.model,
                "image": "224x224 JPEG, top-5, Grad-CAM off",
                "by_concurrency_limit": results,
                "cpu_threads": os.cpu_count(),
                "torch_threads": __import__("torch").get_num_threads(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
