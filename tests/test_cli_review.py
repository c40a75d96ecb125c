"""`python -m densenet_demo review RUN [DATA]`: JSON with exactly the confusions and the suspects, text for people,
one clear line and exit code 2 for what cannot be reviewed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from densenet_demo.cli.main import main
from densenet_demo.config import DenseNetConfig
from densenet_demo.data import datasets as data
from densenet_demo.training.config import TrainConfig
from densenet_demo.training.events import Finished
from densenet_demo.training.loop import Trainer
from densenet_demo.weights import checkpoints

SHADES = {"dark": 50, "light": 200}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny run on grey squares of two shades; (data folder, run folder)."""
    root = tmp_path_factory.mktemp("cli-review")
    rng = np.random.default_rng(0)
    for name, shade in SHADES.items():
        (root / "shades" / name).mkdir(parents=True)
        for i in range(8):
            pixels = np.clip(shade + rng.normal(0, 25, (20, 20, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "shades" / name / f"{i}.png")
    files, report = data.load_image_folder(root / "shades")
    tiny = DenseNetConfig(growth_rate=4, block_config=(2,), num_init_features=8, stem="cifar", num_classes=2)
    config = TrainConfig(model=tiny, weights="random", mode="scratch", epochs=2, batch_size=4, image_size=16)
    assert isinstance(list(Trainer(config, files, report=report, out_dir=root / "run").run())[-1], Finished)
    return root / "shades", root / "run"


def test_json_prints_exactly_confusions_and_suspected_mislabels(run, capsys):
    folder, run_dir = run
    assert main(["review", str(run_dir), "--json"]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert set(result) == {"confusions", "suspected_mislabels"} and err == ""
    for suspect in result["suspected_mislabels"]:
        assert (folder / suspect["file"]).is_file() and suspect["label"] in SHADES
    assert str(folder) not in out


def test_a_run_id_and_data_given_by_hand_review_the_same_images(run, capsys, monkeypatch, tmp_path):
    folder, run_dir = run
    monkeypatch.setenv("DENSENET_DEMO_WEIGHTS", str(tmp_path))
    shutil.copytree(run_dir, checkpoints.runs_dir() / "shades-run")
    assert main(["review", "run:shades-run", str(folder), "--json"]) == 0
    by_hand = json.loads(capsys.readouterr().out)
    assert main(["review", str(run_dir), "--json"]) == 0
    assert by_hand == json.loads(capsys.readouterr().out)


def test_text_names_the_accuracy_the_confusions_and_the_suspects(run, capsys):
    _, run_dir = run
    assert main(["review", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "validation images right" in out and "suspected mislabels of 16 images" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["review", "no-such-run"], "no run 'no-such-run'"),
        (["review", "RUN", "MISSING"], "no such folder or zip file"),
        (["review", "RUN", "--device", "tpu9"], "no device 'tpu9'"),
    ],
    ids=["unknown run", "missing data", "unknown device"],
)
def test_what_cannot_be_reviewed_gives_one_line_and_exit_code_2(run, capsys, tmp_path, argv, message):
    argv = [str(run[1]) if a == "RUN" else str(tmp_path / "missing") if a == "MISSING" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
