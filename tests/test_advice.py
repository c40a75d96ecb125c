"""Advice before a run: settings suggested by measurement, the timings behind them, and an honest estimate."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from densenet_demo.cli.main import main
from densenet_demo.data.datasets import LabeledFiles, load_image_folder
from densenet_demo.training import advice, timing
from densenet_demo.training.config import TrainConfig
from densenet_demo.training.events import EpochEnd
from densenet_demo.training.loop import Trainer
from densenet_demo.training.settings import config_from_settings, parse_duration


def _images(root: Path, *, side: int, colour: bool, per_class: int = 6, as_rgb: bool = True) -> Path:
    """Two classes of noisy blobs; grey ones saved as RGB (as many scans are) unless ``as_rgb`` is off."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(("a", "b")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = rng.normal(60 + 120 * k, 25, (side, side))
            if colour:
                pixels = np.stack([base, base[::-1] * 0.4, 255 - base], axis=2)
            else:
                pixels = base
            image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
            (image.convert("RGB") if as_rgb else image).save(root / name / f"{i}.png")
    return root


def _files(root: Path, **kwargs) -> LabeledFiles:
    return load_image_folder(_images(root, **kwargs))[0]


@pytest.fixture
def canned_timing(monkeypatch):
    """Timings without timing (for the branches whose models are too big to time in a unit test)."""
    asked = []

    def fake(config, n_classes, files=None, *, fresh=False):
        cfg = config.resolved()
        asked.append((cfg.model_name, cfg.mode, cfg.image_size))
        per_image = 0.01 if cfg.mode == "linear" else 0.002 * (cfg.image_size / 32) ** 2
        return timing.StepTiming(per_image, per_image, per_image, per_image / 3, 0.0005, cfg.batch_size, cfg.image_size)

    with monkeypatch.context() as patch:
        patch.setattr(timing, "measure", fake)
        yield asked


def test_grey_scans_saved_as_rgb_count_as_grey_and_colour_as_colour(tmp_path):
    grey = advice.look_at(_files(tmp_path / "grey", side=32, colour=False))
    colour = advice.look_at(_files(tmp_path / "colour", side=32, colour=True))
    assert grey.grayscale and not colour.grayscale
    assert grey.median_side == 32 and (grey.n_train, grey.n_val, grey.n_classes) == (10, 2, 2)


@pytest.mark.e2e
def test_small_grey_images_get_the_small_model_from_scratch_chosen_by_a_measurement(tmp_path):
    files = _files(tmp_path, side=28, colour=False)
    s = advice.suggest_settings(files, device="cpu")
    assert (s.model, s.mode, s.recipe, s.batch_size, s.grayscale) == ("densenet_fashion", "scratch", "quick", 32, True)
    assert s.image_size == 32  # the usual size above 28 px that the model takes
    assert 30 <= parse_duration(s.time_budget) <= 600 and s.epoch_s > 0
    assert "28 px" in s.reason and "images/s measured" in s.reason and "\n" not in s.reason
    config = config_from_settings(**s.settings())  # the settings by name make a run
    assert (config.model, config.image_size, config.time_budget_s) == (
        "densenet_fashion",
        32,
        parse_duration(s.time_budget),
    )


def test_small_colour_images_get_a_colour_model(tmp_path, canned_timing):
    s = advice.suggest_settings(_files(tmp_path, side=32, colour=True), device="cpu")
    assert (s.model, s.mode, s.grayscale) == ("densenet121", "scratch", False)
    assert canned_timing == [("densenet121", "scratch", 32)]


def test_photos_start_from_imagenet_features_when_the_weights_can_be_had(tmp_path, canned_timing, monkeypatch):
    from densenet_demo.weights import pretrained

    files = _files(tmp_path, side=160, colour=True, per_class=3)
    with monkeypatch.context() as patch:
        patch.setattr(pretrained, "imagenet_can_be_had", lambda name, timeout_s=3.0: True)
        s = advice.suggest_settings(files, device="cpu")
    assert (s.model, s.mode, s.image_size, s.time_budget) == ("densenet121", "linear", 224, "")
    assert "ImageNet" in s.reason and s.settings()["weights"] == "default"
    with monkeypatch.context() as patch:  # offline: from scratch, at a size whose first result comes soon
        patch.setattr(pretrained, "imagenet_can_be_had", lambda name, timeout_s=3.0: False)
        offline = advice.suggest_settings(files, device="cpu")
    assert offline.mode == "scratch" and offline.model == "densenet121" and offline.image_size <= 160


def test_scratch_runs_on_a_cpu_take_at_most_48_px(tmp_path, canned_timing):
    s = advice.suggest_settings(_files(tmp_path, side=96, colour=False, per_class=3), device="cpu")
    assert (s.model, s.image_size) == ("densenet_fashion", 48) and canned_timing == [
        ("densenet_fashion", "scratch", 48)
    ]


