"""A busy shared server: trainings wait in the trainings queue, never in the places predictions need.

Eight sessions each ask for eight trainings at once (64 requests) while a ninth predicts: every prediction is
answered; each session gets one training (running, or waiting with its place shown) and its seven others are
refused at once, with that place. Stop takes a waiting training out of the queue. More sessions than the queue
holds: the others are refused at once, saying how busy the trainer is. Against a shared-server launch of
``python app.py``, through ``gradio_client``.
"""

from __future__ import annotations

import re
import time

import pytest
from gradio_client import Client, handle_file
from helpers import AppServer
from PIL import Image

from densenet_demo.hosting.training_queue import MAX_WAITING

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

MODEL = "densenet_bc100_k12"
# Long enough to keep the trainer busy for the whole test; every run is stopped at the end.
LONG = ("densenet_fashion", "Random init", "scratch", 100, None, 32, 48, False, "Auto", "default", "default")
SECOND = re.compile(r"This session's training (is training now|is waiting: \d+(st|nd|rd|th) in line)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("busy_app")
    server = AppServer.started(root, own_tmp=True, env={"DENSENET_DEMO_SHARED": "1"})
    yield server
    server.stop()


def _until(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _message(job) -> str:
    try:
        job.result(timeout=5)
    except Exception as error:
        return str(error)
    return ""


def _progress(job) -> str:
    outputs = job.outputs()
    return str(outputs[-1][2]) if outputs else ""  # (loss, acc, progress, log, ...)


def test_predictions_are_answered_while_eight_sessions_queue_sixty_four_trainings(server, tmp_path):
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (224, 224), (120, 160, 90)).save(photo, quality=90)
    trainers = [Client(server.url, verbose=False) for _ in range(8)]
    for client in trainers:
        client.predict("Example dataset", None, None, "", api_name="/load_dataset")
    predictor = Client(server.url, verbose=False)
    predictor.predict([handle_file(str(photo))], MODEL, "Random init", None, 5, False, api_name="/predict")

    asked = time.monotonic()
    jobs = {client: [client.submit(*LONG, api_name="/train") for _ in range(8)] for client in trainers}
    latencies = []
    for _ in range(12):  # the ninth session predicts meanwhile: each answered, none waits behind a training
        start = time.monotonic()
        label, *_ = predictor.predict(
            [handle_file(str(photo))], MODEL, "Random init", None, 5, False, api_name="/predict"
        )
        latencies.append(time.monotonic() - start)
        assert len(label["confidences"]) == 5
    assert max(latencies) < 60, latencies

    everyone = [job for session in jobs.values() for job in session]
    _until(lambda: all(job.done() or job.outputs() for job in everyone), 120, "every request answered or started")
    for session in jobs.values():
        refused = [job for job in session if job.done()]
        assert len(refused) == 7, [_message(job) for job in refused]  # and one accepted: running or waiting
        for job in refused:
            assert SECOND.search(_message(job)), _message(job)
    assert time.monotonic() - asked < 180  # the 56 refusals came at once, not after a training
    _until(lambda: sum("Waiting for the trainer" in _progress(job) for job in everyone) == 7, 120, "places shown")
    waiting = sorted(
        re.search(r"(\d+)(st|nd|rd|th) in line", _progress(j)).group(1) for j in everyone if "line" in _progress(j)
    )
    assert waiting == [str(n) for n in range(1, 8)], [_progress(job) for job in everyone if job.outputs()]

    for client in trainers:  # Stop ends the running training and takes the waiting ones out of the queue
        client.predict(api_name="/stop")
    for job in (job for session in jobs.values() for job in session if not job.done()):
        job.result(timeout=300)
        assert "nothing was trained" in _progress(job) or "Stopped" in _progress(job), _progress(job)
    label, *_ = predictor.predict([handle_file(str(photo))], MODEL, "Random init", None, 5, False, api_name="/predict")
    assert label["confidences"]


def test_more_sessions_than_the_queue_holds_are_refused_at_once_and_predictions_go_on(server, tmp_path):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (40, 32), (20, 160, 40)).save(photo)
    sessions = [Client(server.url, verbose=False) for _ in range(MAX_WAITING + 4)]
    for client in sessions:
        client.predict("Example dataset", None, None, "", api_name="/load_dataset")
    jobs = [client.submit(*LONG, api_name="/train") for client in sessions]
    _until(lambda: all(job.done() or job.outputs() for job in jobs), 120, "every request answered or started")
    refused = [_message(job) for job in jobs if job.done()]
    assert len(refused) == 3, refused  # one trains, MAX_WAITING wait
    assert all(f"1 training running and {MAX_WAITING} waiting" in text for text in refused), refused
    label, *_ = sessions[-1].predict(
        [handle_file(str(photo))], MODEL, "Random init", None, 3, False, api_name="/predict"
    )
    assert label["confidences"]
    for client in sessions:
        client.predict(api_name="/stop")
    for job in jobs:
        if not job.done():
            job.result(timeout=300)
