"""The Fine-tune tab in headless Chromium (Debian's package): Start without Check, the results of the best epoch,
names instead of server paths, the ONNX download, a large folder upload, and the phone layout."""

from __future__ import annotations

import re

import pytest
from PIL import Image
from playwright.sync_api import expect

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def _finetune_page(browser, app_server, width: int = 1400):
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.set_default_timeout(60_000)
    page.goto(app_server.url)
    page.get_by_role("tab", name="Fine-tune").click()
    return page


def test_start_checks_the_example_itself_and_the_results_name_the_run(browser, app_server):
    page = _finetune_page(browser, app_server)
    epochs = page.locator("#train-epochs input[type=number]")
    epochs.fill("1")
    epochs.press("Enter")
    size = page.get_by_label("Image size (0: the model's own)")
    size.fill("32")
    size.press("Enter")
    page.locator("#train-start").click()  # no "Check dataset" first
    expect(page.locator("#train-report")).to_contain_text("4 classes", timeout=60_000)
    status = page.locator("#train-status")
    expect(status).to_contain_text("Finished", timeout=120_000)
    expect(status).to_contain_text("Saved as run ")
    log = page.locator("#train-log textarea").input_value()
    assert str(app_server.weights_dir) not in log and "/runs/" not in log, log
    # Curves after one epoch are images with a point each; the per-class table is the best epoch's.
    expect(page.locator("#train-acc img").first).to_be_visible()
    expect(page.locator("#train-per-class")).to_contain_text("circle")
    page.locator("#train-export-button").click()
    expect(page.locator("#train-export")).to_contain_text(".zip", timeout=120_000)
    page.close()


def test_a_folder_of_many_images_shows_a_summary_and_keeps_the_page_short(browser, app_server, tmp_path):
    root = tmp_path / "many"
    for cls, colour in (("cats", (200, 0, 0)), ("dogs", (0, 0, 200)), ("owls", (0, 160, 0))):
        (root / cls).mkdir(parents=True)
        for i in range(100):
            Image.new("RGB", (8, 8), colour).save(root / cls / f"{i:03d}.png")
    page = _finetune_page(browser, app_server)
    page.get_by_label("Folder").first.check()
    page.locator("#train-folder input[type=file]").set_input_files(str(root))
    summary = page.locator("#train-folder-summary")
    expect(summary).to_contain_text("300 files", timeout=60_000)
    expect(summary).to_contain_text(re.compile(r"cats \(100\).*dogs \(100\).*owls \(100\)"))
    # One row per file made the page some 60 px taller per file; the list now scrolls in a short box.
    height = page.evaluate("document.documentElement.scrollHeight")
    assert height < 5000, f"page is {height} px tall"
    page.close()


def test_the_curves_stack_on_a_phone_and_sit_side_by_side_on_a_wide_screen(browser, app_server):
    for width, stacked in ((400, True), (1400, False)):
        page = _finetune_page(browser, app_server, width)
        loss = page.locator("#train-loss").bounding_box()
        acc = page.locator("#train-acc").bounding_box()
        assert (acc["y"] >= loss["y"] + loss["height"] - 1) == stacked, (width, loss, acc)
        assert loss["x"] + loss["width"] <= width and acc["x"] + acc["width"] <= width
        page.close()
