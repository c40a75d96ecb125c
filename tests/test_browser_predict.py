"""The Predict tab in headless Chromium (Debian's package) with a fake camera, and through gradio_client.

Covers: natural weights per model and the random-weights warning above the label, one message and no error
panels for simple input errors, table headers before anything is classified, the example photos, upload into
the image input, the live webcam, each image's top classes, a checkpoint zip's round trip, and Predict after a
failed training run.
"""

from __future__ import annotations

import json
import re
import time
import zipfile
from pathlib import Path

import pytest
from gradio_client import handle_file
from helpers import chromium, pick
from PIL import Image
from playwright.sync_api import expect

from densenet_demo.config import DenseNetConfig
from densenet_demo.data.images import default_preprocessing
from densenet_demo.model import DenseNet
from densenet_demo.serving import predict
from densenet_demo.training.config import example_config
from densenet_demo.weights import checkpoints

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SMALL = "densenet_bc100_k12"  # no ImageNet weights, 32 px input: quick on a CPU


@pytest.fixture(scope="module")
def browser():
    # A generated test pattern as the webcam; camera permission granted without a prompt.
    with chromium("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream") as launched:
        yield launched


@pytest.fixture
def page(browser, app_server):
    """A fresh page on the Predict tab for each test, so no test sees another's uploads."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, permissions=["camera"])
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(app_server.url)
    page.get_by_role("tab", name="Predict").click()
    yield page
    context.close()


def _visible_radio(page, name: str):
    return page.get_by_role("radio", name=name, exact=True).locator("visible=true").first


def _no_error_badges(page) -> None:
    for elem_id in ("predict-label", "predict-info", "predict-gallery", "predict-table", "predict-warning"):
        expect(page.locator(f"#{elem_id}").get_by_text("Error", exact=True)).to_have_count(0)


def test_each_model_gets_its_natural_weights_and_random_ones_are_flagged_above_the_label(page, photo):
    weights_radio = page.locator("#predict-weights")
    expect(weights_radio.get_by_role("radio", name="ImageNet")).to_be_checked()
    pick(page, "predict-model", SMALL, type_it=True)
    expect(weights_radio.get_by_role("radio", name="Random init")).to_be_checked()
    expect(page.locator("#predict-warning")).to_contain_text("Random weights")
    pick(page, "predict-model", "densenet169", type_it=True)  # the choice does not stick at Random init
    expect(weights_radio.get_by_role("radio", name="ImageNet")).to_be_checked()
    expect(page.locator("#predict-warning")).not_to_contain_text("Random weights")
    pick(page, "predict-model", SMALL, type_it=True)
    page.locator("#predict-photo input[type=file]").set_input_files(str(photo))
    page.locator("#predict-button").click()
    expect(page.locator("#predict-label")).to_contain_text("%", timeout=60_000)  # the first build of this model
    # The warning sits above the label, and the label's own title says so too.
    warning_box = page.locator("#predict-warning").bounding_box()
    label_box = page.locator("#predict-label").bounding_box()
    assert warning_box["y"] + warning_box["height"] <= label_box["y"] + 1
    expect(page.locator("#predict-label")).to_contain_text("RANDOM WEIGHTS")


def test_the_speed_choice_shows_each_backends_latency_and_what_is_being_prepared(page, photo):
    """ONNX Runtime asked for: PyTorch answers while the graph is made in the background; the page follows its
    preparation without a click and shows its measured latency; the next answer is ONNX Runtime's."""
    pick(page, "predict-model", "densenet40_k12", type_it=True)  # no other test asks for its graph
    page.locator("#predict-photo input[type=file]").set_input_files(str(photo))
    speed, info = page.locator("#predict-speed"), page.locator("#predict-info")
    expect(speed.get_by_role("radio", name="Auto")).to_be_checked()
    speed.get_by_role("radio", name="ONNX Runtime").click()
    page.locator("#predict-button").click()
    expect(info).to_contain_text("by PyTorch", timeout=60_000)
    expect(info).to_contain_text("ONNX Runtime is being prepared in the background")
    expect(speed).to_contain_text(re.compile(r"PyTorch · \d+ ms"))
    expect(page.locator("#predict-speed-info")).to_contain_text("being prepared")
    expect(speed).to_contain_text(re.compile(r"ONNX Runtime · \d+ ms"), timeout=180_000)
    expect(page.locator("#predict-speed-info")).not_to_contain_text("being prepared")
    page.locator("#predict-button").click()
    expect(info).to_contain_text("by ONNX Runtime")
    _no_error_badges(page)


