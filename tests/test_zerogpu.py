"""Hosting on ZeroGPU: where work runs (hosting/gpu.py), a training run as a chain of GPU calls
(training/runners.py), ZeroGPU's refusals as plain messages; the test double's own rules (tests/fake_spaces); and
the real app under the double (a forked worker per call, everything pickled, calls killed past their duration,
durations above the cap refused), through gradio_client and the command line."""

from __future__ import annotations

import importlib
import itertools
import json
import os
import pickle
import re
import subprocess
import sys
import time
from pathlib import Path

import gradio as gr
import pytest
import torch
from gradio_client import Client, handle_file
from helpers import REPO_ROOT, colour_zip, train_config
from PIL import Image

from densenet_demo.hosting import gpu
from densenet_demo.training import build, runners
from densenet_demo.training.config import default_batch_size
from densenet_demo.training.state import STATE_FILE
from densenet_demo.ui import classify

FAKE_SPACES = Path(__file__).resolve().parent / "fake_spaces"
CALL_S = 30  # the GPU call cap of the app under the double: its 25% reserve (7.5 s) holds on a loaded 2-core CPU


# ---------------------------------------------------------------------------------------------
# Where work runs, and ZeroGPU's messages


def test_on_zerogpu_the_spaces_process_works_on_the_cpu_and_runs_train_on_a_gpu(monkeypatch):
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # ZeroGPU's patch outside a call
    assert gpu.device().type == "cpu" and gpu.deferred()
    assert build.pick_device("auto").type == "cpu" and build.pick_device("cuda").type == "cpu"
    assert default_batch_size("auto") == 64  # the runs themselves train on a GPU


def test_without_zerogpu_nothing_is_deferred(monkeypatch):
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    assert not gpu.zero_gpu() and not gpu.deferred() and gpu.can_start_processes()
    assert gpu.run(divmod, 7, 2, seconds=1) == (3, 1)  # called here, as always
    assert gpu.device().type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize(
    "title, message, expected",
    [
        (
            "ZeroGPU illegal duration",
            "The requested GPU duration (90s) is larger than the maximum allowed",
            "illegal duration",
        ),
        (
            "ZeroGPU quota exceeded",
            "You have exceeded your free GPU quota (60s requested vs. 12s left). Create a free account to get more",
            "ZeroGPU quota exceeded: your GPU time for today is used up (60 s asked for, 12 s left)",
        ),
        ("ZeroGPU queue timeout", "No GPU was available after 60s", "No GPU was available"),
        ("ZeroGPU worker error", "GPU task aborted", "stopped before it ended"),
    ],
)
def test_zerogpu_refusals_become_plain_messages_that_say_what_to_do(title, message, expected):
    explained = gpu.explain(gr.Error(message, title=title), seconds=60)
    assert expected in explained
    assert re.search(r"[Tt]ry|[Aa]sk", explained)  # what to do


def test_other_errors_are_not_taken_for_zerogpu_refusals():
    assert gpu.explain(ValueError("image.png is not an image"), seconds=10) is None


def test_the_call_cap_is_a_whole_number_of_seconds(monkeypatch):
    monkeypatch.setenv(gpu.CALL_SECONDS_ENV, "a minute")
    with pytest.raises(ValueError, match="DENSENET_DEMO_GPU_CALL_S must be a whole number"):
        gpu.call_seconds()
    monkeypatch.setenv(gpu.CALL_SECONDS_ENV, "16")
    assert gpu.images_per_call() == 4 and gpu.prediction_seconds(4) == 16 and gpu.prediction_seconds(1000) == 16


def test_many_images_are_classified_in_calls_within_the_cap(monkeypatch, tmp_path):
    monkeypatch.setenv(gpu.CALL_SECONDS_ENV, "16")  # 4 images per call
    declared, real_run = [], gpu.run

    def run(fn, *args, seconds, **kwargs):
        declared.append(seconds)
        return real_run(fn, *args, seconds=seconds, **kwargs)

    monkeypatch.setattr(gpu, "run", run)
    paths = []
    for i in range(9):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", (40, 40), (20 * i, 100, 200)).save(paths[-1])
    result = classify.classify_paths(paths, "densenet_bc100_k12", "Random init", None, 3, True, None)
    assert declared == [16, 16, 16] and list(result.table["image"]) == [f"{i}.png" for i in range(9)]
    assert len(result.gallery) == 9


