"""Faults during training, through the running app: Stop mid-epoch, an image found corrupt only while training,
an exception inside a step, the disk full on save, the process killed while a checkpoint is written, and two
users training at once.

The app runs as tests/fault_injection_app.py: app.py itself, with faults switched on by files a test creates.
"""

from __future__ import annotations

import io
import os
import signal
import time
import zipfile
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from helpers import AppServer
from PIL import Image

from densenet_demo.data import examples
from densenet_demo.hosting import runs
from densenet_demo.weights import checkpoints, run_data

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

RUN_FILES = sorted(
    [checkpoints.CHECKPOINT_META, checkpoints.CHECKPOINT_WEIGHTS, runs.OWNER_FILE, run_data.DATA_FILE]
)  # a run trained on the page (data.json: the files it trained on, for its review)

MODEL = "densenet_bc100_k12"
CORRUPT = "circle_truncated.png"


def _zip_folder(folder: Path, path: Path, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for file in sorted(folder.rglob("*.png")):
            zf.write(file, file.relative_to(folder).as_posix())
        for name, payload in (extra or {}).items():
            zf.writestr(name, payload)
    return path


def _truncated_png() -> bytes:
    """A PNG whose header is fine (so the dataset check accepts it) and whose pixel data stops half-way."""
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 40).convert("RGB").save(buffer, "PNG")
    whole = buffer.getvalue()
    return whole[: len(whole) // 2]


@pytest.fixture(scope="module")
def zips(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("datasets")
    examples.make_example_dataset(root / "shapes", n_per_class=15, image_size=32, seed=3)
    return {
        "shapes": _zip_folder(root / "shapes", root / "shapes.zip"),
        "corrupt": _zip_folder(root / "shapes", root / "corrupt.zip", {f"circle/{CORRUPT}": _truncated_png()}),
    }


def _start(root: Path, weights_dir: Path, faults: Path | None = None) -> AppServer:
    if faults is None:
        return AppServer.started(root, weights_dir, own_tmp=True)
    env = {"DENSENET_DEMO_FAULTS": str(faults)}
    return AppServer.started(root, weights_dir, own_tmp=True, script="tests/fault_injection_app.py", env=env)


@pytest.fixture(scope="module")
def faults(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def server(tmp_path_factory, faults):
    root = tmp_path_factory.mktemp("fault_app")
    server = _start(root, root / "weights", faults)
    yield server
    server.stop()


class Faults:
    """Switches for the faults of tests/fault_injection_app.py; every one is off again after the test."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on(self, name: str) -> None:
        (self.folder / name).write_text("on")

    def off(self, name: str) -> None:
        (self.folder / name).unlink(missing_ok=True)


@pytest.fixture
def fault(faults):
    switches = Faults(faults)
    yield switches
    for path in faults.iterdir():
        path.unlink()


def _client(server, zip_path: Path) -> Client:
    client = Client(server.url, verbose=False)
    report = client.predict("Zip file", handle_file(str(zip_path)), None, "", api_name="/load_dataset")
    assert "4 classes" in report
    return client


def _submit(client: Client, *, mode: str = "linear", epochs: int = 1, batch_size: int = 32):
    return client.submit(
        MODEL, "Random init", mode, epochs, None, batch_size, None, False, "Off", "default", "default",
        api_name="/train",
    )  # fmt: skip


def _log(job) -> str:
    job.result(timeout=240)
    return job.outputs()[-1][3]


def _run_dir(server: AppServer, log: str) -> Path:
    """The run's folder: the page names the run (never its server path); runs live in the server's weights/runs."""
    return server.weights_dir / "runs" / log.rsplit("Saved as run ", 1)[1].split()[0]


def _classifies_with(client: Client, run_dir: Path, image: Path) -> None:
    label, *_ = client.predict(
        [handle_file(str(image))], f"run:{run_dir.name}", "Random init", None, 2, False, api_name="/predict"
    )
    assert len(label["confidences"]) == 2


def _visible_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_stop_mid_epoch_keeps_the_weights_so_far_and_a_new_run_starts(server, zips, photo):
    client = _client(server, zips["shapes"])
    job = _submit(client, mode="scratch", epochs=3, batch_size=1)  # 48 steps an epoch: Stop lands mid-epoch
    for update in job:
        if "epoch 1/3, step" in update[2]:  # the progress bar shows a step: training is under way
            break
    assert (
        client.predict(api_name="/stop")
        == "Stopping now (mid-step, at the next layer); the best checkpoint so far is kept…"
    )
    log = _log(job)
    # Nothing was validated yet: the weights are kept, and the message does not call them the best.
    assert "Stopped before the first validation: the weights trained so far are kept, not validated." in log
    assert "Epoch 1/3" not in log and "best checkpoint" not in log.split("Stopped")[1]
    run = _run_dir(server, log)
    assert checkpoints.read_checkpoint_info(run).metrics["cancelled_mid_epoch"] is True
    _classifies_with(client, run, photo)
    assert "Finished" in _log(_submit(client))


@pytest.mark.parametrize("mode", ["linear", "scratch"])
def test_an_image_found_corrupt_while_training_is_skipped_reported_and_training_goes_on(server, zips, mode):
    client = Client(server.url, verbose=False)
    report = client.predict("Zip file", handle_file(str(zips["corrupt"])), None, "", api_name="/load_dataset")
    assert CORRUPT not in report  # its header is fine: only decoding finds the damage
    log = _log(_submit(client, mode=mode))
    skipped = [line for line in log.splitlines() if "skipped" in line]
    assert len(skipped) == 1 and CORRUPT in skipped[0] and "truncated" in skipped[0]
    assert "Finished: best val acc" in log
    info = checkpoints.read_checkpoint_info(_run_dir(server, log))
    assert info.metrics["n_train"] + info.metrics["n_val"] == 61  # 60 good images and the corrupt one


def test_an_exception_inside_a_step_fails_the_run_and_the_app_goes_on(server, zips, photo, fault):
    client = _client(server, zips["shapes"])
    fault.on("step_error")
    log = _log(_submit(client))
    assert "Failed: training failed: RuntimeError: injected fault in a training step" in log
    assert "Traceback" not in log
    # The page shows the plain message; the server's log has the traceback.
    assert "Traceback" in server.log() and "RuntimeError: injected fault in a training step" in server.log()
    fault.off("step_error")
    log = _log(_submit(client))  # the same session, the same dataset
    assert "Finished: best val acc" in log
    _classifies_with(client, _run_dir(server, log), photo)


def test_a_failed_run_logs_its_traceback_on_the_server_and_the_page_gets_the_plain_message(server, zips, fault):
    client = _client(server, zips["shapes"])
    fault.on("step_error")
    log = _log(_submit(client))
    assert "Failed: training failed: RuntimeError: injected fault in a training step" in log
    assert "Traceback" not in log
    server_log = server.log()
    assert "Traceback (most recent call last)" in server_log
    failure = server_log[server_log.rindex("Traceback (most recent call last)") :]
    assert "RuntimeError: injected fault in a training step" in failure


def test_a_full_disk_on_save_fails_clearly_and_keeps_the_previous_checkpoint(server, zips, photo, fault):
    client = _client(server, zips["shapes"])
    fault.on("save_enospc")  # epoch 1 saves; the next better epoch finds the disk full
    log = _log(_submit(client, epochs=5))
    assert "Epoch 1/5" in log and "best so far, saved" in log
    failure = next(line for line in log.splitlines() if line.startswith("Failed:"))
    assert "could not save the checkpoint" in failure and "No space left on device" in failure
    assert "previous checkpoint, if any, is unchanged" in failure and "best checkpoint so far is kept" in failure
    run = _run_dir(server, log)
    assert sorted(p.name for p in run.iterdir()) == RUN_FILES  # no temp file left
    assert checkpoints.read_checkpoint_info(run).metrics["epoch"] == 1
    checkpoints.load_checkpoint(run)
    fault.off("save_enospc")
    _classifies_with(client, run, photo)


def test_two_users_training_at_once_the_second_waits_and_both_finish(server, zips):
    first, second = _client(server, zips["shapes"]), _client(server, zips["shapes"])
    jobs = [_submit(first, mode="scratch", batch_size=8)]
    while "Started" not in (jobs[0].outputs()[-1][3] if jobs[0].outputs() else ""):
        time.sleep(0.05)
    jobs.append(_submit(second, mode="linear", epochs=1))
    waiting = []  # what the second page shows while the first is still training: its place in the trainings queue
    while not jobs[0].done():
        waiting += [str(jobs[1].outputs()[-1][2])] if jobs[1].outputs() else []
        time.sleep(0.05)
    assert any("Waiting for the trainer: 1st in line (1 training running, 1 waiting)" in text for text in waiting)
    logs = [_log(job) for job in jobs]
    assert all("Finished: best val acc" in log for log in logs)
    runs = {_run_dir(server, log) for log in logs}
    assert len(runs) == 2 and all((run / checkpoints.CHECKPOINT_WEIGHTS).is_file() for run in runs)


def test_killed_while_writing_a_checkpoint_the_previous_best_stays_loadable(tmp_path, zips, photo):
    faults, weights_dir = tmp_path / "faults", tmp_path / "weights"
    faults.mkdir()
    (faults / "save_hang").write_text("on")  # epoch 1 saves; the next better epoch's write stops half-way
    server = _start(tmp_path / "killed", weights_dir, faults)
    try:
        client = _client(server, zips["shapes"])
        _submit(client, epochs=5)
        deadline = time.monotonic() + 120
        while not (faults / "save_hanging").exists():
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.05)
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=30)
    finally:
        server.stop()
    (run,) = (weights_dir / "runs").iterdir()
    half_written = Path((faults / "save_hanging").read_text())
    assert half_written.parent == run and half_written.name.startswith(".")  # hidden, never the checkpoint's name
    assert _visible_files(run) == RUN_FILES
    assert checkpoints.read_checkpoint_info(run).metrics["epoch"] == 1
    checkpoints.load_checkpoint(run)
    hour_ago = time.time() - 3700
    os.utime(half_written, (hour_ago, hour_ago))  # as a restart an hour later finds it
    restarted = _start(tmp_path / "restarted", weights_dir)
    try:
        client = Client(restarted.url, verbose=False)
        _classifies_with(client, run, photo)
        assert not half_written.exists()  # the launch removed what the killed write left
        assert sorted(p.name for p in run.iterdir()) == RUN_FILES
    finally:
        restarted.stop()
