"""Recipes per mode, the time budget, pacing (lr by progress, loss reads, cuDNN autotuning, odd batches), and
the command line and the Fine-tune tab turning the same settings into the same TrainConfig."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from densenet_demo.cli import main as cli
from densenet_demo.cli.common import training_settings
from densenet_demo.data import datasets as data
from densenet_demo.training.build import build_model
from densenet_demo.training.config import EPOCHS_UNDER_BUDGET, TrainConfig
from densenet_demo.training.data import drops_last
from densenet_demo.training.events import Evaluated, Finished, Step
from densenet_demo.training.loop import Trainer
from densenet_demo.training.pacing import RunningMetrics, cudnn_autotune_pays, lr_factor, mid_epoch_step
from densenet_demo.training.settings import SETTING_HELP, config_from_settings, parse_duration
from densenet_demo.weights import resolver as W


@pytest.fixture(scope="module")
def stripes(tmp_path_factory) -> data.LabeledFiles:
    """Horizontal vs vertical stripes, 16 of each: mirror images keep their class."""
    root = tmp_path_factory.mktemp("stripes")
    rng = np.random.default_rng(0)
    for name in ("horizontal", "vertical"):
        (root / name).mkdir()
        for i in range(16):
            period = int(rng.integers(3, 6))
            line = (np.arange(24) % period < period // 2) * 200 + rng.normal(0, 20, 24)
            pixels = np.tile(line[:, None], (1, 24)) if name == "horizontal" else np.tile(line, (24, 1))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).convert("RGB").save(root / name / f"{i}.png")
    files, _ = data.load_image_folder(root)
    return files


def _tiny(tiny_config, **changes) -> TrainConfig:
    base = dict(model=tiny_config, weights="random", mode="scratch", image_size=16, val_fraction=0.25, device="cpu")
    return TrainConfig(**{**base, **changes})


# -- recipes ------------------------------------------------------------------------------------------


def test_the_quick_recipe_is_the_default_and_trains_from_scratch_with_adamw_warmup_cosine_and_smoothing():
    cfg = TrainConfig(model="densenet121", mode="scratch", device="cpu").resolved()
    assert (cfg.recipe, cfg.optimizer, cfg.lr, cfg.schedule, cfg.warmup) == ("quick", "adamw", 2e-3, "cosine", 0.1)
    assert (cfg.label_smoothing, cfg.epochs, cfg.batch_size, cfg.augment) == (0.1, 5, 32, "none")
    assert cfg.bn_recalibration == 3  # BatchNorm statistics from the last 3 training batches before validating


def test_the_paper_recipe_is_sgd_with_steps_and_no_smoothing():
    cfg = TrainConfig(model="densenet121", mode="scratch", recipe="paper", device="cpu").resolved()
    assert (cfg.optimizer, cfg.lr, cfg.schedule, cfg.warmup, cfg.label_smoothing) == ("sgd", 0.1, "step", 0.0, 0.0)
    assert cfg.bn_recalibration == 0


def test_settings_follow_the_mode_and_given_values_win():
    linear = TrainConfig(model="densenet121", mode="linear", device="cpu").resolved()
    finetune = TrainConfig(model="densenet121", mode="finetune", device="cpu", lr=5e-4).resolved()
    assert (linear.epochs, linear.lr, linear.label_smoothing, linear.bn_recalibration) == (30, 1e-2, 0.0, 0)
    assert (finetune.epochs, finetune.lr, finetune.optimizer) == (5, 5e-4, "adamw")


def test_a_time_budget_lifts_the_epoch_limit_unless_one_is_given():
    assert TrainConfig(model="densenet121", time_budget_s=60).resolved().epochs == EPOCHS_UNDER_BUDGET
    assert TrainConfig(model="densenet121", time_budget_s=60, epochs=3).resolved().epochs == 3


@pytest.mark.parametrize("augment, flips", [("none", False), ("light", False), ("flip", True)])
def test_only_the_flip_augmentation_mirrors_images(augment, flips):
    from densenet_demo.data.images import Preprocessing

    transform = Preprocessing(8, 8, (0.0,), (1.0,), 1).train_transform(augment)
    image = Image.fromarray(np.tile(np.arange(8, dtype=np.uint8) * 30, (8, 1)), "L")  # bright on the right
    torch.manual_seed(0)
    mirrored = [float(t[0, :, 0].mean() - t[0, :, -1].mean()) > 0 for t in (transform(image) for _ in range(30))]
    assert any(mirrored) is flips


# -- pacing -------------------------------------------------------------------------------------------


def test_warmup_then_cosine_reaches_zero_and_the_paper_steps_divide_by_ten():
    assert lr_factor("cosine", 0.1, 0.0) == 0.01 and lr_factor("cosine", 0.1, 0.05) == pytest.approx(0.5)
    assert lr_factor("cosine", 0.1, 0.1) == pytest.approx(1.0) and lr_factor("cosine", 0.1, 1.0) == pytest.approx(0)
    assert [lr_factor("step", 0.0, p) for p in (0.2, 0.6, 0.8)] == [1.0, 0.1, 0.01]
    assert lr_factor("onecycle", 0.0, 0.0) == pytest.approx(1 / 25) and lr_factor("onecycle", 0, 0.3) == 1.0


def test_cudnn_autotuning_only_for_long_runs():
    assert not cudnn_autotune_pays(500, None) and cudnn_autotune_pays(20_000, None)
    assert not cudnn_autotune_pays(20_000, 60.0) and cudnn_autotune_pays(10, 3600.0)


def test_odd_last_batches_are_dropped_on_a_gpu_for_big_epochs_and_single_images_anywhere():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert not drops_last(100, 32, cpu) and drops_last(97, 32, cpu)  # 97 = 3 x 32 + 1
    assert drops_last(300, 32, gpu) and not drops_last(256, 32, gpu) and not drops_last(100, 32, gpu)
    assert not drops_last(20, 32, gpu)  # smaller than a batch: nothing to drop


def test_running_metrics_read_the_device_only_when_due():
    metrics = RunningMetrics(torch.device("cpu"), interval_s=3600.0)
    logits, labels = torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0])
    metrics.add(torch.tensor(1.0), logits, labels)
    assert metrics.due()  # nothing read yet
    first = metrics.read()
    metrics.add(torch.tensor(3.0), logits, labels)
    assert not metrics.due() and metrics.last == first  # within the interval: no read, the old values stand
    now = metrics.read()
    assert (now.seen, now.correct, now.loss_sum) == (4, 2, 8.0) and now.loss == pytest.approx(1.2)


def test_short_runs_and_time_budgets_validate_at_half_an_epoch_first():
    assert mid_epoch_step(5, 40, budget_s=None) == 20
    assert mid_epoch_step(30, 40, budget_s=None) is None and mid_epoch_step(5, 8, budget_s=None) is None
    # A time budget is a short run too, however many epochs it may reach
    assert mid_epoch_step(10_000, 40, budget_s=60) == 20 and mid_epoch_step(10_000, 8, budget_s=60) is None


def test_a_short_run_yields_a_mid_epoch_validation(tiny_config, stripes):
    events = list(Trainer(_tiny(tiny_config, epochs=2, batch_size=2), stripes).run())
    evaluated = [e for e in events if isinstance(e, Evaluated)]
    assert len(evaluated) == 1 and evaluated[0].epoch == 0.5 and 0 <= evaluated[0].val_acc <= 1
    assert isinstance(events[-1], Finished)


@pytest.mark.parametrize("batches", [0, 2])
def test_the_checkpoint_keeps_the_batchnorm_statistics_its_validation_used(tiny_config, stripes, tmp_path, batches):
    config = _tiny(tiny_config, epochs=2, batch_size=4, bn_recalibration=batches)
    trainer = Trainer(config, stripes, out_dir=tmp_path)
    assert isinstance(list(trainer.run())[-1], Finished)
    norms = [m for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    tracked = {int(m.num_batches_tracked) for m in norms}
    # Recomputed: the average over the last 2 batches; kept: the running averages over every step so far.
    assert (tracked == {2}) if batches else (min(tracked) >= 6)
    saved = W.load_checkpoint(tmp_path)[0].state_dict()
    assert all(torch.equal(saved[k], v) for k, v in trainer.model.state_dict().items())


# -- time budget --------------------------------------------------------------------------------------


def test_a_time_budget_stops_the_run_on_time_with_its_best_checkpoint(tiny_config, stripes, tmp_path):
    budget = 4.0
    config = _tiny(tiny_config, time_budget_s=budget, batch_size=4)
    # The first model and optimizer of a process import modules (torch's optimizers import its compiler stack):
    # seconds on a busy machine, counted in a real run's budget, but not what this test measures.
    torch.optim.AdamW(build_model(config.resolved(), ["a", "b"])[0].parameters())
    trainer = Trainer(config, stripes, out_dir=tmp_path)
    began, events = time.monotonic(), []
    for event in trainer.run():
        events.append(event)
        if isinstance(event, Finished):  # the run has stopped: what follows is the generator's clean-up
            elapsed = time.monotonic() - began
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.out_of_time and not finished.stopped_early
    assert 0.8 * budget <= elapsed <= 1.1 * budget, elapsed
    _, info = W.load_checkpoint(finished.checkpoint_dir)
    assert info.metrics["val_acc"] == finished.best_val_acc and Path(finished.checkpoint_dir) == tmp_path
    steps = [e for e in events if isinstance(e, Step)]
    assert steps[-1].lr < 0.25 * max(s.lr for s in steps)  # the lr decayed as the time ran out
    assert steps[-1].progress > 0.8 and steps[-1].eta_s < 0.3 * budget


def test_a_budget_shorter_than_an_epoch_still_ends_with_a_validated_checkpoint(tiny_config, stripes, tmp_path):
    config = _tiny(tiny_config, time_budget_s=0.05, batch_size=2)
    events = list(Trainer(config, stripes, out_dir=tmp_path).run())
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.out_of_time and finished.epochs_run == 1
    assert (tmp_path / W.CHECKPOINT_WEIGHTS).is_file()


@pytest.mark.parametrize("text, seconds", [("60s", 60.0), ("2m", 120.0), ("1.5h", 5400.0), ("90", 90.0), ("", None)])
def test_durations_read_as_people_write_them(text, seconds):
    assert parse_duration(text) == seconds


def test_a_bad_duration_says_how_to_write_one():
    with pytest.raises(ValueError, match="write e.g. 60s"):
        parse_duration("soon")


# -- the same settings from the command line and the page ----------------------------------------------


def _cli_config(argv: list[str]) -> TrainConfig:
    args = cli.build_parser().parse_args(["train", "DATA", *argv])
    return config_from_settings(args.model, **training_settings(args))


@pytest.mark.parametrize(
    "argv, page",
    [
        (["--model", "densenet121"], ("densenet121", "ImageNet", "linear", None, None, None, None, False, "Auto")),
        (
            ["--model", "densenet_fashion", "--mode", "scratch", "--weights", "random", "--recipe", "paper",
             "--epochs", "7", "--lr", "0.05", "--batch-size", "16", "--image-size", "48", "--memory-efficient",
             "--amp", "off", "--optimizer", "sgd", "--schedule", "step", "--augment", "flip", "--label-smoothing",
             "0.05", "--early-stopping", "3", "--val-fraction", "0.3", "--device", "cpu"],
            ("densenet_fashion", "Random init", "scratch", 7.0, 0.05, 16.0, 48.0, True, "Off", "sgd", "step",
             "paper", "", "flip", 0.05, 3.0, 0.3, "cpu"),
        ),
        (
            ["--model", "densenet121", "--mode", "finetune", "--time-budget", "90s", "--augment", "light"],
            ("densenet121", "ImageNet", "finetune", 5.0, None, None, None, False, "Auto", "default", "default",
             "quick", "90s", "light", None, None, 0.2, "auto"),
        ),
    ],
    ids=["defaults", "every setting", "time budget"],
)  # fmt: skip
def test_the_command_line_and_the_page_make_the_same_config(argv, page):
    from densenet_demo.ui.training_settings import SETTING_NAMES, config_from_page

    defaults = ("default", "default", "quick", "", "none", None, None, 0.2, "auto")
    page = page + defaults[len(page) - 9 :] if len(page) < 18 else page
    assert _cli_config(argv) == config_from_page(dict(zip(SETTING_NAMES, page, strict=True)))


def test_a_time_budget_replaces_epochs_on_both_faces():
    from densenet_demo.ui.training_settings import SETTING_NAMES, config_from_page

    with pytest.raises(ValueError, match="either a number of epochs or a time budget, not both"):
        _cli_config(["--model", "densenet121", "--epochs", "3", "--time-budget", "60s"])
    page = ("densenet121", "ImageNet", "linear", 3.0, None, None, None, False, "Auto", "default", "default", "quick")
    config = config_from_page(dict(zip(SETTING_NAMES, (*page, "60s", "none", None, None, 0.2, "auto"), strict=True)))
    assert config.time_budget_s == 60 and config.epochs is None  # the epochs field is left out
    assert config == _cli_config(["--model", "densenet121", "--time-budget", "60s"])
    assert "replaces" in SETTING_HELP["time_budget"] and "replaces" in SETTING_HELP["epochs"]


def test_batchnorm_recalibration_is_a_flag_and_a_setting_alike():
    assert _cli_config(["--model", "densenet121", "--mode", "scratch", "--bn-recalibration", "2"]).bn_recalibration == 2
    assert config_from_settings("densenet121", mode="scratch", bn_recalibration=2.0).bn_recalibration == 2
    assert config_from_settings("densenet121", bn_recalibration="default").bn_recalibration is None
    with pytest.raises(ValueError, match="bn_recalibration"):
        config_from_settings("densenet121", bn_recalibration=-1)


def test_every_setting_of_the_page_is_a_train_flag_with_help(capsys):
    from densenet_demo.training.settings import DEFAULTS
    from densenet_demo.ui.training_settings import SETTING_NAMES

    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines
    page = [name.removesuffix("_choice") for name in SETTING_NAMES if name != "model"]  # weights_choice: --weights
    assert len(page) == 17
    for name in page:
        assert name in DEFAULTS and "--" + name.replace("_", "-") in text
    assert "quick: AdamW" in text and "paper: the DenseNet paper's" in text