# ---------------------------------------------------------------------------------------------
# A run as a chain of calls, in one process (each call's arguments and values pickled, as they cross)


@pytest.fixture
def chain(monkeypatch):
    """ZeroGPU's chain in this process: every call pauses as soon as a step has been timed; ``calls`` counts them,
    ``after`` runs when a call has ended, ``refuse_at`` refuses that call as ZeroGPU would."""
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.setattr(runners, "RESERVE_FRACTION", 0.9999)
    plan = {"calls": 0, "after": None, "refuse_at": None}

    def stream(fn, *args, seconds, **kwargs):
        plan["calls"] += 1
        if plan["calls"] == plan["refuse_at"]:
            raise gpu.GPUUnavailable(gpu.explain(gr.Error("No GPU was available after 60s"), seconds))
        for value in fn(*pickle.loads(pickle.dumps(args)), **kwargs):
            yield pickle.loads(pickle.dumps(value))
        if plan["after"]:
            plan["after"]()

    monkeypatch.setattr(gpu, "stream", stream)
    return plan


def test_a_chained_run_reads_as_one_run(chain, tiny_config, colours):
    run = runners.start(train_config(tiny_config, epochs=3), colours)
    assert isinstance(run, runners.GPUCallsRun)
    events = list(run.events())
    assert chain["calls"] > 2
    kinds = [e.kind for e in events]
    assert kinds.count("started") == 1 and "paused" not in kinds and kinds[-1] == "finished"
    steps = [(e.epoch, e.step) for e in events if e.kind == "step"]
    assert steps == sorted(steps) and len(steps) == len(set(steps)) == 3 * events[1].steps_per_epoch
    assert (run.out_dir / STATE_FILE).is_file()  # a chained run can be continued too


def test_stop_between_calls_ends_the_run_here_and_keeps_the_best_checkpoint(chain, tiny_config, colours):
    events = []
    run = runners.start(train_config(tiny_config, epochs=3), colours)

    def stop_after_an_epoch():
        if any(e.kind == "epoch_end" for e in events):
            run.stop()

    chain["after"] = stop_after_an_epoch
    for event in run.events():
        events.append(event)
    assert events[-1].kind == "cancelled" and events[-1].checkpoint_dir == str(run.out_dir)
    assert events[-1].best_val_acc is not None and not any(e.kind == "started" for e in events[2:])
    assert (run.out_dir / STATE_FILE).is_file()


def test_stop_inside_a_call_reaches_the_call(chain, tiny_config, colours, monkeypatch):
    monkeypatch.setattr(runners, "RESERVE_FRACTION", 0.25)  # one long call
    run = runners.start(train_config(tiny_config, epochs=200), colours)
    for event in run.events():
        if event.kind == "epoch_end" and event.epoch == 2:
            run.stop()  # the relay turns it into the stop file the call looks for
    assert event.kind == "cancelled" and event.epoch < 200 and chain["calls"] == 1


def test_a_refused_call_ends_the_run_with_the_message_and_it_can_be_continued(chain, tiny_config, colours):
    run = runners.start(train_config(tiny_config, epochs=8), colours)
    chain["refuse_at"] = 6
    events = list(run.events())
    assert events[-1].kind == "failed" and "No GPU was available" in events[-1].message
    assert "Continue training goes on from where it stopped" in events[-1].message
    more = list(runners.continue_training(run.out_dir, colours, 1).events())
    assert more[-1].kind == "finished"


# ---------------------------------------------------------------------------------------------
# The test double's own rules (it forks: e2e)


@pytest.fixture
def spaces(monkeypatch):
    monkeypatch.syspath_prepend(str(FAKE_SPACES))
    module = importlib.import_module("spaces")  # imported while SPACES_ZERO_GPU is unset: torch stays unpatched
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.setenv("FAKE_ZEROGPU_MAX_S", "5")
    return module


def _where(value):
    return os.getpid(), value


def _cpu_and_meta():
    return torch.ones(2), torch.empty(2, device="meta")


def _a_function():
    return lambda: None


def _sleep(seconds):
    time.sleep(seconds)


def _count(n):
    yield from range(n)


