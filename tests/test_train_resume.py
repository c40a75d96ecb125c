"""A run handed over between processes: paused at a deadline, resumed from its CPU state as it was, and a
finished or stopped run continued for more epochs, in the engine, on the command line and from the page."""

from __future__ import annotations

import json
import pickle
import re
import time
from pathlib import Path

import gradio as gr
import pytest
import torch
from helpers import (
    ONE_EPOCH_PAGE_SETTINGS,
    checked_dataset,
    colour_images,
    event_kinds,
    finetune_page,
    images_by_hand,
    train_config,
)

from densenet_demo.cli.main import main
from densenet_demo.data import datasets as data
from densenet_demo.training import runners
from densenet_demo.training.events import CancelToken
from densenet_demo.training.loop import Trainer
from densenet_demo.training.pacing import RunClock, lr_factor
from densenet_demo.training.state import STATE_FILE, LoopState
from densenet_demo.ui.continue_run import continue_training
from densenet_demo.ui.finetune_tab import start_training


def _tensors_on_cpu(value) -> bool:
    if isinstance(value, torch.Tensor):
        return value.device.type == "cpu"
    if isinstance(value, dict):
        return all(_tensors_on_cpu(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_tensors_on_cpu(v) for v in value)
    return True


def _chained(config, files, seconds_per_call: float, gap_s: float = 0.0) -> tuple[list, int]:
    """A run as a chain of trainers, each with ``seconds_per_call`` from its start and going on from the last
    one's state, pickled as it crosses to a GPU call; ``gap_s`` between calls (a GPU call's queue)."""
    trainer, events, calls = Trainer(config, files), [], 0
    while True:
        calls += 1
        chunk = list(trainer.run(deadline=time.monotonic() + seconds_per_call))
        events += [e for e in chunk if e.kind != "paused" and (calls == 1 or e.kind not in ("started", "preparing"))]
        if chunk[-1].kind != "paused":
            return events, calls
        state = pickle.loads(pickle.dumps(trainer.paused_state))
        assert _tensors_on_cpu(state.to_dict())
        time.sleep(gap_s)
        trainer = Trainer.from_state(state, files)


@pytest.mark.parametrize("mode", ["scratch", "linear"])
def test_a_run_paused_after_every_step_trains_exactly_as_one_without_pauses(tiny_config, colours, mode):
    config = train_config(tiny_config, mode=mode, epochs=3, weights="random")
    whole, calls = _chained(config, colours, seconds_per_call=float("inf"))  # never paused; the same batch order
    assert calls == 1
    chained, calls = _chained(config, colours, seconds_per_call=0.0)  # paused once a step has been timed
    steps = [e for e in chained if e.kind == "step"]
    assert calls >= len(steps) / 2 > 1
    assert [(e.epoch, e.step) for e in steps] == [(ep, s) for ep in (1, 2, 3) for s in range(1, steps[0].steps + 1)]
    assert event_kinds(chained).split().count("started") == 1
    # The state carries everything (weights, optimizer, RNG, the epoch's order and running sums): the same numbers.
    assert [(e.loss, e.acc, e.lr) for e in steps] == [(e.loss, e.acc, e.lr) for e in whole if e.kind == "step"]
    ends = [(e.train_loss, e.train_acc, e.val_acc, e.val_loss) for e in chained if e.kind == "epoch_end"]
    assert ends == [(e.train_loss, e.train_acc, e.val_acc, e.val_loss) for e in whole if e.kind == "epoch_end"]
    assert chained[-1].kind == whole[-1].kind == "finished"
    assert chained[-1].best_epoch == whole[-1].best_epoch


def test_a_time_budget_counts_the_time_inside_calls_not_between_them(tiny_config, colours):
    config = train_config(tiny_config, epochs=None, time_budget_s=3.0)
    events, calls = _chained(config, colours, seconds_per_call=1.0, gap_s=1.5)
    assert events[-1].kind == "finished" and events[-1].out_of_time
    assert calls >= 3  # counted with the gaps, the budget would have run out in the second call
    progress = [e.progress for e in events if e.kind == "step"]
    # The lr's clock went on across the calls: a call starting its clock again would drop it by a third or more.
    # (A validation's measured time moves the end by a little, more on a loaded machine: 0.15 of slack.)
    assert progress[-1] > 0.5 and all(b > a - 0.15 for a, b in zip(progress, progress[1:], strict=False))


def test_the_state_a_finished_run_keeps_holds_cpu_tensors_and_plain_data(tiny_config, colours):
    trainer = Trainer(train_config(tiny_config, epochs=2), colours)
    list(trainer.run())
    path = trainer.out_dir / STATE_FILE
    state = torch.load(path, weights_only=True)  # nothing but data: no pickled classes
    assert _tensors_on_cpu(state) and state["run_id"] == trainer.run_id
    assert state["position"]["epoch"] == 3 and state["position"]["step"] == 0
    assert state["model"].keys() == trainer.model.state_dict().keys() and state["optimizer"]["state"]


def test_a_linear_run_keeps_only_its_head_and_a_continued_one_computes_its_features_again(tiny_config, colours):
    trainer = Trainer(train_config(tiny_config, mode="linear", epochs=2), colours)
    list(trainer.run())
    state = LoopState.load(trainer.out_dir)
    assert state.cache is None and all(key.startswith("classifier.") for key in state.weights)
    events = list(runners.continue_training(trainer.out_dir, colours, 2).events())
    assert "caching" in event_kinds(events) and events[-1].kind == "finished"
    assert [e.epoch for e in events if e.kind == "epoch_end"] == [3, 4]


def test_a_finished_run_continues_for_more_epochs_on_the_schedule_of_the_longer_run(tiny_config, colours):
    config = train_config(tiny_config, epochs=2)
    trainer = Trainer(config, colours)
    first = list(trainer.run())
    assert first[-1].kind == "finished"
    run = runners.continue_training(trainer.out_dir, colours, 2)
    events = list(run.events())
    assert [e.epoch for e in events if e.kind == "epoch_end"] == [3, 4]
    started = next(e for e in events if e.kind == "started")
    assert started.epochs == 4 and started.run_id == trainer.run_id
    step = next(e for e in events if e.kind == "step")
    resolved = config.resolved()
    assert step.lr == pytest.approx(resolved.lr * lr_factor(resolved.schedule, resolved.warmup, 0.5))
    assert events[-1].kind == "finished" and events[-1].checkpoint_dir == first[-1].checkpoint_dir
    assert events[-1].best_val_acc >= first[-1].best_val_acc  # the best so far is kept


def test_a_stopped_run_continues_with_the_epoch_it_stopped_in(tiny_config, colours):
    cancel = CancelToken()
    trainer = Trainer(train_config(tiny_config, epochs=2), colours)
    for event in trainer.run(cancel):
        if event.kind == "step" and (event.epoch, event.step) == (2, 2):
            cancel.cancel()
    assert event.kind == "cancelled"
    resumed = list(runners.continue_training(trainer.out_dir, colours, 1).events())
    steps = [e for e in resumed if e.kind == "step"]
    assert (steps[0].epoch, steps[0].step) == (2, 1)
    assert resumed[-1].kind == "finished" and resumed[-1].epochs_run == 2


def test_a_time_budget_run_continues_for_epochs(tiny_config, colours):
    trainer = Trainer(train_config(tiny_config, epochs=None, time_budget_s=1.0), colours)
    first = list(trainer.run())
    assert first[-1].kind == "finished"
    events = list(runners.continue_training(trainer.out_dir, colours, 1).events())
    started = next(e for e in events if e.kind == "started")
    assert started.time_budget_s is None and started.epochs == first[-1].epochs_run + 1
    assert events[-1].kind == "finished" and not events[-1].out_of_time


def test_continuing_on_other_classes_is_refused(tiny_config, colours, tmp_path):
    trainer = Trainer(train_config(tiny_config, epochs=1), colours)
    list(trainer.run())
    other, _ = data.load_image_folder(colour_images(tmp_path / "other", per_class=4))
    other = data.LabeledFiles(("a", "b", "c"), other.train)
    with pytest.raises(ValueError, match="data it was trained on"):
        runners.continue_training(trainer.out_dir, other, 1)


@pytest.mark.parametrize("more", [0, -1, 2.5, True])
def test_more_epochs_must_be_a_whole_number_of_at_least_one(tmp_path, colours, more):
    with pytest.raises(ValueError, match="more epochs must be a whole number"):
        runners.continue_training(tmp_path, colours, more)


def test_a_run_without_a_saved_state_says_what_to_do(tmp_path, colours):
    with pytest.raises(FileNotFoundError, match="Start a new run instead"):
        runners.continue_training(tmp_path, colours, 1)


def test_the_command_line_continues_a_run_for_more_epochs(colour_folder, tiny_checkpoint, capsys):
    argv = ["train", str(colour_folder), "--model", str(tiny_checkpoint), "--mode", "finetune", "--epochs", "1"]
    assert main([*argv, "--image-size", "16", "--batch-size", "8", "--json"]) == 0
    first = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["train", str(colour_folder), "--resume", first.name, "--epochs", "2", "--json"]) == 0
    out, err = capsys.readouterr()
    *lines, last = out.strip().splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["epoch"] for e in events if e["event"] == "epoch_end"] == [2, 3]
    assert events[-1]["event"] == "finished" and last == str(first)
    assert f"continuing run {first.name}: epochs 2 to 3" in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lr", "0.1"], "leave out --lr"),
        (["--model", "densenet121"], "leave out --model"),
    ],
)
def test_the_command_line_refuses_new_settings_for_a_continued_run(colour_folder, capsys, extra, message):
    assert main(["train", str(colour_folder), "--resume", "some-run", *extra]) == 2
    assert message in capsys.readouterr().err


