"""A short soak (bench/soak.py for a minute): simulated users predict, train, stop, export, upload junk and leave;
every prediction is answered, nothing fails on the server, and once the sessions expire their runs and folders
are gone, Gradio's uploads with them, and no file stays open."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parent.parent


def test_a_short_soak_answers_every_prediction_and_leaves_nothing_behind(tmp_path):
    command = ["bench/soak.py", "--seconds", "60", "--users", "3", "--session-ttl", "20", "--warmup", "20"]
    done = subprocess.run(
        [sys.executable, *command],
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=850,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    soak = json.loads(done.stdout)
    predictions, trainings, disk = soak["predictions"], soak["trainings"], soak["disk_mb"]
    assert predictions["unanswered"] == 0, predictions["unanswered_examples"]
    assert predictions["answered"] >= 10 and predictions["p95_ms"] >= predictions["p50_ms"] > 0
    assert soak["refusals"].get("bad image", 0) >= 1  # the hostile uploads were refused for what they are
    assert trainings.get("started", 0) >= 1
    assert trainings.get("finished", 0) + trainings.get("stopped", 0) >= 1, trainings
    assert soak["server_log_errors"] == 0, Path(soak["work_dir"], "server.log").read_text()[-3000:]
    assert soak["session_folders_after_expiry"] == 0
    assert disk["runs_mb"]["after_expiry"] == 0 and disk["sessions_mb"]["after_expiry"] == 0, disk
    assert disk["uploads_mb"]["peak"] > disk["uploads_mb"]["start"]  # the users uploaded: and then it went
    assert disk["uploads_mb"]["after_expiry"] <= disk["uploads_mb"]["start"] + 1, disk
    assert soak["open_files"]["after_expiry"] <= soak["open_files"]["start"] + 2, soak["open_files"]