@pytest.mark.e2e
def test_the_double_runs_each_call_in_a_forked_worker_and_pickles_everything(spaces):
    call = spaces.GPU(_where, duration=2)
    (pid_a, value), (pid_b, _) = call([1, 2]), call(None)
    assert value == [1, 2] and len({pid_a, pid_b, os.getpid()}) == 3
    assert list(spaces.GPU(_count, duration=2)(3)) == [0, 1, 2]
    with pytest.raises((pickle.PicklingError, AttributeError), match="pickle"):
        spaces.GPU(_where, duration=2)(lambda: None)  # a lambda cannot cross, there
    with pytest.raises(gr.Error, match="PicklingError"):
        spaces.GPU(_a_function, duration=2)()  # nor back


@pytest.mark.e2e
def test_the_double_refuses_tensors_not_on_the_cpu(spaces):
    with pytest.raises(gr.Error, match="TypeError"):
        spaces.GPU(_cpu_and_meta, duration=2)()


@pytest.mark.e2e
def test_the_double_kills_a_call_past_its_duration_and_refuses_long_ones(spaces):
    with pytest.raises(gr.Error, match="GPU task aborted"):
        spaces.GPU(_sleep, duration=1)(30)
    with pytest.raises(gr.Error, match="larger than the maximum allowed"):
        spaces.GPU(_sleep, duration=6)(0)


@pytest.mark.e2e
def test_gpu_run_through_the_double_raises_the_calls_own_errors(spaces, monkeypatch):
    monkeypatch.setattr(gpu, "_spaces_call", spaces.GPU(gpu._call_in_worker, duration=gpu._declared))
    with pytest.raises(ZeroDivisionError):  # not ZeroGPU's "worker error" naming only the class
        gpu.run(divmod, 1, 0, seconds=2)
    with pytest.raises(gpu.GPUUnavailable, match="illegal duration"):
        gpu.run(divmod, 1, 1, seconds=9)


# ---------------------------------------------------------------------------------------------
# The real app under the double


def _zerogpu_env(log: Path, control: Path) -> dict[str, str]:
    return {
        "SPACES_ZERO_GPU": "true",
        "PYTHONPATH": os.pathsep.join([str(FAKE_SPACES), os.environ.get("PYTHONPATH", "")]),
        "FAKE_ZEROGPU_MAX_S": str(CALL_S),
        "DENSENET_DEMO_GPU_CALL_S": str(CALL_S),
        "FAKE_ZEROGPU_LOG": str(log),
        "FAKE_ZEROGPU_CONTROL": str(control),
        "OMP_NUM_THREADS": "1",
    }


def _calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture(scope="module")
def zero(tmp_path_factory, start_app):
    root = tmp_path_factory.mktemp("zerogpu_calls")
    log, control = root / "calls.jsonl", root / "control.json"
    server = start_app("zerogpu", env=_zerogpu_env(log, control))
    return server, log, control, Client(server.url, verbose=False)


@pytest.fixture(scope="module")
def squares(tmp_path_factory) -> Path:
    """A small zip of class folders: a run of a few seconds an epoch on a CPU."""
    return colour_zip(tmp_path_factory.mktemp("squares"), per_class=16)


