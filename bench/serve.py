"""Serving /predict under load: latency and throughput for each backend, prediction concurrency limit and
onnxruntime thread count, the PyTorch backend measured as the baseline in the same run.

    python bench/serve.py [--model densenet121] [--backends torch,onnxruntime] [--limits 1,2,4] [--threads 1,2]
                          [--requests 64] [--sequential 30] [--repeats 2] [--client gradio_client|http]
                          [--run RUN_FOLDER]

For each (limit, threads), starts `python app.py` with `PREDICT_CONCURRENCY` set to the limit and
`DENSENET_DEMO_ORT_THREADS` to the threads of a lone forward pass (passes that overlap take one each; 1: one
always), a fresh process, loopback only; one weights folder for the whole bench (removed at the end), so a graph
exported by the first start is loaded from the cache by the next. For each backend
(`/predict`'s `backend` argument) warms up until that backend answers (the first start exports the graph in the
background meanwhile), then measures through the client:
- sequential: one request at a time, p50/p95 latency;
- concurrent: all --requests submitted at once; throughput (requests/s over the wall time) and p50/p95
  latency from submit to result (queue wait included), and where the cores went: the server's and the client's
  CPU milliseconds per request.
The client (--client): `gradio_client` (the default), or `http`: plain HTTP on Gradio's documented call API
(upload, `POST /gradio_api/call/predict`, read its event stream), as curl or any language would call it.
gradio_client waits for each of the server's messages in 50 ms polls: an endpoint that returns its input at once
takes it ~80 ms on this machine, so sequential figures under that are only seen over plain HTTP.
The backends alternate --repeats times (torch, onnxruntime, torch, onnxruntime, ...): the figures are medians over
the repeats, and each backend's ratio to torch's at the same settings. Prints one JSON object. One 224x224 JPEG
per request, top-5, Grad-CAM off (classification alone); the client runs on the same cores as the server.
--run: a fine-tuned run (a folder of weights/runs/) served instead of --model, copied into the bench's weights
folder without its graphs (the app makes its own); its int8 graph is calibrated on the images the run records.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._app_process import start_app, stop_app  # noqa: E402

# The app with another prediction concurrency limit: the module constant is read when the page is built.
BY = {"torch": "by PyTorch", "onnxruntime": "by ONNX Runtime", "int8": "by int8", "auto": "by ONNX Runtime"}
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


class GradioClient:
    """/predict through gradio_client."""

    def __init__(self, url: str, image: Path, requests: int) -> None:
        from gradio_client import Client, handle_file

        # As many workers as requests at once (the client's default is 40), and time enough for a loaded machine.
        self.client = Client(url, verbose=False, max_workers=max(40, requests), httpx_kwargs={"timeout": 900})
        self.image = handle_file(str(image))

    def predict(self, model: str, backend: str) -> tuple[dict, str]:
        label, _, _, info = self.client.predict([self.image], *_settings(model, backend), api_name="/predict")
        return label, info


class HttpClient:
    """/predict in plain HTTP: the image uploaded, the call posted, its event stream read to the end."""

    def __init__(self, url: str, image: Path, requests: int) -> None:
        import httpx

        limits = httpx.Limits(max_connections=2 * requests, max_keepalive_connections=2 * requests)
        self.http, self.api, self.image = httpx.Client(timeout=900, limits=limits), f"{url}gradio_api/", image

    def predict(self, model: str, backend: str) -> tuple[dict, str]:
        with self.image.open("rb") as f:
            uploaded = self.http.post(self.api + "upload", files={"files": (self.image.name, f, "image/jpeg")})
        uploaded.raise_for_status()
        photo = {"path": uploaded.json()[0], "meta": {"_type": "gradio.FileData"}}
        call = self.http.post(self.api + "call/predict", json={"data": [[photo], *_settings(model, backend)]})
        call.raise_for_status()
        event = ""
        with self.http.stream("GET", f"{self.api}call/predict/{call.json()['event_id']}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: ") and event in ("complete", "error"):
                    data = json.loads(line.removeprefix("data: "))
                    if event == "error":
                        raise RuntimeError(str(data))
                    return data[0], data[3]
        raise RuntimeError(f"the stream ended without a result (last event {event!r})")


CLIENTS = {"gradio_client": GradioClient, "http": HttpClient}


def _settings(model: str, backend: str) -> list:
    """/predict's arguments after the files: random weights (nothing to download), top-5, Grad-CAM off."""
    return [model, "Random init", None, 5, False, backend]


def _client_call(client, args: tuple) -> tuple[float, bool, str]:
    """(seconds, answered with classes, info); a request that fails counts as not answered, the bench goes on."""
    start = time.perf_counter()
    try:
        label, info = client.predict(*args)
    except Exception as e:  # a timeout or a refusal under load is a figure, not the bench's end
        return time.perf_counter() - start, False, f"{type(e).__name__}: {e}"
    return time.perf_counter() - start, bool(label.get("confidences")), info


