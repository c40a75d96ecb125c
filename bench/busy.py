"""Predictions while the trainings queue is full: how long a prediction waits, against the same server idle.

    python bench/busy.py [--sessions 8] [--per-session 8] [--predictions 30] [--model densenet_bc100_k12]

Starts ``python app.py`` as a shared server, lets ``--sessions`` sessions load the example dataset, and measures a
ninth session's ``/predict`` (one 224x224 JPEG, top-5, Grad-CAM off), one request at a time:
- idle: no training anywhere (the baseline, in the same run);
- busy: after every session has asked for ``--per-session`` trainings at once (``--sessions`` x ``--per-session``
  requests: one runs, the others wait or are refused), while the first trains.
Prints one JSON object: each phase's p50/p95/max latency and the busy/idle ratios; the training requests'
outcomes (accepted, refused by reason, HTTP 503s) and how long a refusal took to come back.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._app_process import start_app, stop_app  # noqa: E402

# A training long enough to keep the trainer busy while the predictions are measured (it is stopped after).
LONG_TRAINING = ("densenet_fashion", "Random init", "scratch", 100, None, 32, 48, False, "Auto", "default", "default")


WAIT_FOR_ANSWER_S = 20  # a training request that neither starts nor is refused by then waits unseen


def _percentiles(seconds: list[float | None]) -> dict[str, Any]:
    ms = sorted(s * 1000 for s in seconds if s is not None)
    at = lambda q: round(ms[min(len(ms) - 1, int(q * len(ms)))], 1) if ms else None  # noqa: E731
    return {"p50_ms": at(0.5), "p95_ms": at(0.95), "max_ms": at(1.0), "answered": len(ms), "of": len(seconds)}


def _predictions(client: Any, image: Path, model: str, n: int) -> list[float | None]:
    """Each prediction's seconds, or None where it was refused (a full queue)."""
    from gradio_client import handle_file

    args = ([handle_file(str(image))], model, "Random init", None, 5, False)
    latencies: list[float | None] = []
    for _ in range(n):
        start = time.perf_counter()
        try:
            label = client.predict(*args, api_name="/predict")[0]
        except Exception:  # "Queue is full": counted as unanswered
            latencies.append(None)
            continue
        assert label["confidences"], label
        latencies.append(time.perf_counter() - start)
    return latencies


def _ask_to_train(client: Any) -> tuple[str, float]:
    """One /train request: ('accepted', s) once it is running or waiting, or (the refusal's reason, s)."""
    start = time.perf_counter()
    job = client.submit(*LONG_TRAINING, api_name="/train")
    while not job.done() and not job.outputs() and time.perf_counter() - start < WAIT_FOR_ANSWER_S:
        time.sleep(0.05)
    if job.outputs():
        return "accepted", time.perf_counter() - start
    if not job.done():  # neither started nor refused: it waits in Gradio's queue, silent
        return "waiting in Gradio's queue", time.perf_counter() - start
    try:
        job.result()
        return "ended at once", time.perf_counter() - start
    except Exception as error:
        text = str(error)
        reason = "queue full (503)" if "Queue is full" in text else re.sub(r"[:(].*", "", text)[:60]
        return reason, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--per-session", type=int, default=8)
    parser.add_argument("--predictions", type=int, default=30)
    parser.add_argument("--model", default="densenet_bc100_k12")
    args = parser.parse_args()
    from gradio_client import Client

    work = Path(tempfile.mkdtemp(prefix="bench_busy_"))
    image = work / "photo.jpg"
    Image.new("RGB", (224, 224), (120, 160, 90)).save(image, quality=90)
    proc, url, _ = start_app(["app.py"], str(work / "weights"), env={"DENSENET_DEMO_SHARED": "1"})
    try:
        trainers = [Client(url, verbose=False) for _ in range(args.sessions)]
        for client in trainers:
            client.predict("Example dataset", None, None, "", api_name="/load_dataset")
        predictor = Client(url, verbose=False)
        _predictions(predictor, image, args.model, 3)  # the first builds and caches the model
        idle = _predictions(predictor, image, args.model, args.predictions)
        requests = [client for client in trainers for _ in range(args.per_session)]
        with ThreadPoolExecutor(max_workers=len(requests)) as pool:
            outcomes = list(pool.map(_ask_to_train, requests))
        busy = _predictions(predictor, image, args.model, args.predictions)
        for client in trainers:
            client.predict(api_name="/stop")
    finally:
        stop_app(proc)
        shutil.rmtree(work, ignore_errors=True)
    refusals = [seconds for reason, seconds in outcomes if reason not in ("accepted", "waiting in Gradio's queue")]
    idle_stats, busy_stats = _percentiles(idle), _percentiles(busy)
    result = {
        "benchmark": "busy",
        "model": args.model,
        "idle": idle_stats,
        "busy": busy_stats,
        "busy_over_idle": {
            q: round(busy_stats[f"{q}_ms"] / idle_stats[f"{q}_ms"], 2) if busy_stats["answered"] else None
            for q in ("p50", "p95")
        },
        "training_requests": len(outcomes),
        "outcomes": {reason: sum(r == reason for r, _ in outcomes) for reason in sorted({r for r, _ in outcomes})},
        "refusal_s": {"median": round(sorted(refusals)[len(refusals) // 2], 2), "max": round(max(refusals), 2)}
        if refusals
        else None,
        "cpu_threads": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
