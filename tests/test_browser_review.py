"""The review on the page and through the API, in headless Chromium (Debian's package) and gradio_client: the
per-class thumbnails after Check dataset, the mistakes gallery of a run (a click on the counts picks a cell), the
likely mislabels, ``/review``; and a class captured from Chromium's fake camera that trains and predicts."""

from __future__ import annotations

import re

import numpy as np
import pytest
from gradio_client import Client
from helpers import chromium, pick
from PIL import Image
from playwright.sync_api import expect

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

FAKE_CAMERA = ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")


@pytest.fixture(scope="module")
def browser():
    """One Chromium for the module, with the fake camera (Playwright's sync API runs one browser process at a time)."""
    with chromium(*FAKE_CAMERA) as launched:
        yield launched


def _finetune_page(browser, app_server):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    page.goto(app_server.url)
    page.get_by_role("tab", name="Fine-tune").click()
    return page


def _fill(page, locator: str, value: str) -> None:
    box = page.locator(locator)
    box.fill(value)
    box.press("Enter")


def _settled_count(page, images) -> int:
    """The number of images once it stops changing (three seconds apart)."""
    count = -1
    while count != (now := images.count()):
        count = now
        page.wait_for_timeout(3000)
    return count


def _train_briefly(page, model: str | None = None) -> None:
    """Start a short run (2 epochs at 32 px) of the page's data and wait for its end."""
    if model:
        pick(page, "train-model", model, type_it=True)
        page.locator("input[value='Random init']:visible").check()
        page.locator("input[value='scratch']:visible").check()
    page.get_by_placeholder("e.g. 60s, 2m; empty: train for the epochs").fill("")  # epochs, not a suggested budget
    _fill(page, "#train-epochs input[type=number]", "2")
    _fill(page, 'input[aria-label="Image size (0: the model\'s own)"]', "32")
    page.locator("#train-start").click()
    expect(page.locator("#train-progress")).to_contain_text("Finished", timeout=600_000)


def test_check_shows_each_class_and_a_run_shows_its_mistakes_by_cell(browser, app_server):
    page = _finetune_page(browser, app_server)
    page.locator("#train-load").click()  # the example dataset: 4 classes of 200
    classes = page.locator("#train-classes")
    expect(classes.locator("img")).to_have_count(16)
    expect(classes).to_contain_text("circle · 200 images")
    _train_briefly(page)
    page.get_by_text("Review a run: its mistakes and likely mislabels").click()
    expect(page.locator("#review-run input")).to_have_value(re.compile("example"), timeout=30_000)  # the new run
    page.locator("#review-button").click()
    status = page.locator("#review-status")
    expect(status).to_contain_text("validation images right", timeout=120_000)
    # The counts: rows are the true classes, the first column their names; a click on a cell picks that cell.
    table = page.locator("#review-table")
    expect(table.locator("[data-testid=cell-3-4]")).to_be_visible()

    def cell(row: int, column: int):
        return table.locator(f"[data-testid=cell-{row}-{column}]")

    counts = [[int(cell(r, c).inner_text()) for c in range(1, 5)] for r in range(4)]
    assert sum(map(sum, counts)) == 160  # the 20% of 800 kept for validation
    true_name, predicted_name = cell(1, 0).inner_text(), cell(2, 0).inner_text()
    cell(1, 3).click()  # true: the second class, predicted: the third
    expect(page.locator("#review-true input")).to_have_value(true_name)
    expect(page.locator("#review-predicted input")).to_have_value(predicted_name)
    expect(page.locator("#review-cell img")).to_have_count(min(counts[1][2], 48))
    cell(1, 2).click()  # the second class, right
    expect(page.locator("#review-predicted input")).to_have_value(true_name)
    expect(page.locator("#review-cell img")).to_have_count(min(counts[1][1], 48))
    if counts[1][1]:  # each thumbnail: the top 3, the given class, the file inside the data's folder
        top3 = rf"{true_name} [01]\.\d\d, \w+ [01]\.\d\d, \w+ [01]\.\d\d · given: {true_name} · {true_name}/"
        expect(page.locator("#review-cell")).to_contain_text(re.compile(top3))
    wrong = sum(map(sum, counts)) - sum(counts[i][i] for i in range(4))
    expect(page.locator("#review-wrong img")).to_have_count(min(wrong, 24))
    suspects = int(re.search(r"(\d+) likely mislabels", status.inner_text()).group(1))
    expect(page.locator("#review-suspects img")).to_have_count(min(suspects, 48))
    if suspects:
        expect(page.locator("#review-suspects")).to_contain_text(
            re.compile(r"given: \w+, looks like: \w+ \([01]\.\d\d\) · \w+/")
        )
    assert str(app_server.weights_dir) not in page.content() and "/tmp/" not in status.inner_text()
    page.close()


