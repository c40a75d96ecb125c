"""The page's run on all GPUs, without starting one: the run as the child's job, the checkbox, the status."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import gradio as gr
import pytest
from PIL import Image

from densenet_demo.config import PRESETS
from densenet_demo.data import datasets as data
from densenet_demo.training import distributed as D
from densenet_demo.training import events, runners, torchrun
from densenet_demo.training.config import TrainConfig
from densenet_demo.training.events import CancelToken, Evaluated, Failed, Preparing, Started, Step
from densenet_demo.training.settings import config_from_settings
from densenet_demo.ui.multigpu import build_gpu_option
from densenet_demo.ui.training_settings import SETTING_NAMES, config_from_page
from densenet_demo.ui.training_view import event_line

# The page's fields as the browser sends them (numbers as floats, "default", "Auto"), in the /train order.
PAGE_FIELDS = [
    ("densenet_fashion", "Random init", "scratch", 3.0, 3e-3, 32.0, 32.0, False, "Off", "adamw", "default")
    + ("quick", "", "none", None, None, 0.2, "auto"),
    ("densenet121", "ImageNet", "finetune", 5.0, None, 16.0, None, True, "Auto", "default", "step")
    + ("paper", "", "flip", 0.05, 3.0, 0.3, "cpu"),
    ("densenet_bc100_k12", "ImageNet", "linear", 30.0, 0.01, 64.0, 0.0, False, "Auto", "sgd", "onecycle")
    + ("quick", "90s", "light", None, 0.0, 0.2, "auto"),
]


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


@pytest.mark.parametrize("fields", PAGE_FIELDS, ids=["scratch", "finetune-paper", "linear-budget"])
def test_the_childs_job_carries_the_pages_run_as_data(fields, tmp_path):
    files, report = data.from_class_lists(_by_hand(tmp_path / "uploads"))
    config = config_from_page(dict(zip(SETTING_NAMES, fields, strict=True)))
    job = torchrun.Job(config, files, report, "run-1", str(tmp_path / "runs" / "run-1"))
    again = torchrun.Job.from_json(job.to_json())
    assert again == job  # the same config, the same images and labels (so the same split), the same report
    assert again.files.split(config.val_fraction, config.seed) == files.split(config.val_fraction, config.seed)


def test_the_job_says_what_no_flag_could_say(tmp_path):
    files, report = data.from_class_lists(_by_hand(tmp_path / "uploads"))
    config = TrainConfig(model=PRESETS["densenet_fashion"].config, warmup=0.2, cache_features=False)
    given_split = data.LabeledFiles(files.class_names, files.train[:6], files.train[6:])
    job = torchrun.Job(config, given_split, None, "run-2", str(tmp_path))
    assert torchrun.Job.from_json(job.to_json()) == job


def test_a_child_that_ends_without_an_end_event_ends_the_run_with_a_failure_of_its_own(tmp_path):
    files, report = data.from_class_lists(_by_hand(tmp_path / "uploads"))
    job = torchrun.Job(TrainConfig(model="densenet_fashion"), files, report, "run-3", str(tmp_path / "run-3"))
    line = json.dumps(Preparing("x").to_dict())
    script = f"import sys; print('torchrun says hello'); print({line!r}); sys.exit(3)"  # then it dies
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = list(torchrun._events_of(child, CancelToken(), job, 2, stop_grace_s=5.0))
    assert seen[0] == Preparing("x")
    assert isinstance(seen[-1], Failed) and "ended without a result (exit code 3)" in seen[-1].message
    assert seen[-1].checkpoint_dir is None and len(seen) == 2


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
    started = Started(
        "r", ["a", "b"], 40, 10, 3, 2, "cuda:0", "finetune", None, "random", {}, world_size=4, global_batch_size=128
    )
    step = Step(1, 2, 3, 0.5, 0.75, 1e-3, 100.0, None, 3.0, 0.2)
    assert "in 4 processes (global batch 128)" in event_line(started, 2)[1]
    assert "step 2/3 · 4 processes ·" in event_line(step, 2, processes=4)[1]
    alone = dataclasses.replace(started, world_size=1, global_batch_size=32)
    assert "processes" not in event_line(step, 2)[1] + event_line(alone, 2)[1]


def test_the_childs_preparing_and_mid_epoch_validations_reach_the_page():
    for event in (Preparing("building densenet_fashion"), Evaluated(0.5, 0.7, 0.6, 0.6, True, 3.0)):
        assert events.from_dict(json.loads(json.dumps(event.to_dict()))) == event


def test_a_time_budget_is_refused_before_any_process_starts(tmp_path):
    files, report = data.from_class_lists(_by_hand(tmp_path / "uploads"))
    config = config_from_settings("densenet_fashion", mode="scratch", time_budget="2m")
    with pytest.raises(ValueError, match="time budget is not supported on several GPUs"):
        runners.start(config, files, report=report, where="torchrun", processes=2, scratch=tmp_path)
    assert list(tmp_path.glob("torchrun_*")) == []