def _positions(outputs) -> list[tuple[int, int]]:
    """(epoch, step) of each progress update, from the status line under the bar."""
    found = []
    for out in outputs:
        match = re.search(r"epoch (\d+)(?:/\d+)?, step (\d+)/", str(out[2]))
        if match:
            found.append((int(match.group(1)), int(match.group(2))))
    return found


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_predict_with_only_an_image_answers_through_a_gpu_call(zero, tmp_path):
    server, log, control, client = zero
    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(photo)
    label, gallery, table, info = client.predict([handle_file(str(photo))], api_name="/predict")
    assert len(label["confidences"]) == 5 and len(gallery) == 1 and "densenet121" in info
    calls = [c for c in _calls(log) if c["fn"].endswith("_call_in_worker")]
    assert calls and calls[-1]["outcome"] == "ok" and calls[-1]["declared"] <= CALL_S


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_a_run_longer_than_one_call_goes_on_seamlessly_and_continues_from_the_api_and_the_cli(zero, squares):
    server, log, control, client = zero
    client.predict("Zip file", handle_file(str(squares)), api_name="/load_dataset")
    before = len(_calls(log))
    job = client.submit(
        "densenet_fashion", "Random init", "scratch", 100, 3e-3, 16, time_budget="40s", api_name="/train"
    )
    job.result(timeout=400)
    text = job.outputs()[-1][3]  # (loss, acc, progress, log, confusion, per-class, download, model list, ...)
    assert "Finished: best val acc" in text, text
    calls = _calls(log)[before:]
    assert len([c for c in calls if c["fn"].endswith("_stream_in_worker")]) >= 2, calls  # several GPU calls
    assert all(c["outcome"] == "ok" and c["declared"] <= CALL_S for c in calls), calls  # none refused or killed
    positions = _positions(job.outputs())
    assert positions == sorted(positions) and len(positions) > 3  # progress never went back across the calls
    assert text.count("Started run") == 1 and job.outputs()[-1][6] is not None  # the best checkpoint, zipped
    # The budget may end the last epoch part-way ("Epoch 7 (40% of it: the time budget ran out):"); it counts.
    epochs = [int(e) for e in re.findall(r"Epoch (\d+)(?: \(\d+% of it[^)]*\))?:", text)]
    assert epochs == list(range(1, len(epochs) + 1))

    more = client.predict(2, api_name="/continue_training")[3]
    assert f"epochs {epochs[-1] + 1} to {epochs[-1] + 2}" in more and "Finished" in more
    assert [int(e) for e in re.findall(r"Epoch (\d+)/\d+:", more)] == [epochs[-1] + 1, epochs[-1] + 2]

    run = re.search(r"Started run (\S+):", text).group(1)
    env = {**os.environ, **_zerogpu_env(log, control), "DENSENET_DEMO_WEIGHTS": str(server.weights_dir)}
    result = subprocess.run(
        [sys.executable, "-m", "densenet_demo", "train", str(squares), "--resume", run, "--epochs", "1", "--json"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert events[-1]["event"] == "finished"
    assert [e["epoch"] for e in events if e["event"] == "epoch_end"] == [epochs[-1] + 3]


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_stop_during_a_chained_run_keeps_the_best_checkpoint(zero, squares):
    server, log, control, client = zero
    client.predict("Zip file", handle_file(str(squares)), api_name="/load_dataset")
    job = client.submit("densenet_fashion", "Random init", "scratch", 100, 3e-3, 16, api_name="/train")
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline and "Epoch 2/100:" not in str(job.outputs()[-1][3] if job.outputs() else ""):
        time.sleep(0.5)
    client.predict(api_name="/stop")
    job.result(timeout=120)
    final = job.outputs()[-1][3]
    assert "Stopped: the best checkpoint so far is kept." in final and "Epoch 100/100" not in final


@pytest.mark.e2e
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "refusal, message",
    [
        ({"quota_left_s": 3}, "ZeroGPU quota exceeded: your GPU time for today is used up (16 s asked for, 3 s left)"),
        ({"busy": True}, "No GPU was available: every ZeroGPU GPU is busy right now. Try again in a minute."),
        ({"max_s": 5}, "ZeroGPU refused a GPU call of 16 s (illegal duration"),
    ],
)
def test_zerogpu_refusals_reach_the_client_as_plain_messages(zero, tmp_path, refusal, message):
    server, log, control, client = zero
    photo = tmp_path / "photo.png"
    Image.new("RGB", (32, 32), (20, 30, 200)).save(photo)
    control.write_text(json.dumps(refusal))
    try:
        with pytest.raises(Exception, match=re.escape(message)):
            client.predict([handle_file(str(photo))], "densenet_bc100_k12", "Random init", api_name="/predict")
    finally:
        control.unlink()
    label, *_ = client.predict([handle_file(str(photo))], "densenet_bc100_k12", "Random init", api_name="/predict")
    assert len(label["confidences"]) == 5  # the server keeps serving


def test_a_calls_values_are_read_as_they_come_whatever_the_page_does_with_them():
    # The call's worker must not wait on a page that is still drawing: every value is read before the consumer
    # has taken the second, and an error in the call reaches the consumer after the values before it.
    produced = []

    def call():
        for i in range(50):
            produced.append(i)
            yield i
        raise RuntimeError("the call failed")

    values = runners._drained(call())
    assert next(values) == 0
    deadline = time.monotonic() + 10
    while len(produced) < 50 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(produced) == 50
    assert list(itertools.islice(values, 49)) == list(range(1, 50))
    with pytest.raises(RuntimeError, match="the call failed"):
        next(values)