def _warm_up(client, args: tuple, backend: str, timeout_s: float = 900) -> int:
    """Requests until ``backend`` answers (its graph exported or loaded in the background); returns how many."""
    deadline, n = time.monotonic() + timeout_s, 0
    while time.monotonic() < deadline:
        n += 1
        if BY[backend] in _client_call(client, args)[2] and n >= 3:
            return n
        time.sleep(0.5)
    raise SystemExit(f"{backend} did not answer within {timeout_s:.0f} s")


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system, every thread) the process has used so far; NaN where /proc is not there."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(client, args: tuple, requests: int, sequential: int, server_pid: int) -> dict:
    one_by_one = [_client_call(client, args)[0] for _ in range(sequential)]
    start, server_cpu, client_cpu = time.perf_counter(), _cpu_s(server_pid), time.process_time()
    with ThreadPoolExecutor(max_workers=requests) as pool:
        outcomes = list(pool.map(lambda _: _client_call(client, args), range(requests)))
    wall = time.perf_counter() - start
    server_cpu, client_cpu = _cpu_s(server_pid) - server_cpu, time.process_time() - client_cpu
    return {
        "sequential": {"requests_per_s": sequential / sum(one_by_one), **_summary(one_by_one)},
        "concurrent": {
            "answered": sum(ok for _, ok, _ in outcomes),
            "requests_per_s": requests / wall,
            **_summary([seconds for seconds, _, _ in outcomes]),
            # where the cores went: the server's CPU time per request (all its threads), and the client's
            "server_cpu_ms_per_request": 1000 * server_cpu / requests,
            "client_cpu_ms_per_request": 1000 * client_cpu / requests,
        },
    }


def _median_of(runs: list[dict]) -> dict:
    """Per figure, the median over the repeats."""
    return {
        part: {key: round(statistics.median(r[part][key] for r in runs), 1) for key in runs[0][part]}
        for part in ("sequential", "concurrent")
    }


def _one_setting(url: str, image: Path, args: argparse.Namespace, backends: list[str], server_pid: int) -> dict:
    client = CLIENTS[args.client](url, image, args.requests)
    calls = {b: (args.model, b) for b in backends}
    warm = {b: _warm_up(client, calls[b], b) for b in backends}
    runs: dict[str, list[dict]] = {b: [] for b in backends}
    for _ in range(args.repeats):
        for backend in backends:
            runs[backend].append(_measure(client, calls[backend], args.requests, args.sequential, server_pid))
    figures = {b: {**_median_of(runs[b]), "warm_up_requests": warm[b]} for b in backends}
    if "torch" in figures:
        base = figures["torch"]
        for f in figures.values():
            f["ratio_to_torch"] = {
                "sequential_p50": round(f["sequential"]["p50_ms"] / base["sequential"]["p50_ms"], 3),
                "concurrent_requests_per_s": round(
                    f["concurrent"]["requests_per_s"] / base["concurrent"]["requests_per_s"], 3
                ),
            }
    return figures


def _all_settings(args: argparse.Namespace, weights_dir: str) -> tuple[dict[str, dict], float]:
    """Every (limit, threads) setting measured on a fresh app; the figures, and the load average before."""
    if args.run:
        run = Path(args.run).resolve()
        shutil.copytree(run, Path(weights_dir) / "runs" / run.name, ignore=shutil.ignore_patterns("onnx"))
        args.model = f"run:{run.name}"
    image = Path(weights_dir) / "photo.jpg"
    Image.radial_gradient("L").convert("RGB").resize((224, 224)).save(image, quality=90)
    backends = args.backends.split(",")
    load_before = os.getloadavg()[0]
    results: dict[str, dict] = {}
    for limit in [int(x) for x in args.limits.split(",")]:
        for threads in args.threads.split(","):
            # "default": the app's own choice (every core for a lone pass, one thread each when passes overlap)
            env = {} if threads == "default" else {"DENSENET_DEMO_ORT_THREADS": str(int(threads))}
            proc, url, _ = start_app(["-c", _LAUNCH, str(limit)], weights_dir, env=env)
            try:
                key = f"limit {limit}, onnxruntime threads {threads}"
                results[key] = _one_setting(url, image, args, backends, proc.pid)
                print(json.dumps({key: results[key]}), file=sys.stderr)  # kept should a later setting fail
            finally:
                stop_app(proc)
    return results, load_before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="densenet121")
    parser.add_argument("--backends", default="torch,onnxruntime", help="/predict's backend argument, alternated")
    parser.add_argument("--limits", default="1,2,4", help="prediction concurrency limits to compare")
    parser.add_argument(
        "--threads", default="1,2", help="onnxruntime intra-op threads per session to compare ('default': the app's)"
    )
    parser.add_argument("--requests", type=int, default=64, help="submitted at once")
    parser.add_argument("--sequential", type=int, default=30)
    parser.add_argument("--client", choices=sorted(CLIENTS), default="gradio_client", help="how requests are sent")
    parser.add_argument("--repeats", type=int, default=2, help="alternations of the backends per setting")
    parser.add_argument("--run", default=None, help="a fine-tuned run's folder, served instead of --model")
    args = parser.parse_args()
    weights_dir = tempfile.mkdtemp(prefix="bench_serve_weights_")
    try:
        results, load_before = _all_settings(args, weights_dir)
    finally:  # the graphs exported into it are a few hundred MB
        shutil.rmtree(weights_dir, ignore_errors=True)
    print(
        json.dumps(
            {
                "benchmark": "serve",
                "model": args.model,
                "image": "224x224 JPEG, top-5, Grad-CAM off",
                "client": args.client,
                "results": results,
                "cpu_threads": os.cpu_count(),
                "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