def test_no_image_gives_one_message_without_error_panels_and_the_table_has_headers(page):
    table = page.locator("#predict-table")
    for header in ("image", "top-1", "top-k", "latency ms"):
        expect(table).to_contain_text(header)
    page.locator("#predict-button").click()
    expect(page.get_by_text("Add an image first").first).to_be_visible()
    _no_error_badges(page)


def test_an_example_photo_shows_as_a_thumbnail_and_classifies(page):
    thumbnails = page.locator("img[src*='cat.jpg']")
    expect(thumbnails.first).to_be_visible()
    thumbnails.first.click()
    expect(page.locator("#predict-photo img").first).to_be_visible()
    pick(page, "predict-model", SMALL, type_it=True)
    page.locator("#predict-button").click()
    expect(page.locator("#predict-table")).to_contain_text("cat.jpg")
    expect(page.locator("#predict-label")).to_contain_text("%")


def test_several_files_are_previewed_and_each_gets_its_top_classes(page, tmp_path):
    files = []
    for name, colour in (("red.png", (220, 40, 40)), ("green.png", (30, 190, 60))):
        Image.new("RGB", (48, 48), colour).save(tmp_path / name)
        files.append(str(tmp_path / name))
    pick(page, "predict-model", SMALL, type_it=True)
    page.locator("#predict-images input[type=file]").set_input_files(files)
    expect(page.locator("img[src*='green.png']").first).to_be_visible()  # the upload's thumbnails
    page.locator("#predict-button").click()
    gallery = page.locator("#predict-gallery")
    expect(gallery).to_contain_text(re.compile(r"red\.png: class \d+ \d+%"))
    expect(gallery).to_contain_text(re.compile(r"green\.png: class \d+ \d+%"))
    _no_error_badges(page)


def test_the_webcam_classifies_frames_continuously_and_the_page_stays_responsive(page):
    pick(page, "predict-model", SMALL, type_it=True)
    page.get_by_text("Live camera: classify").click()
    camera = page.locator("#predict-camera")
    camera.get_by_text("Click to Access Webcam").click()
    camera.get_by_role("button", name="capture photo").click()  # streaming: "Record" starts the live feed
    info = page.locator("#predict-info")
    expect(info).to_contain_text("frames/s", timeout=20_000)
    seen = set()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(seen) < 3:
        seen.add(info.inner_text())
        page.wait_for_timeout(300)
    assert len(seen) >= 3, f"the live view did not keep updating: {seen}"
    # The page's event loop answers while the camera streams (a page stuck behind queued frames would take far
    # longer; the bound leaves room for a busy 2-core machine), and the tabs still switch.
    start = time.monotonic()
    page.evaluate("() => new Promise((done) => setTimeout(done, 0))")
    assert time.monotonic() - start < 3.0
    page.get_by_role("tab", name="Architecture").click()
    expect(page.locator("#arch-button")).to_be_visible()


def test_predict_still_classifies_after_a_failed_training_run(page, photo):
    page.get_by_role("tab", name="Fine-tune").click()
    page.locator("#train-load").click()
    expect(page.locator("#train-report")).to_contain_text("classes", timeout=60_000)
    # The suggested settings land after the report, with their line (the model field shows the example's model
    # before and after them): a person chooses once they are there.
    expect(page.locator("#train-suggestion")).to_contain_text("Suggested", timeout=60_000)
    expect(page.locator("#train-model input")).to_have_value(re.compile(example_config().model_name))
    pick(page, "train-model", "densenet121", type_it=True)
    expect(page.locator("#train-model input")).to_have_value(re.compile("^densenet121 "))
    _visible_radio(page, "ImageNet").check()  # offline: the ImageNet download fails and so does the run
    _visible_radio(page, "linear").check()
    page.locator("#train-start").click()
    expect(page.locator("#train-progress")).to_contain_text("Failed", timeout=60_000)
    page.get_by_role("tab", name="Predict").click()
    expect(page.locator("#predict-model input")).not_to_have_value("[object Object]")
    pick(page, "predict-model", SMALL, type_it=True)
    page.locator("#predict-photo input[type=file]").set_input_files(str(photo))
    page.locator("#predict-button").click()
    expect(page.locator("#predict-table")).to_contain_text(photo.name)
    _no_error_badges(page)


