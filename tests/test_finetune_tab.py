"""The Fine-tune tab's handlers in-process (no server, no browser): what a run's updates show the user."""

from __future__ import annotations

import gradio as gr
import numpy as np
import pytest
from helpers import ONE_EPOCH_PAGE_SETTINGS, checked_dataset, finetune_page, images_by_hand

from densenet_demo import plots
from densenet_demo.config import PRESETS
from densenet_demo.data.images import default_preprocessing
from densenet_demo.model import DenseNet
from densenet_demo.training.config import TrainConfig
from densenet_demo.training.events import EpochEnd, Event, Failed, Finished
from densenet_demo.training.loop import Trainer
from densenet_demo.ui import finetune_data, training_view
from densenet_demo.ui.finetune_tab import start_training
from densenet_demo.weights import resolver as weights


@pytest.fixture
def tab():
    return finetune_page()


def _scripted_run(events: list[Event]):
    """A Trainer.run that yields ``events``: the handler's rendering of a given sequence, without training."""

    def run(self, cancel=None):
        yield from events

    return run


def _epoch(epoch: int, per_class: dict[str, float], improved: bool) -> EpochEnd:
    return EpochEnd(
        epoch=epoch, epochs=2, train_loss=0.5, train_acc=0.8, val_loss=0.4, val_acc=0.75, per_class_val_acc=per_class,
        seconds=1.0, best_val_acc=0.75, improved=improved,
    )  # fmt: skip


def _last_update(tab, state, events):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "run", _scripted_run(events))
        *_, last = start_training(tab, state, *ONE_EPOCH_PAGE_SETTINGS)
    return last


def test_the_per_class_table_is_the_best_epochs_not_the_last(tab, tmp_path):
    state = checked_dataset(images_by_hand(tmp_path / "d", 6))
    run_dir = tmp_path / "weights" / "runs" / "20260101-000000-densenet_fashion-abcd"
    cfg = PRESETS["densenet_fashion"].config.replace(num_classes=2)
    weights.save_checkpoint(
        run_dir, DenseNet(cfg), class_names=["dark", "light"], preprocessing=default_preprocessing(cfg)
    )
    best = {"dark": 1.0, "light": 0.9}
    events = [
        _epoch(1, best, improved=True),
        _epoch(2, {"dark": 0.5, "light": 0.4}, improved=False),
        Finished(
            best_val_acc=0.95, best_epoch=1, checkpoint_dir=str(run_dir), confusion_matrix=[[10, 0], [1, 9]],
            class_names=["dark", "light"], epochs_run=2, stopped_early=False, seconds=2.0, skipped=[],
            per_class_val_acc=best,
        ),
    ]  # fmt: skip
    last = _last_update(tab, state, events)
    assert last[tab.per_class].to_dict("records") == [
        {"class": "dark", "val acc": 1.0},
        {"class": "light", "val acc": 0.9},
    ]
    # The run is named; its folder on the server is not shown.
    assert "Saved as run 20260101-000000-densenet_fashion-abcd" in last[tab.log]
    assert str(tmp_path) not in last[tab.log] + last[tab.progress]
    assert last[tab.state]["run_id"] == run_dir.name


def test_an_error_in_angle_brackets_reaches_the_status_line_whole(tab, tmp_path):
    state = checked_dataset(images_by_hand(tmp_path / "d", 6))
    message = "could not download the weights for densenet121 (<urlopen error [Errno -2] Name or service not known>)."
    last = _last_update(tab, state, [Failed(message=message)])
    assert "(&lt;urlopen error [Errno -2] Name or service not known&gt;)" in last[tab.progress]
    assert "<urlopen" not in last[tab.progress]


def test_a_run_on_two_validation_images_says_that_its_accuracy_means_little(tab, tmp_path):
    state = checked_dataset(images_by_hand(tmp_path / "d", 5))
    n_val = len(Trainer(TrainConfig(model="densenet_fashion"), state["dataset"][0]).val_items)
    assert n_val == 2
    *_, last = start_training(tab, state, *ONE_EPOCH_PAGE_SETTINGS)
    assert "Finished" in last[tab.progress]
    assert "only 2 validation image(s): too few to mean much" in last[tab.progress]
    assert "add more images" in last[tab.progress]


def test_a_large_validation_set_gets_no_warning():
    assert training_view.few_images(training_view.FEW_VAL_IMAGES) == ""


def test_start_checks_the_data_only_when_the_choice_changed(tmp_path):
    by_hand = images_by_hand(tmp_path / "d", 3)
    report, state = finetune_data.ensure_dataset("Classes by hand", None, None, "", by_hand, {})
    assert "6 images" in report and state["dataset"] is not None
    again, same = finetune_data.ensure_dataset("Classes by hand", None, None, "", by_hand, state)
    assert isinstance(again, type(gr.skip())) and same["dataset"] is state["dataset"]
    fewer = {name: files[:2] for name, files in by_hand.items()}
    report, state = finetune_data.ensure_dataset("Classes by hand", None, None, "", fewer, state)
    assert "4 images" in report


def test_a_folder_upload_is_summarised_by_count_and_class_folders():
    paths = [f"pets/{c}/{i}.png" for c in ("cats", "dogs") for i in range(900)]
    entries = "[" + ",".join(f'{{"path": "{p}", "size": 1}}' for p in paths) + "]"
    text = finetune_data.folder_summary(["f"] * 1800, entries)
    assert "1,800 files" in text and "2 class folder(s): cats (900), dogs (900)" in text


def test_confusion_counts_are_white_on_dark_cells_and_black_on_light_ones():
    fig = plots.confusion_matrix_figure([[40, 1], [2, 37]], ["a", "b"])
    colours = {t.get_text(): t.get_color() for t in fig.axes[0].texts}
    assert colours["40"] == colours["37"] == "white"
    assert colours["1"] == colours["2"] == "black"


def test_one_epoch_of_curves_is_a_visible_point_on_a_whole_epoch_axis():
    fig = training_view.curves([{"epoch": 1, "train_acc": 0.5, "val_acc": 0.6}], "acc", epochs=1)
    ax = fig.axes[0]
    assert [line.get_marker() for line in ax.lines] == ["o", "o"]
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert labels and all(label.lstrip("−-").isdigit() for label in labels), labels
    assert np.isclose(ax.get_xlim(), (0.5, 1.5)).all()
