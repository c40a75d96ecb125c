"""The page's "use all N GPUs" run, end to end: the real app behind the test-only switch
``DENSENET_DEMO_FAKE_GPUS=2``, so a run is a torchrun child of 2 gloo processes on the CPU, driven through
gradio_client like the page drives it. Tiny: 3 classes of 8 grey 24 px squares, ``densenet_fashion`` at 32 px.
"""

from __future__ import annotations

import time
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from helpers import AppServer
from PIL import Image

from densenet_demo.training.distributed import ENV_FAKE_GPUS
from densenet_demo.weights import checkpoints

pytestmark = pytest.mark.e2e

MARK = "DENSENET_DEMO_TEST_RUN"  # set on the server only: its children inherit it, so /proc finds them all


@pytest.fixture(scope="module")
def server(start_app):
    mark = uuid.uuid4().hex
    server = start_app("gpus", own_tmp=True, env={ENV_FAKE_GPUS: "2", MARK: mark})
    server.mark = mark
    return server


@pytest.fixture(scope="module")
def greys(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("greys") / "greys.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name, grey in (("dark", 40), ("mid", 128), ("light", 215)):
            for i in range(8):
                pixels = np.clip(grey + rng.normal(0, 12, (24, 24)), 0, 255).astype(np.uint8)
                image = path.parent / f"{name}{i}.png"
                Image.fromarray(pixels).save(image)
                archive.write(image, f"greys/{name}/{i}.png")
    return path


def _client(server: AppServer, greys: Path) -> Client:
    client = Client(server.url, verbose=False)
    report = client.predict("Zip file", handle_file(str(greys)), None, "", api_name="/load_dataset")
    assert "24 images in 3 classes" in report
    return client


def _submit(client: Client, epochs: int):
    # The basics, then recipe, time budget, augmentation, label smoothing, early stopping, val share, device, and
    # the "Use all 2 GPUs" box.
    basics = ("densenet_fashion", "Random init", "scratch", epochs, 3e-3, 4, 32, False, "Off", "adamw", "default")
    return client.submit(*basics, "quick", "", "none", 0.0, 0, 0.25, "auto", True, api_name="/train")


def _processes_of(server: AppServer) -> list[str]:
    """Command lines of the processes that inherited the server's mark, the server left out."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int(entry.name) != server.process.pid:
                if server.mark.encode() in (entry / "environ").read_bytes():
                    found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def _no_processes_left(server: AppServer, timeout: float = 20.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := _processes_of(server)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def test_a_run_on_all_gpus_streams_into_the_page_and_becomes_a_model(server, greys):
    client = _client(server, greys)
    job = _submit(client, epochs=2)
    statuses = [update[2] for update in job]  # the progress bar and its status line, as the page shows them
    final = job.outputs()[-1]
    log = final[3]
    assert any("Starting 2 training processes (torchrun)" in s for s in statuses)
    assert any("· 2 processes ·" in s for s in statuses)  # the steps' status lines
    assert "scratch mode on cpu in 2 processes (global batch 8)" in log  # 4 images per process and step
    assert log.index("Started run") < log.index("Epoch 1/2") < log.index("Epoch 2/2") < log.index("Finished")
    run_id = log.rsplit("Saved as run ", 1)[1].split()[0]
    run = server.weights_dir / "runs" / run_id
    assert (run / checkpoints.CHECKPOINT_WEIGHTS).is_file() and (run / "owner.json").is_file()  # the session's
    assert f"run:{run_id}" in str(final[7])  # listed in Predict, and chosen there
    assert Path(final[6]).name == f"{run_id}.zip"  # the download beside the log
    label, *_ = client.predict(
        [handle_file(str(greys.parent / "light0.png"))], f"run:{run_id}", "Random init", None, 3, False,
        api_name="/predict",
    )  # fmt: skip
    assert {c["label"] for c in label["confidences"]} == {"dark", "mid", "light"}
    assert _no_processes_left(server) == []
    sessions = server.log_path.parent / "tmp"  # the server's temp dir (own_tmp): the images' links are gone
    assert list(sessions.glob("densenet_demo_session_*/torchrun_*")) == []


def test_stop_ends_both_processes_and_keeps_the_best_checkpoint(server, greys):
    client = _client(server, greys)
    job = _submit(client, epochs=100)  # the page's most: about a minute here, Stop comes after the first
    for update in job:
        if "Epoch 1/100" in update[3]:  # an epoch ended: its checkpoint is saved
            break
    running = _processes_of(server)
    ranks = [c for c in running if "densenet_demo.training.torchrun" in c and "torch.distributed.run" not in c]
    assert len(ranks) == 2 and any("torch.distributed.run" in c for c in running)  # torchrun and its 2 ranks
    assert client.predict(api_name="/stop").startswith("Stopping every training process at the next step")
    job.result(timeout=240)
    log = job.outputs()[-1][3]
    assert "Stopped: the best checkpoint so far is kept." in log and "Finished" not in log
    run_id = log.rsplit("Saved as run ", 1)[1].split()[0]
    _, info = checkpoints.load_checkpoint(server.weights_dir / "runs" / run_id)
    assert info.metrics["epoch"] >= 1
    assert _no_processes_left(server) == []  # torchrun and both ranks are gone


def test_stop_while_the_processes_start_ends_the_run_with_nothing_saved(server, greys):
    client = _client(server, greys)
    runs_before = set((server.weights_dir / "runs").iterdir())
    job = _submit(client, epochs=2)
    for update in job:
        if "Starting 2 training processes" in update[2]:  # the page's first update, before torchrun is up
            break
    assert client.predict(api_name="/stop").startswith("Stopping every training process")
    job.result(timeout=240)
    assert job.outputs()[-1][3].endswith("Stopped: no checkpoint was written.")
    assert set((server.weights_dir / "runs").iterdir()) == runs_before
    assert _no_processes_left(server) == []