def test_the_command_line_names_a_run_it_cannot_find(colour_folder, capsys):
    assert main(["train", str(colour_folder), "--resume", "no-such-run"]) == 2
    assert "no-such-run" in capsys.readouterr().err


def test_the_page_continues_its_last_run_for_more_epochs(tmp_path):
    tab, state = finetune_page(), checked_dataset(images_by_hand(tmp_path / "d", 6))
    with pytest.raises(gr.Error, match="Train a run first"):
        next(continue_training(tab, state, 2))
    *_, first = start_training(tab, state, *ONE_EPOCH_PAGE_SETTINGS)  # one epoch
    assert "Finished" in first[tab.log]
    *_, last = continue_training(tab, first[tab.state], 2.0)
    log = last[tab.log]
    run_id = first[tab.state]["run_id"]
    assert f"Continuing run {run_id} for 2 more epoch(s): epochs 2 to 3." in log
    assert re.findall(r"Epoch (\d)/3:", log) == ["2", "3"] and "Finished" in log
    assert last[tab.state]["run_id"] == run_id


def test_a_run_that_does_not_exist_is_named_as_such(tmp_path):
    with pytest.raises(FileNotFoundError, match="there is no run nope"):
        LoopState.load(tmp_path / "nope")


def test_a_budget_that_runs_out_as_an_epoch_begins_leaves_that_epoch_to_the_continuation(
    tiny_config, colours, monkeypatch
):
    # The budget runs out at the first step of epoch 2: epoch 2 took no step, so it is not counted as run, and a
    # continuation for 2 more epochs trains epochs 2 and 3.
    config = train_config(tiny_config, epochs=None, time_budget_s=600.0)
    trainer = Trainer(config, colours)
    monkeypatch.setattr(RunClock, "out_of_time", lambda self, steps_done: trainer.state.epoch >= 2)
    first = list(trainer.run())
    assert [e.epoch for e in first if e.kind == "epoch_end"] == [1]
    assert first[-1].kind == "finished" and first[-1].out_of_time and first[-1].epochs_run == 1
    monkeypatch.undo()
    events = list(runners.continue_training(trainer.out_dir, colours, 2).events())
    assert [e.epoch for e in events if e.kind == "epoch_end"] == [2, 3]
    assert next(e for e in events if e.kind == "step").epoch == 2
