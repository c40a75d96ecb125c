"""The page's side of the review, without a browser: the mistakes gallery's handlers, who may review which run, the
per-class thumbnails after a dataset check, and the frames a camera burst keeps."""

from __future__ import annotations

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from densenet_demo.config import DenseNetConfig
from densenet_demo.data import datasets as data
from densenet_demo.data.images import default_preprocessing
from densenet_demo.hosting import runs, sessions
from densenet_demo.model import DenseNet
from densenet_demo.ui import capture, data_review, review_view
from densenet_demo.weights import checkpoints, run_data

CLASSES = ("cat", "dog", "fox")


@pytest.fixture
def folder(tmp_path):
    """Five small images per class."""
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(5):
            pixels = rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "data" / name / f"{i}.png")
    return tmp_path / "data"


@pytest.fixture
def run(folder):
    """A run of an untrained tiny model over ``folder``, saved with its record (no training needed to review)."""
    files, report = data.load_image_folder(folder)
    cfg = DenseNetConfig(growth_rate=4, block_config=(2,), num_init_features=8, stem="cifar", num_classes=3)
    model = DenseNet(cfg).eval()
    out = checkpoints.run_path("tiny-run")
    checkpoints.save_checkpoint(
        out, model, class_names=list(CLASSES), preprocessing=default_preprocessing(cfg, 16), metrics={}
    )
    train, val = files.split(0.4, 0)
    assert run_data.record_run_data(out, files.class_names, train, val, report.root)
    return "tiny-run"


def _state() -> dict:
    return {"session": sessions.Session()}


def test_the_review_endpoint_returns_the_json_of_the_command_line_and_keeps_the_review(run):
    state = _state()
    result, state = review_view.review_for_page(f"run:{run}", state, progress=lambda *a, **k: None)
    assert set(result) == {"confusions", "suspected_mislabels"} and state["review"].run_id == run
    shown = review_view.show_review(state)
    status, table, true, predicted, cell, wrong, suspects = shown
    assert "validation images right" in status and table["headers"] == ["true \\ predicted", *CLASSES]
    assert sum(sum(row[1:]) for row in table["data"]) == int((~state["review"].trained_on).sum())
    assert true["choices"] == list(CLASSES) and all(isinstance(img, Image.Image) for img, _ in cell + wrong)
    assert all("given: " in caption and "looks like: " in caption for _, caption in suspects)


def test_a_click_on_the_counts_picks_that_cell(run):
    state = _state()
    _, state = review_view.review_for_page(run, state, progress=lambda *a, **k: None)
    review = state["review"]
    true, predicted, cell = review_view.pick_cell(state, gr.SelectData(None, {"index": [1, 3], "value": 0}))
    assert (true, predicted) == ("dog", "fox") and len(cell) == len(review.cell(1, 2))
    assert all(caption.startswith("dog/") for _, caption in cell)
    assert review_view.pick_cell(state, gr.SelectData(None, {"index": [1, 0], "value": "dog"}))[0] == gr.skip()


def test_on_a_shared_server_only_the_sessions_own_runs_are_reviewed(run, monkeypatch):
    monkeypatch.setenv("DENSENET_DEMO_SHARED", "1")
    with pytest.raises(gr.Error, match="Unknown model"):
        review_view.review_for_page(run, _state(), progress=lambda *a, **k: None)
    state = _state()
    runs.claim(run, state["session"].owner)
    result, _ = review_view.review_for_page(run, state, progress=lambda *a, **k: None)
    assert "suspected_mislabels" in result


def test_data_gone_is_a_message_without_server_paths(run, folder, tmp_path):
    import shutil

    shutil.rmtree(folder)
    with pytest.raises(gr.Error, match="no longer on this machine") as e:
        review_view.review_for_page(run, _state(), progress=lambda *a, **k: None)
    assert str(tmp_path) not in str(e.value)


def test_after_a_check_each_class_shows_a_few_thumbnails_with_its_count(folder):
    state = {"dataset": data.load_image_folder(folder)}
    shown = data_review.class_samples(state)
    assert len(shown) == len(CLASSES) * data_review.PER_CLASS
    assert [caption for _, caption in shown[:: data_review.PER_CLASS]] == [f"{c} · 5 images" for c in CLASSES]
    assert data_review.class_samples({}) == []


def test_a_tiny_scan_is_enlarged_for_its_thumbnail(tmp_path):
    Image.new("L", (8, 8), 200).save(tmp_path / "scan.png")
    assert review_view.thumbnail(tmp_path / "scan.png").size == (112, 112)
    assert review_view.thumbnail(tmp_path / "missing.png").size == (112, 112)  # grey, not an error


def test_a_camera_frame_becomes_a_png_of_the_session_appended_to_the_class(tmp_path):
    state = {"session": sessions.Session(tmp_path)}
    frame = np.zeros((720, 960, 3), dtype=np.uint8)
    frames = capture.capture_frame(frame, [], state)
    frames = capture.capture_frame(frame, frames, state)
    files = capture.captured_files(frames)
    assert len(files) == 2 and len(set(files)) == 2
    assert all(f.startswith(str(state["session"].folder())) for f in files)
    assert max(Image.open(files[0]).size) == capture.MAX_SIDE
    full = [(f, None) for f in files] * (capture.MAX_FRAMES // 2)
    assert capture.capture_frame(frame, full, state) == gr.skip()  # a forgotten recording stops at the cap
    assert capture.capture_frame(None, frames, state) == gr.skip()
