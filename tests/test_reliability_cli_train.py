"""python -m densenet_demo train with hostile zips and absurd settings: one line on stderr, exit 2, nothing written.

The zips are helpers.hostile_zips, the corpus of test_reliability_inputs.py: the cases the app's /load_dataset gets.
"""

from __future__ import annotations

import secrets
import tempfile
from pathlib import Path

import pytest
from helpers import QUICK_MODEL, hostile_zips

from densenet_demo.cli.main import main


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    token = secrets.token_hex(4)
    return {"token": token, "zips": hostile_zips(tmp_path_factory.mktemp("zips"), token)}


@pytest.mark.parametrize(
    "case, message",
    [
        ("traversal", "points outside the upload; rejected"),
        ("absolute", "points outside the upload; rejected"),
        ("zip bomb", "rejected as a zip bomb"),
        ("one class", "at least 2 classes"),
        ("empty", "at least 2 classes"),
        ("no images", "at least 2 classes"),
    ],
)
def test_cli_train_refuses_a_hostile_zip_in_one_line(corpus, capsys, tmp_path, case, message):
    argv = ["train", str(corpus["zips"][case]), "--model", QUICK_MODEL, "--mode", "linear", "--epochs", "1"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and message in err
    token = corpus["token"]
    tmp = Path(tempfile.gettempdir())
    assert not (tmp / f"escape_{token}.png").exists() and not (tmp / f"absolute_{token}.png").exists()
    assert not (tmp_path / "run" / "model.safetensors").exists()


@pytest.mark.parametrize(
    "option, value",
    [("--image-size", "100000"), ("--epochs", "1000000"), ("--batch-size", "0"), ("--lr", "-0.1")],
)
def test_cli_train_refuses_absurd_settings_in_one_line(capsys, tmp_path, option, value):
    argv = ["train", "example", "--model", QUICK_MODEL, "--mode", "linear", f"{option}={value}"]
    argv += ["--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert option.removeprefix("--").replace("-", "_") in err