def test_the_review_endpoint_answers_with_confusions_and_suspects_for_the_sessions_run(app_server):
    client = Client(app_server.url, verbose=False)
    client.predict("Example dataset", None, None, "", api_name="/load_dataset")
    args = ("densenet_fashion", "Random init", "scratch", 1, None, 32, 32, False, "Auto", "default", "default")
    job = client.submit(*args, api_name="/train")
    job.result()  # waits for the run to end
    final = job.outputs()[-1]
    assert "Finished" in final[3], final[3]
    run = final[7]["value"]  # the Predict tab's model: run:<id> of the new run
    review = client.predict(run, api_name="/review")
    assert set(review) == {"confusions", "suspected_mislabels"}
    for cell in review["confusions"]:
        assert cell["count"] == len(cell["files"]) and cell["true"] != cell["predicted"]
        assert all(re.fullmatch(r"\w+/[\w.-]+", f) for f in cell["files"])  # inside the data's folder
    for suspect in review["suspected_mislabels"]:
        assert suspect["p_suggested"] >= suspect["p_label"] and not suspect["file"].startswith("/")
    with pytest.raises(Exception, match="Unknown model"):
        client.predict("run:no-such-run", api_name="/review")


def test_a_class_captured_from_the_camera_trains_and_predicts(browser, app_server, tmp_path):
    light = tmp_path / "light"
    light.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        pixels = np.clip(235 + rng.normal(0, 8, (48, 64, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(light / f"light{i}.png")
    page = _finetune_page(browser, app_server)
    page.get_by_label("Classes by hand").first.check()
    page.get_by_text("Classes by hand").last.click()
    page.locator("#class-name textarea, #class-name input").first.fill("camera")
    camera = page.locator("#capture-camera")
    camera.get_by_text("Click to Access Webcam").click()
    camera.get_by_role("button", name="capture photo").click()  # streaming: "Record" starts the burst
    frames = page.locator("#capture-frames")
    # Two frames a second on a quiet machine; far fewer on a busy one, so wait for six, however long they take.
    expect(frames.locator("img").nth(5)).to_be_visible(timeout=180_000)
    camera.get_by_role("button", name="capture photo").click()  # "Stop"
    taken = _settled_count(page, frames.locator("img"))  # a frame on its way when Stop was pressed
    frame_url = frames.locator("img").first.get_attribute("src")
    frames.get_by_role("button", name="Delete image").first.click()
    expect(frames.locator("img")).to_have_count(taken - 1)
    page.locator("#class-add").click()
    expect(page.locator("#class-list")).to_contain_text(f"camera: {taken - 1} image(s)")
    expect(frames.locator("img")).to_have_count(0)
    page.locator("#class-name textarea, #class-name input").first.fill("light")
    page.locator("#class-files input[type=file]").set_input_files([str(p) for p in sorted(light.iterdir())])
    page.locator("#class-add").click()
    expect(page.locator("#class-list")).to_contain_text("light: 8 image(s)")
    page.locator("#train-load").click()
    expect(page.locator("#train-report")).to_contain_text("2 classes")
    expect(page.locator("#train-classes")).to_contain_text(f"camera · {taken - 1} images")
    _train_briefly(page, model="densenet_fashion")
    # The run predicts: a frame of the camera is "camera", a light image "light".
    frame = tmp_path / "frame.png"
    frame.write_bytes(page.request.get(frame_url).body())
    page.get_by_role("tab", name="Predict").click()
    expect(page.locator("#predict-model input")).to_have_value(re.compile("class lists"))  # the run just trained
    for image, expected in ((frame, "camera"), (light / "light0.png", "light")):
        page.locator("#predict-photo input[type=file]").set_input_files(str(image))
        page.locator("#predict-button").click()
        expect(page.locator("#predict-label")).to_contain_text(expected, timeout=60_000)
    page.close()
