"""The page in headless Chromium (Debian's package), driven by Playwright: every tab as a person uses it.

Screenshots go to $DENSENET_DEMO_SCREENSHOTS when set (the README's come from here), else to tmp.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from helpers import pick
from PIL import Image
from playwright.sync_api import expect

from densenet_demo import architecture
from densenet_demo.config import PRESETS
from densenet_demo.data.images import default_preprocessing
from densenet_demo.hosting import runs
from densenet_demo.model import DenseNet
from densenet_demo.training.config import example_config
from densenet_demo.weights import checkpoints

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]


@pytest.fixture(scope="module")
def page(app_server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    page.goto(app_server.url)
    yield page
    page.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    target = os.environ.get("DENSENET_DEMO_SCREENSHOTS")
    path = Path(target) if target else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_predict_tab_shows_labels_for_an_uploaded_image(page, shots, tmp_path):
    image = tmp_path / "red.png"
    Image.new("RGB", (96, 96), (220, 40, 40)).save(image)
    page.get_by_role("tab", name="Predict").click()
    pick(page, "predict-model", "densenet_bc100_k12", type_it=True)
    page.locator("#predict-images input[type=file]").set_input_files(str(image))
    page.locator("#predict-button").click()
    label = page.locator("#predict-label")
    expect(label).to_contain_text("%", timeout=90_000)
    expect(page.locator("#predict-info")).to_contain_text("classified")
    page.screenshot(path=str(shots / "predict.png"), full_page=True)


def test_a_generated_example_can_be_classified(page):
    page.get_by_role("tab", name="Predict").click()
    page.locator("#predict-images").get_by_role("button", name="Clear").first.click()
    page.get_by_role("button", name="circle_000.png").click()
    expect(page.locator("#predict-images")).to_contain_text("circle_000")
    page.locator("#predict-button").click()
    expect(page.locator("#predict-info")).to_contain_text("1 image(s)", timeout=90_000)


def test_finetune_tab_trains_live_and_stop_keeps_a_checkpoint(page, shots, app_server):
    page.get_by_role("tab", name="Fine-tune").click()
    page.locator("#train-load").click()
    expect(page.locator("#train-report")).to_contain_text("classes", timeout=120_000)
    # The example dataset comes with quick settings (a small DenseNet from scratch).
    expect(page.locator("#train-model input")).to_have_value(re.compile(example_config().model_name))
    size = page.get_by_label("Image size (0: the model's own)")
    size.fill("32")  # a quarter of the example's pixels: the same page, sooner
    size.press("Enter")
    page.locator("#train-start").click()
    # The curves update as validations come; then Stop keeps the best checkpoint so far and its confusion matrix.
    expect(page.locator("#train-log textarea")).to_have_value(re.compile("Epoch 1/"), timeout=240_000)
    expect(page.locator("#train-loss canvas, #train-loss svg").first).to_be_visible()
    page.locator("#train-stop").click()
    expect(page.locator("#train-status")).to_contain_text("Stopped", timeout=120_000)
    expect(page.locator("#train-download")).to_contain_text(".zip")
    expect(page.locator("#train-confusion img").first).to_be_visible()
    runs = list((app_server.weights_dir / "runs").iterdir())
    assert any((r / "model.safetensors").is_file() for r in runs)
    page.screenshot(path=str(shots / "finetune.png"), full_page=True)


@pytest.fixture
def fashion_run(app_server) -> str:
    """A densenet_fashion run: the one the fine-tune test trained when it ran first, else a fresh random one."""
    runs = [r.run_id for r in checkpoints.list_runs(app_server.weights_dir / "runs") if "densenet_fashion" in r.run_id]
    if runs:
        return runs[0]
    cfg = PRESETS["densenet_fashion"].config.replace(num_classes=4)
    run_id = "browser-fashion"
    checkpoints.save_checkpoint(
        app_server.weights_dir / "runs" / run_id,
        DenseNet(cfg),
        class_names=["a", "b", "c", "d"],
        preprocessing=default_preprocessing(cfg),
    )
    return run_id


def test_architecture_tab_shows_table_plot_and_feature_reuse(page, shots, app_server, fashion_run):
    page.reload()  # the page lists the runs that exist when it loads
    page.get_by_role("tab", name="Architecture").click()
    pick(page, "arch-preset", "densenet_fashion", type_it=True)
    label = runs.run_label(checkpoints.read_checkpoint_info(app_server.weights_dir / "runs" / fashion_run))
    pick(page, "arch-reuse", label, type_it=True)
    # The run's heatmap comes with the run's architecture (its own number of classes), never the preset's.
    expect(page.locator("#arch-preset input")).to_have_value(label)
    page.locator("#arch-button").click()
    run_config = checkpoints.read_checkpoint_info(app_server.weights_dir / "runs" / fashion_run).config
    params = architecture.totals(run_config)["params"]
    expect(page.locator("#arch-summary")).to_contain_text(f"{params:,}", timeout=60_000)
    expect(page.locator("#arch-table")).to_contain_text("block1.layer4")
    expect(page.locator("#arch-plot canvas, #arch-plot svg").first).to_be_visible()
    expect(page.locator("#arch-heatmap img").first).to_be_visible(timeout=60_000)
    page.screenshot(path=str(shots / "architecture.png"), full_page=True)


def test_folder_upload_keeps_class_folders(page, tmp_path):
    root = tmp_path / "pets"
    for cls, colour, n in (("cats", (200, 0, 0), 3), ("dogs", (0, 0, 200), 2)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (40, 40), colour).save(root / cls / f"{i}.png")  # same names in both folders
    page.get_by_role("tab", name="Fine-tune").click()
    page.get_by_label("Folder").first.check()
    page.locator("#train-folder input[type=file]").set_input_files(str(root))
    page.wait_for_timeout(1500)
    page.locator("#train-load").click()
    report = page.locator("#train-report")
    expect(report).to_contain_text("cats: 3", timeout=60_000)
    expect(report).to_contain_text("dogs: 2")


def test_a_non_image_gets_a_message_on_the_page_and_the_page_keeps_working(page, tmp_path):
    fake = tmp_path / "holiday.png"
    fake.write_text("this is a text file with an image's name")
    page.get_by_role("tab", name="Predict").click()
    images = page.locator("#predict-images")
    if images.get_by_role("button", name="Clear").count():  # files left from an earlier test
        images.get_by_role("button", name="Clear").first.click()
    images.locator("input[type=file]").set_input_files(str(fake))
    expect(images).to_contain_text(re.compile(r"holiday\s*\.png"))  # the list shows the name and extension apart
    page.locator("#predict-button").click()
    expect(page.get_by_text("holiday.png: not an image").first).to_be_visible(timeout=60_000)
    # The same page classifies a real image next.
    good = tmp_path / "green.png"
    Image.new("RGB", (64, 64), (20, 180, 40)).save(good)
    images.get_by_role("button", name="Clear").first.click()
    images.locator("input[type=file]").set_input_files(str(good))
    page.locator("#predict-button").click()
    expect(page.locator("#predict-table")).to_contain_text("green.png", timeout=60_000)
    expect(page.locator("#predict-label")).to_contain_text("%")
