"""Load on a running app of its own: concurrent /predict requests all answered right, no memory growth over
hundreds of requests, and a flood of trainings answered at once without taking the places predictions need.

Loopback only; bounded in count and in time. Latency and throughput figures come from bench/serve.py.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from helpers import SHORT_TTL_S, AppServer, predict_call
from PIL import Image

from densenet_demo.ui.app import QUEUE_MAX_SIZE

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

MODEL = "densenet_bc100_k12"
CONCURRENT = 40  # requests in flight at once: more than the prediction concurrency limit, within the queue
SEQUENTIAL = 60
# Over SEQUENTIAL requests after a warm-up (measured: 3 MB over 200); 420 KB kept per request would show.
RSS_GROWTH_BOUND_MB = 25


@pytest.fixture(scope="module")
def server(start_app):
    return start_app("load_app", own_tmp=True)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("load_images")
    paths = []
    for i, color in enumerate([(220, 30, 30), (30, 200, 40), (30, 40, 210), (240, 240, 240)]):
        path = folder / f"image{i}.png"
        Image.new("RGB", (64, 48), color).save(path)
        paths.append(path)
    return paths


def _predict(client: Client, image: Path) -> list[tuple[str, float]]:
    label, *_ = predict_call(client, [image], MODEL, "Random init", top_k=5)
    return [(c["label"], c["confidence"]) for c in label["confidences"]]


def _rss_mb(pid: int) -> float:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def test_concurrent_predictions_are_all_answered_and_each_answer_is_its_own(server, images):
    client = Client(server.url, verbose=False)
    expected = {image: _predict(client, image) for image in images}  # one at a time, first
    assert len({tuple(v) for v in expected.values()}) == len(images)  # the images are told apart
    requests = [images[i % len(images)] for i in range(CONCURRENT)]
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=CONCURRENT) as pool:
        answers = list(pool.map(lambda image: _predict(client, image), requests))
    elapsed = time.monotonic() - start
    assert len(answers) == CONCURRENT
    for image, answer in zip(requests, answers, strict=True):
        assert answer == expected[image], image.name
    assert elapsed < 120


def test_memory_does_not_grow_over_hundreds_of_sequential_predictions(server, images):
    client = Client(server.url, verbose=False)
    for i in range(20):  # warm-up: the model, Gradio's caches and the allocator settle
        _predict(client, images[i % len(images)])
    before = _rss_mb(server.process.pid)
    for i in range(SEQUENTIAL):
        assert len(_predict(client, images[i % len(images)])) == 5
    growth = _rss_mb(server.process.pid) - before
    assert growth < RSS_GROWTH_BOUND_MB, f"the server's memory grew by {growth:.1f} MB over {SEQUENTIAL} requests"


def _join(server, api_name: str, data: list) -> int:
    """Put one event in the queue through Gradio's plain HTTP API; the HTTP status of the join."""
    request = urllib.request.Request(
        f"{server.url}gradio_api/call/{api_name}",
        data=json.dumps({"data": data}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        assert e.code != 503 or "Queue is full" in e.read().decode()
        return e.code


def test_a_flood_of_trainings_takes_no_queue_places_and_stop_still_works(server, images):
    """72 /train requests from as many new sessions while one trains: trainings wait in the trainings queue,
    not in Gradio's, so each is answered at once (these sessions have no dataset) and predictions go on."""
    trainer = Client(server.url, verbose=False)
    trainer.predict("Example dataset", None, None, "", api_name="/load_dataset")
    job = trainer.submit(
        MODEL, "Random init", "scratch", 100, None, 8, None, False, "Off", "default", "default", api_name="/train"
    )
    while not job.outputs():  # training holds the trainer
        time.sleep(0.05)
    settings = [MODEL, "Random init", "linear", 1, None, 32, None, False, "Off", "default", "default"]
    statuses = [_join(server, "train", settings) for _ in range(QUEUE_MAX_SIZE + 8)]
    assert statuses == [200] * (QUEUE_MAX_SIZE + 8)  # none turned away: none of them waits in Gradio's queue
    deadline = time.monotonic() + 60
    while _queue_size(server) > 0:  # each was answered ("Check a dataset first"), not queued behind the training
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert len(_predict(Client(server.url, verbose=False), images[0])) == 5  # while the training runs
    # Stop skips the queue (queue=False) as the page sends it, so even a full queue cannot keep a user from stopping.
    assert _stop_as_the_page_does(server, trainer.session_hash) == [
        "Stopping now (mid-step, at the next layer); the best checkpoint so far is kept…"
    ]
    assert "Stopped" in job.result(timeout=120)[3]


def _stop_as_the_page_does(server, session_hash: str) -> list:
    request = urllib.request.Request(
        f"{server.url}gradio_api/run/stop",
        data=json.dumps({"data": [None], "session_hash": session_hash}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.load(r)["data"]


def _queue_size(server) -> int:
    with urllib.request.urlopen(f"{server.url}gradio_api/queue/status", timeout=30) as r:
        return json.load(r)["queue_size"]


def test_sessions_that_expire_leave_no_folders_behind(tmp_path):
    """Eight users each load a zip; once their session state's time to live has passed, every session
    folder (with its extracted zip) is gone, and a user coming back simply starts a new one."""
    import zipfile

    archive = tmp_path / "pets.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for cls, colour in (("cats", (200, 0, 0)), ("dogs", (0, 0, 200))):
            for i in range(2):
                path = tmp_path / f"{cls}{i}.png"
                Image.new("RGB", (32, 32), colour).save(path)
                zf.write(path, f"{cls}/{i}.png")
    server = AppServer.started(tmp_path / "ttl_app", own_tmp=True, script="tests/short_ttl_app.py")
    sessions = lambda: sorted((tmp_path / "ttl_app" / "tmp").glob("densenet_demo_session_*"))  # noqa: E731
    try:
        clients = [Client(server.url, verbose=False) for _ in range(8)]
        for client in clients:
            report = client.predict("Zip file", handle_file(str(archive)), None, "", api_name="/load_dataset")
            assert "4 images in 2 classes" in report
        assert len(sessions()) == 8 and all(any(s.glob("zip_*")) for s in sessions())
        deadline = time.monotonic() + SHORT_TTL_S + 20  # the server looks for expired state every second
        while sessions() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert sessions() == [], server.log()
        report = clients[0].predict("Zip file", handle_file(str(archive)), None, "", api_name="/load_dataset")
        assert "4 images in 2 classes" in report and len(sessions()) == 1
    finally:
        server.stop()