def test_a_slow_candidate_gives_way_to_a_smaller_image_size(tmp_path, monkeypatch):
    files = _files(tmp_path, side=64, colour=False)

    def slow_above_32(config, n_classes, files=None, *, fresh=False):
        cfg = config.resolved()
        per_image = 10.0 if cfg.image_size > 32 else 0.001
        return timing.StepTiming(per_image, per_image, per_image, per_image, 0.0, cfg.batch_size, cfg.image_size)

    with monkeypatch.context() as patch:
        patch.setattr(timing, "measure", slow_above_32)
        s = advice.suggest_settings(files, device="cpu")
    assert (s.model, s.image_size) == ("densenet_fashion", 32)


def test_timings_are_cached_per_setting_in_memory_and_on_disk(tmp_path, tiny_config, monkeypatch):
    files = _files(tmp_path, side=16, colour=False)
    config = TrainConfig(model=tiny_config, weights="random", mode="scratch", image_size=16, device="cpu")
    first = timing.measure(config, 2, files)
    assert first.train_s > 0 and first.eval_s > 0 and first.decode_s > 0 and first.train_low_s <= first.train_high_s
    calls = []
    with monkeypatch.context() as patch:
        patch.setattr(timing, "_time_steps", lambda *a: calls.append(a) or first)
        assert timing.measure(config, 2, files) == first and not calls  # cached
        patch.setattr(timing, "_memory", {})  # a new process: the file beside the weights answers
        assert timing.measure(config, 2, files) == first and not calls
        timing.measure(config, 2, files, fresh=True)
        assert len(calls) == 1  # the Estimate button measures again
        other = TrainConfig(model=tiny_config, weights="random", mode="scratch", image_size=24, device="cpu")
        timing.measure(other, 2, files)
        assert len(calls) == 2  # another size is another timing
    stored = json.loads((timing._cache_file()).read_text())
    assert len(stored) == 2 and all("size=16" in key or "size=24" in key for key in stored)


def test_the_estimate_is_a_range_and_never_warns_about_a_quick_run(tmp_path, tiny_config):
    files = _files(tmp_path, side=16, colour=False)
    config = TrainConfig(model=tiny_config, weights="random", mode="scratch", image_size=16, epochs=3, device="cpu")
    estimate = advice.estimate_time(config, 10, 2, ["a", "b"], files)
    assert estimate.epoch_low_s <= estimate.epoch_s <= estimate.epoch_high_s
    assert estimate.total_s > 3 * estimate.epoch_s and estimate.warning is None
    assert re.search(r"An epoch: (about )?\d", estimate.text()) and "training images/s" in estimate.text()
    slow = advice.estimate_time(config, 10_000_000, 8, ["a", "b"], files)
    assert slow.warning and "per epoch" in slow.warning and "Check dataset" in slow.warning


@pytest.mark.e2e
def test_the_estimate_is_within_30_percent_of_the_following_runs_epoch_time(tmp_path):
    # A small model whose steps, not the per-epoch overheads, make an epoch's time (as in any real run), with
    # epochs of a few seconds so that a scheduler's hiccup is not a tenth of one.
    files = _files(tmp_path, side=32, colour=False, per_class=160)
    config = TrainConfig(
        model="densenet_fashion", weights="random", mode="scratch", image_size=32, epochs=3, device="cpu", batch_size=16
    )
    n_train, n_val = (len(part) for part in files.split(config.val_fraction, config.seed))
    tries = []
    # Other tests may share the cores: a wrong estimate misses every time, a busy moment only once; each try times
    # afresh (nothing from the cache) and the run right after it.
    for attempt in range(3):
        timing._memory.clear()
        timing._cache_file().unlink(missing_ok=True)
        estimate = advice.estimate_time(config, n_train, n_val, ["a", "b"], files)
        run = Trainer(config, files, out_dir=tmp_path / f"run{attempt}").run()
        epochs = [e.seconds for e in run if isinstance(e, EpochEnd)]
        actual = statistics.median(epochs[1:])  # epoch 1 also validates at its half
        tries.append((round(estimate.epoch_s, 2), [round(s, 2) for s in epochs]))
        if abs(estimate.epoch_s - actual) <= 0.3 * actual:
            break
    else:
        pytest.fail(f"the estimate missed the epoch time by more than 30% in every try: {tries}")


@pytest.mark.e2e
def test_train_without_a_model_follows_the_suggestion_and_says_so(tmp_path, capsys):
    folder = _images(tmp_path / "scans", side=28, colour=False, per_class=12)
    assert main(["train", str(folder), "--epochs", "1", "--json", "--out", str(tmp_path / "run")]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    suggestion = next(r for r in records if r["event"] == "suggestion")
    started = next(r for r in records if r["event"] == "started")
    assert suggestion["settings"]["model"] == "densenet_fashion" and "densenet_fashion" in suggestion["reason"]
    config = started["config"]
    assert (config["model"], config["mode"], config["image_size"]) == ("densenet_fashion", "scratch", 32)
    assert config["epochs"] == 1 and config["time_budget_s"] is None  # --epochs given: the epochs decide
