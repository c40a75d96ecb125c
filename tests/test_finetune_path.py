"""The Fine-tune tab's suggested path in-process: the suggestion in the fields (a person's own choices kept), an
honest estimate beside it, and how a run under a time budget is drawn and told."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from densenet_demo.training import timing
from densenet_demo.training.config import EPOCHS_UNDER_BUDGET
from densenet_demo.training.events import Cancelled, EpochEnd, Started, Step, Validating
from densenet_demo.ui import finetune_data, training_settings, training_view
from densenet_demo.ui.training_run import _RunView

SUGGESTED = training_settings.SUGGESTED


def _scans(root: Path, per_class: int = 6) -> dict[str, list[str]]:
    """Grey 28 px blobs saved as RGB, as a scanner app saves them: two classes."""
    rng = np.random.default_rng(0)
    by_hand = {}
    for k, name in enumerate(("three", "eight")):
        (root / name).mkdir(parents=True)
        by_hand[name] = []
        for i in range(per_class):
            pixels = np.clip(rng.normal(60 + 120 * k, 20, (28, 28)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).convert("RGB").save(root / name / f"{i}.png")
            by_hand[name].append(str(root / name / f"{i}.png"))
    return by_hand


@pytest.fixture
def canned_timing(monkeypatch):
    def fake(config, n_classes, files=None, *, fresh=False):
        cfg = config.resolved()
        return timing.StepTiming(0.002, 0.0015, 0.003, 0.0007, 0.0003, cfg.batch_size, cfg.image_size)

    with monkeypatch.context() as patch:
        patch.setattr(timing, "measure", fake)
        yield


def _checked(tmp_path: Path) -> dict:
    _, state = finetune_data.load_dataset("Classes by hand", None, None, "", _scans(tmp_path), {})
    return state


def test_the_suggestion_names_its_settings_and_its_reason(tmp_path, canned_timing):
    suggestion, state = training_settings.suggest_settings(_checked(tmp_path))
    assert {*SUGGESTED, "reason", "epoch_s"} <= set(suggestion)
    assert (suggestion["model"], suggestion["mode"], suggestion["weights_choice"]) == (
        "densenet_fashion",
        "scratch",
        "Random init",
    )
    assert suggestion["image_size"] == 32 and suggestion["time_budget"].endswith("s")
    assert "grey" in suggestion["reason"] and state["suggestion"] == suggestion


def test_a_suggestion_before_a_dataset_is_checked_says_what_to_do():
    with pytest.raises(gr.Error, match="Check a dataset first"):
        training_settings.suggest_settings({})


def test_the_example_brings_its_own_quick_settings():
    _, state = finetune_data.load_dataset("Example dataset", None, None, "", {}, {})
    suggestion, _ = training_settings.suggest_settings(state)
    assert (suggestion["model"], suggestion["image_size"], suggestion["epochs"]) == ("densenet_fashion", 48, 15)


def test_a_suggestion_fills_the_fields_but_keeps_what_a_person_set(tmp_path, canned_timing):
    suggestion, _ = training_settings.suggest_settings(_checked(tmp_path))
    fresh = training_settings.apply_suggestion(suggestion, [], "quick")
    values = dict(zip(SUGGESTED, fresh, strict=False))
    assert values["model"] == "densenet_fashion" and values["image_size"] == 32
    line, estimate = fresh[len(SUGGESTED)], fresh[len(SUGGESTED) + 1]
    assert line.startswith("**Suggested**:") and "densenet_fashion" in line and "An epoch" in estimate
    chosen = training_settings.apply_suggestion(suggestion, ["model"], "quick")
    assert chosen[SUGGESTED.index("model")] == gr.skip()  # the person's model stays
    assert "Kept as you set: model" in chosen[len(SUGGESTED)]
    assert chosen[SUGGESTED.index("image_size")] == 32  # the rest is suggested still


def test_the_estimate_names_its_model_and_never_warns_against_the_suggestion(tmp_path, canned_timing):
    suggestion, state = training_settings.suggest_settings(_checked(tmp_path))
    settings = dict(
        model=suggestion["model"], weights_choice="Random init", mode="scratch", epochs=None, lr=None, batch_size=32,
        image_size=32, time_budget=suggestion["time_budget"],
    )  # fmt: skip
    text = training_settings.estimate_text(state, **settings)
    assert text.startswith("For densenet_fashion (scratch): An epoch:") and "⚠" not in text


# -- a run under a time budget, as the page draws it ----------------------------------------------------


def _budget_view(tmp_path) -> _RunView:
    run = SimpleNamespace(run_id="r", config=SimpleNamespace(epochs=EPOCHS_UNDER_BUDGET, time_budget_s=40.0))
    tab = SimpleNamespace(**{name: name for name in ("state", "loss", "acc", "progress", "log")})
    return _RunView(tab, {}, SimpleNamespace(owner=None), run, [])


def _step(epoch: int, step: int, progress: float) -> Step:
    return Step(epoch, step, 10, 1.0 / (epoch + step), 0.5, 1e-3, 100.0, None, 10.0, progress)


def _epoch_end(epoch: int, fraction: float = 1.0) -> EpochEnd:
    return EpochEnd(epoch, EPOCHS_UNDER_BUDGET, 0.5, 0.8, 0.6, 0.75, {}, 3.0, 0.75, True, fraction=fraction)


def test_a_time_budget_run_is_drawn_over_the_epochs_it_does(tmp_path, monkeypatch):
    from densenet_demo.hosting import runs

    monkeypatch.setattr(runs, "enforce_limits", lambda *a, **k: [])
    view = _budget_view(tmp_path)
    view.update(Started("r", ["a", "b"], 80, 20, 10, EPOCHS_UNDER_BUDGET, "cpu", "scratch", None, "random", {}))
    update = None
    for epoch in (1, 2):
        for step in range(1, 11):
            view.last_update = 0.0  # every step drawn
            update = view.update(_step(epoch, step, progress=(epoch - 1 + step / 10) / 6.0))
        view.update(Validating(epoch=epoch, images=20))
        update = view.update(_epoch_end(epoch))
    right = update["loss"].axes[0].get_xlim()[1]
    assert 6.0 <= right <= 6.6  # two epochs done of about six expected: never the 10,000-epoch placeholder
    assert view.length == pytest.approx(6.0)
    assert "Epoch 2:" in update["log"] and "/10000" not in update["log"]


def test_validation_says_so_and_keeps_the_progress_where_it_was(tmp_path):
    view = _budget_view(tmp_path)
    view.last_update = 0.0
    view.update(_step(1, 5, progress=0.3))
    update = view.update(Validating(epoch=0.5, images=20))
    assert "Validating on 20 images" in update["progress"] and 'style="width:30.0%"' in update["progress"]


def test_an_epoch_a_budget_cut_short_says_how_much_of_it_ran():
    _, text = training_view.event_line(_epoch_end(3, fraction=0.4), EPOCHS_UNDER_BUDGET)
    assert text.startswith("Epoch 3 (40% of it: the time budget ran out):")
    history = [_epoch_end(1).to_dict(), _epoch_end(2).to_dict(), _epoch_end(3, fraction=0.4).to_dict()]
    fig = training_view.curves(history, "acc", None)
    assert list(fig.axes[0].lines[-1].get_xdata()) == [1.0, 2.0, 2.4]


def test_a_stop_before_any_validation_says_the_weights_are_kept_unvalidated():
    line = training_view.outcome_line(Cancelled(checkpoint_dir="/x/runs/r1", epoch=1, best_val_acc=None), 20)
    assert line.startswith("Stopped before the first validation") and "not validated" in line and "/x" not in line


def test_a_burst_of_steps_draws_two_a_second_and_always_the_epochs_last(tmp_path):
    view = _budget_view(tmp_path)
    view.last_update = 0.0
    drawn = [view.update(_step(1, step, progress=step / 60)) is not None for step in range(1, 11)]
    assert drawn == [True] + [False] * 8 + [True]  # a torchrun child's events arrive together: one line per epoch