# ---------------------------------------------------------------------------------------------
# Through the API


def _save_digits_run(run):
    cfg = DenseNetConfig(growth_rate=4, block_config=(2, 2), num_init_features=8, stem="cifar", num_classes=4)
    checkpoints.save_checkpoint(
        run,
        DenseNet(cfg, generator=None),
        class_names=[f"digit_{i}" for i in range(4)],
        preprocessing=default_preprocessing(cfg),
    )
    return run


@pytest.fixture
def digits_run(app_server):
    """A small fine-tuned run with named classes, in the app's runs folder."""
    return _save_digits_run(app_server.weights_dir / "runs" / "digits-roundtrip")


def test_a_downloaded_checkpoint_zip_loads_back_with_the_same_labels_and_predictions(
    client, digits_run, photo, tmp_path
):
    label, _, _, _ = client.predict(
        [handle_file(str(photo))], f"run:{digits_run.name}", "ImageNet", None, 4, False, api_name="/predict"
    )
    archive = checkpoints.zip_checkpoint(digits_run, tmp_path)
    for upload in (archive, digits_run / checkpoints.CHECKPOINT_WEIGHTS):  # the zip, and the bare weights file
        again, _, table, info = client.predict(
            [handle_file(str(photo))], SMALL, "Checkpoint file", handle_file(str(upload)), 4, False, api_name="/predict"
        )
        assert again["label"].startswith("digit_")
        assert again == label, upload.name
        assert "checkpoint digits-roundtrip" in info or "checkpoint model" in info
        assert "/tmp" not in info and str(tmp_path) not in info  # names only, never server paths


def test_a_zip_without_a_checkpoint_is_refused_with_a_message_naming_only_the_file(client, photo, tmp_path):
    import zipfile

    bad = tmp_path / "notes.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("notes/readme.txt", "no weights here")
    with pytest.raises(Exception, match=r"notes\.zip: expected one model\.safetensors") as error:
        client.predict(
            [handle_file(str(photo))], SMALL, "Checkpoint file", handle_file(str(bad)), 3, False, api_name="/predict"
        )
    assert "/tmp" not in str(error.value)


def test_export_onnx_downloads_the_selected_models_bundle(client):
    update = client.predict(SMALL, "Random init", None, api_name="/export_onnx")
    bundle = update["value"]  # the file component is also made visible
    with zipfile.ZipFile(bundle) as zf:
        assert sorted(zf.namelist()) == ["README.md", "model.json", "model.onnx"]
        meta = json.loads(zf.read("model.json"))
    assert Path(bundle).name == f"{SMALL}.zip"
    assert meta["input"]["shape"] == ["batch", 3, 32, 32]
    assert len(meta["class_names"]) == 10


def test_checkpoint_from_upload_extracts_a_zip_once_and_finds_its_folder(tmp_path):
    archive = checkpoints.zip_checkpoint(_save_digits_run(tmp_path / "digits-roundtrip"), tmp_path)
    first = predict.checkpoint_from_upload(archive)
    assert first.name == "digits-roundtrip" and (first / checkpoints.CHECKPOINT_META).is_file()
    assert predict.checkpoint_from_upload(archive) == first  # the same upload, the same folder (and cache entry)


def test_a_bad_file_in_the_image_box_gets_its_reason_and_clears_the_last_results(page, photo, tmp_path):
    pick(page, "predict-model", SMALL, type_it=True)
    page.locator("#predict-photo input[type=file]").set_input_files(str(photo))
    page.locator("#predict-button").click()
    expect(page.locator("#predict-table")).to_contain_text("photo.png", timeout=60_000)
    fake = tmp_path / "text.jpg"
    fake.write_text("this is text, not a photo")
    page.locator("#predict-photo").get_by_role("button", name="Remove Image").click()
    page.locator("#predict-photo input[type=file]").set_input_files(str(fake))
    page.locator("#predict-button").click()
    expect(page.get_by_text("text.jpg: not an image").first).to_be_visible()
    expect(page.locator("#predict-table")).not_to_contain_text("photo.png")  # the last image's results are gone
    expect(page.locator("#predict-label")).not_to_contain_text("%")
    _no_error_badges(page)
