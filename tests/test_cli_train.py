"""`python -m densenet_demo train`: progress, JSON events, the checkpoint path last, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import colour_images

from densenet_demo.cli.main import main
from densenet_demo.weights import checkpoints


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return colour_images(tmp_path_factory.mktemp("colours"), per_class=6)


def test_json_prints_one_event_per_line_and_the_checkpoint_path_last(folder, tiny_checkpoint, capsys, tmp_path):
    argv = ["train", str(folder), "--model", str(tiny_checkpoint), "--mode", "finetune", "--epochs", "2"]
    assert main([*argv, "--image-size", "16", "--batch-size", "8", "--out", str(tmp_path / "run"), "--json"]) == 0
    *lines, last = capsys.readouterr().out.strip().splitlines()
    events = [json.loads(line) for line in lines]
    kinds = [e["event"] for e in events]
    assert kinds[:3] == ["dataset", "preparing", "started"] and kinds[-1] == "finished"
    assert kinds.count("epoch_end") == 2 and kinds.count("step") == 2 * 2
    assert events[0]["counts"] == {"blue": 6, "green": 6, "red": 6}
    assert last == str(tmp_path / "run") == events[-1]["checkpoint_dir"]
    model, info = checkpoints.load_checkpoint(last)
    assert info.class_names == ("blue", "green", "red") and model.cfg.num_classes == 3


def test_text_mode_shows_progress_on_stderr_and_prints_only_the_path_on_stdout(folder, tiny_checkpoint, capsys):
    argv = ["train", str(folder), "--model", str(tiny_checkpoint), "--mode", "linear", "--epochs", "2"]
    assert main([*argv, "--image-size", "16"]) == 0
    out, err = capsys.readouterr()
    (path,) = out.strip().splitlines()
    assert (
        Path(path).parent == checkpoints.runs_dir().resolve()
        and (Path(path) / checkpoints.CHECKPOINT_WEIGHTS).is_file()
    )
    assert "18 images in 3 classes" in err and "epoch 2" in err and "val_acc=" in err and "best val acc" in err


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda tmp: tmp / "missing", "no such folder or zip file"),
        (lambda tmp: colour_images(tmp / "one", 3) / "red", "at least 2 classes"),
        (lambda tmp: (tmp / "notes.txt", (tmp / "notes.txt").write_text("x"))[0], "not a folder or a .zip file"),
    ],
    ids=["missing", "one class", "not a zip"],
)
def test_bad_data_gives_one_clear_line_and_exit_code_2(tmp_path, capsys, make, message):
    argv = ["train", str(make(tmp_path)), "--model", "densenet_fashion", "--out", str(tmp_path / "run"), "--json"]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("error: ") and message in err
    assert not (tmp_path / "run").exists()


def test_bad_settings_give_exit_code_2(folder, capsys):
    argv = ["train", str(folder), "--model", "densenet40_k12", "--weights", "imagenet", "--mode", "linear"]
    assert main(argv) == 2
    assert "no ImageNet weights for densenet40_k12" in capsys.readouterr().err


def _train_the_example(argv: list[str], capsys, out: Path) -> None:
    """``train example`` with ``argv``: it keeps the example's quick optimiser and schedule, takes the flags given."""
    assert main(["train", "example", *argv, "--epochs", "1", "--json", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    started = next(e for line in lines if (e := json.loads(line))["event"] == "started")
    assert started["config"]["optimizer"] == "adamw" and started["config"]["schedule"] == "cosine"
    assert started["n_train"] + started["n_val"] == 800 and started["epochs"] == 1
    assert lines[-1] == str(out)


def test_the_example_trains_a_given_model_with_its_quick_settings(tiny_checkpoint, capsys, tmp_path):
    # A tiny model at 16 px: an epoch of the 800 example images in a second or two; the settings are what is checked.
    argv = ["--model", str(tiny_checkpoint), "--mode", "finetune", "--image-size", "16"]
    _train_the_example(argv, capsys, tmp_path / "run")


@pytest.mark.e2e
def test_the_example_trains_with_its_quick_settings(capsys, tmp_path):
    # Its own model from scratch (an epoch of densenet_fashion); at 32 px, its smallest size, a quarter of 64 px's cost.
    argv = ["--model", "densenet_fashion", "--mode", "scratch", "--image-size", "32"]
    _train_the_example(argv, capsys, tmp_path / "run")
