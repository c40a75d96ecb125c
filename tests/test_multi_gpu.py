"""The page's run on all GPUs, without starting one: settings -> train flags, the data as a folder, the checkbox."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import gradio as gr
import pytest
from PIL import Image

from densenet_demo.cli import main as cli
from densenet_demo.cli.common import training_settings
from densenet_demo.config import PRESETS
from densenet_demo.data import datasets as data
from densenet_demo.training import distributed as D
from densenet_demo.training import loop as train
from densenet_demo.training import torchrun as multi_gpu
from densenet_demo.training.settings import config_from_settings, train_args
from densenet_demo.ui.multigpu import build_gpu_option
from densenet_demo.ui.training_settings import config_from_page
from densenet_demo.ui.training_view import event_line

# The page's fields as the browser sends them (numbers as floats, "default", "Auto"), in the /train order:
# the basics, then ExtraSettings (recipe, time budget, augmentation, label smoothing, early stopping, val share,
# device).
PAGE_FIELDS = [
    ("densenet_fashion", "Random init", "scratch", 3.0, 3e-3, 32.0, 32.0, False, "Off", "adamw", "default"),
    ("densenet121", "ImageNet", "finetune", 5.0, None, 16.0, None, True, "Auto", "default", "step")
    + ("paper", "", "flip", 0.05, 3.0, 0.3, "cpu"),
    ("densenet_bc100_k12", "ImageNet", "linear", 30.0, 0.01, 64.0, 0.0, False, "Auto", "sgd", "onecycle")
    + ("quick", "90s", "light", None, 0.0, 0.2, "auto"),
]


def _parsed(args: list[str]) -> train.TrainConfig:
    """What ``python -m densenet_demo train DATA *args`` builds: the command line's own parser and settings."""
    namespace = cli.build_parser().parse_args(["train", "DATA", *args])
    return config_from_settings(namespace.model, **training_settings(namespace))


@pytest.mark.parametrize("fields", PAGE_FIELDS, ids=["scratch", "finetune-paper", "linear-budget"])
def test_the_train_flags_of_the_pages_settings_give_the_command_line_the_same_config(fields):
    page = config_from_page(*fields)
    args = train_args(page)
    assert _parsed(args) == page
    assert args[:2] == ["--model", fields[0]]


def test_train_flags_leave_the_recipes_values_to_the_recipe_and_keep_explicit_zeros():
    config = config_from_settings("densenet_fashion", label_smoothing=0.0, seed=0)
    args = train_args(config)
    assert "--lr" not in args and "--epochs" not in args and "--batch-size" not in args  # None: the recipe's
    assert args[args.index("--label-smoothing") + 1] == "0.0" and args[args.index("--seed") + 1] == "0"
    assert _parsed(args) == config


def test_what_no_flag_can_say_is_refused_with_a_message():
    with pytest.raises(ValueError, match="no flag for warmup"):
        train_args(train.TrainConfig(model="densenet_fashion", warmup=0.2))
    with pytest.raises(ValueError, match="preset name or a checkpoint folder"):
        train_args(train.TrainConfig(model=PRESETS["densenet_fashion"].config))


def _by_hand(root: Path) -> dict[str, list[str]]:
    """Two classes built by hand from two upload folders, so that file names repeat within a class."""
    classes: dict[str, list[str]] = {"Light": [], "dark": []}
    for upload in ("a", "b"):
        for name, grey in (("Light", 220), ("dark", 30)):
            for i in range(4):
                path = root / upload / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("L", (8, 8), grey + i).save(path)
                classes[name].append(str(path))
    return classes


def test_the_linked_folder_holds_the_split_one_process_makes(tmp_path):
    files, _ = data.from_class_lists(_by_hand(tmp_path / "uploads"))
    folder = multi_gpu.link_dataset(files, tmp_path / "class lists", val_fraction=0.25, seed=3)
    linked, report = data.load_image_folder(folder)
    assert linked.class_names == files.class_names == ("dark", "Light")
    assert report.source.endswith("class lists")

    def inodes(items) -> list[tuple[int, int]]:
        return sorted((os.stat(path).st_ino, label) for path, label in items)

    train_items, val_items = files.split(0.25, 3)
    assert linked.val is not None  # the split travels as the folders: val_fraction cannot change it
    assert inodes(linked.train) == inodes(train_items) and inodes(linked.val) == inodes(val_items)  # hard links
    assert len(val_items) == 4 and len(train_items) == 12


@pytest.mark.parametrize(("gpus", "shown"), [("2", True), ("1", False), ("", False)])
def test_the_all_gpus_box_shows_only_with_two_gpus_or_more(monkeypatch, gpus, shown):
    monkeypatch.setenv(D.ENV_FAKE_GPUS, gpus)
    if not gpus:
        monkeypatch.delenv(D.ENV_FAKE_GPUS)
        monkeypatch.setattr(D.torch.cuda, "is_available", lambda: False)
    with gr.Blocks():
        box = build_gpu_option()
    assert box.visible is shown and box.value is False
    if shown:
        assert box.label == "Use all 2 GPUs"


def test_the_status_says_how_many_processes_train():
    started = train.Started(
        "r", ["a", "b"], 40, 10, 3, 2, "cuda:0", "finetune", None, "random", {}, world_size=4, global_batch_size=128
    )
    step = train.Step(1, 2, 3, 0.5, 0.75, 1e-3, 100.0, None, 3.0, 0.2)
    assert "in 4 processes (global batch 128)" in event_line(started, 2)[1]
    assert "step 2/3 · 4 processes ·" in event_line(step, 2, processes=4)[1]
    alone = dataclasses.replace(started, world_size=1, global_batch_size=32)
    assert "processes" not in event_line(step, 2)[1] + event_line(alone, 2)[1]


def test_the_childs_preparing_and_mid_epoch_validations_reach_the_page():
    for event in (train.Preparing("building densenet_fashion"), train.Evaluated(0.5, 0.7, 0.6, 0.6, True, 3.0)):
        assert D.event_from_dict(json.loads(json.dumps(event.to_dict()))) == event


def test_a_time_budget_is_refused_before_any_process_starts(tmp_path):
    files, report = data.from_class_lists(_by_hand(tmp_path / "uploads"))
    config = config_from_settings("densenet_fashion", mode="scratch", time_budget="2m")
    with pytest.raises(ValueError, match="time budget is not supported on several GPUs"):
        multi_gpu.train_on_all_gpus(config, files, report, nproc=2, scratch=tmp_path)
    assert list(tmp_path.glob("torchrun_*")) == []
