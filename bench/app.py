"""The app as a user meets it: cold start of `python app.py`, and /predict through the API vs in process.

    python bench/app.py [--starts 3] [--requests 30] [--model densenet121]

Prints one JSON object: seconds from launching `python app.py` to its first HTTP 200 (each start a fresh
process, median of --starts); then the median latency of one image through `gradio_client` /predict
against calling the same Predictor directly in this process (same model, weights and image), and the ratio.
Grad-CAM is off in both, so both measure classification alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._app_process import start_app, stop_app  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--model", default="densenet121")
    args = parser.parse_args()
    weights_dir = tempfile.mkdtemp(prefix="bench_app_weights_")
    try:
        result = _measure(args, weights_dir)
    finally:  # the app exports its graphs into it: a few hundred MB
        shutil.rmtree(weights_dir, ignore_errors=True)
    print(json.dumps(result, indent=2))


def _measure(args: argparse.Namespace, weights_dir: str) -> dict:
    """Cold starts, then /predict through the API and the same Predictor in this process."""
    image = Path(weights_dir) / "photo.jpg"
    Image.new("RGB", (640, 480), (120, 160, 90)).save(image, quality=90)

    cold = []
    for _ in range(args.starts):
        proc, _url, seconds = start_app(["app.py"], weights_dir)
        cold.append(seconds)
        stop_app(proc)

    from gradio_client import Client, handle_file

    from densenet_demo.serving.predict import get_predictor

    proc, url, _ = start_app(["app.py"], weights_dir)
    try:
        client = Client(url, verbose=False)
        call = lambda: client.predict(  # noqa: E731
            [handle_file(str(image))], args.model, "Random init", None, 5, False, api_name="/predict"
        )
        call()  # the server builds and caches the predictor on the first request
        api_ms = []
        for _ in range(args.requests):
            t = time.perf_counter()
            call()
            api_ms.append((time.perf_counter() - t) * 1000)
    finally:
        stop_app(proc)

    os.environ["DENSENET_DEMO_WEIGHTS"] = weights_dir
    predictor = get_predictor(args.model, "random")
    direct_ms = []
    for _ in range(args.requests):
        t = time.perf_counter()
        predictor.predict_images([str(image)], top_k=5)
        direct_ms.append((time.perf_counter() - t) * 1000)

    api, direct = statistics.median(api_ms), statistics.median(direct_ms)
    return {
        "benchmark": "app",
        "cold_start_s": {"runs": [round(s, 2) for s in cold], "median": round(statistics.median(cold), 2)},
        "predict_latency_ms": {
            "model": args.model,
            "image": "640x480 JPEG",
            "requests": args.requests,
            "api_median": round(api, 1),
            "direct_median": round(direct, 1),
            "api_over_direct": round(api / direct, 2),
            "api_overhead_ms": round(api - direct, 1),
        },
        "cpu_threads": os.cpu_count(),
    }


if __name__ == "__main__":
    main()
