"""On scikit-learn's digit scans with 5% of the labels swapped on purpose, the quick run and then ``review`` put the
swapped files first: precision among the first k suspects (k = the number swapped) of at least 0.8.

The quick run is the one suggested for small grayscale scans: densenet_fashion from scratch at 32 px, 5 epochs of
the quick recipe (minutes on two cores), hence the e2e mark. bench/review_precision.py measures the same over seeds.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _quick_datasets():
    """bench/quick_datasets.py, which writes the digits as class folders and swaps labels."""
    spec = importlib.util.spec_from_file_location("quick_datasets", ROOT / "bench" / "quick_datasets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _command(*args: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-m", "densenet_demo", *args], cwd=ROOT, capture_output=True, text=True, timeout=2400
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()


@pytest.mark.e2e
@pytest.mark.timeout(2700)
def test_swapped_digit_labels_come_first_after_the_quick_run(tmp_path):
    quick = _quick_datasets()
    digits = quick.write_digits(tmp_path / "digits", 32)
    swapped = quick.swap_labels(digits, 0.05, seed=0)
    assert len(swapped) == 90
    run = tmp_path / "run"
    _command("train", str(digits), "--model", "densenet_fashion", "--mode", "scratch", "--image-size", "32",
             "--out", str(run), "--json")  # fmt: skip
    (line,) = _command("review", str(run), "--json")
    suspects = [s["file"] for s in json.loads(line)["suspected_mislabels"]]
    precision = sum(f in swapped for f in suspects[: len(swapped)]) / len(swapped)
    assert precision >= 0.8, (precision, suspects[:20])
    first = json.loads(line)["suspected_mislabels"][0]
    assert first["suggested"] != first["label"] and (digits / first["file"]).is_file()
