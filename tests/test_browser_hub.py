"""The Hub in the page, in headless Chromium, against the stand-in Hub: train, sign in (Gradio's local sign-in, which
stands for this machine's account), push, load the model back in the Predict tab by its name, and get the same
labels and probabilities as the run itself."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from helpers import AppServer
from hub_helpers import colour_images
from hub_standin import HubStandIn
from playwright.sync_api import expect

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def standin():
    with HubStandIn() as server:
        server.add_user("alice", "alice-token")
        yield server


@pytest.fixture(scope="module")
def hub_app(tmp_path_factory, standin):
    """The app on a machine signed in to the (stand-in) Hub as alice: Gradio then mocks the sign-in with her."""
    root = tmp_path_factory.mktemp("hub-app")
    env = {
        "HF_ENDPOINT": standin.url,
        "HF_TOKEN": "alice-token",
        "HF_HOME": str(root / "hf-home"),
        "HF_HUB_CACHE": str(root / "hf-cache"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    server = AppServer.started(root, own_tmp=True, env=env)
    yield server
    server.stop()


def _colour_zip(folder: Path) -> Path:
    """Three classes of eight small colour images, as a zip: a run of one epoch takes seconds."""
    archive = folder.with_suffix(".zip")
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(colour_images(folder, per_class=8).rglob("*.png")):
            z.write(path, path.relative_to(folder))
    return archive


def _train_one_epoch(page, data: Path) -> str:
    page.get_by_role("tab", name="Fine-tune").click()
    page.get_by_label("Zip file").check()
    page.locator("#train-zip input[type=file]").set_input_files(str(data))
    epochs = page.locator("#train-epochs input[type=number]")
    epochs.fill("1")
    epochs.press("Enter")
    size = page.get_by_label("Image size (0: the model's own)")
    size.fill("32")
    size.press("Enter")
    page.locator("#train-start").click()
    status = page.locator("#train-status")
    expect(status).to_contain_text("Saved as run ", timeout=240_000)
    return status.inner_text().split("Saved as run ")[1].split()[0].strip(".,")


def test_push_from_the_page_after_signing_in_and_load_it_back_in_predict(browser, hub_app, standin, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    # localhost: Chromium keeps the sign-in's cookie (Secure, SameSite=None, as on a Space) for it over plain http.
    page.goto(hub_app.url.replace("127.0.0.1", "localhost"))
    run_id = _train_one_epoch(page, _colour_zip(tmp_path / "colours"))

    panel = page.locator("#hub-push")
    panel.get_by_text("Push to the Hugging Face Hub").first.click()
    page.wait_for_url(re.compile(r"handover="))  # the run's handover code, for the sign-in's page reload
    first_code = page.url.split("handover=")[1]
    page.locator("#hub-push-repo textarea, #hub-push-repo input").first.fill("colours")
    page.locator("#hub-push-button").click()
    expect(page.get_by_text("Sign in with Hugging Face first")).to_be_visible()
    assert standin.repos == {}

    back = re.compile(r"^http://localhost:\d+/\?handover=")  # the page again, after /login/huggingface and back
    with page.expect_request(lambda r: r.is_navigation_request() and back.match(r.url), timeout=120_000):
        page.locator("#hub-login").click()  # Gradio's local sign-in: away and back, as on a Space
    page.wait_for_load_state()
    page.get_by_role("tab", name="Fine-tune").click()
    panel.get_by_text("Push to the Hugging Face Hub").first.click()
    expect(page.locator("#hub-login")).to_contain_text("Logout (alice)", timeout=120_000)
    expect(page.locator("#hub-push-result")).to_contain_text(f"Run {run_id} is still here after signing in")
    assert first_code not in page.url  # used once; opening the panel again offers the run anew
    page.locator("#hub-push-repo textarea, #hub-push-repo input").first.fill("colours")
    page.locator("#hub-push-button").click()
    expect(page.locator("#hub-push-result")).to_contain_text(
        "Created alice/colours (private) as alice", timeout=120_000
    )
    pushed = json.loads(standin.repos["alice/colours"].commits[-1][1]["config.json"])
    assert pushed["densenet_demo"]["run_id"] == run_id and standin.repos["alice/colours"].private is True
    assert standin.tokens_used("/commit/") == {"alice-token"}  # locally: this machine's own sign-in

    page.get_by_role("tab", name="Predict").click()
    page.get_by_role("button", name="Load from the Hugging Face Hub").click()
    page.locator("#hub-repo textarea, #hub-repo input").first.fill("alice/colours")
    page.locator("#hub-load").click()
    expect(page.locator("#hub-note")).to_contain_text("Loaded alice/colours", timeout=120_000)
    expect(page.locator("#predict-model input")).to_have_value("Hub: alice/colours · 3 classes")
    image = sorted((tmp_path / "colours").rglob("*.png"))[0]
    page.locator("#predict-photo input[type=file]").set_input_files(str(image))
    page.locator("#predict-button").click()
    expect(page.locator("#predict-info")).to_contain_text("(Hub alice/colours @ ", timeout=120_000)
    page.close()

    # The same labels and probabilities as the run itself, read through the API of one client session.
    client = Client(hub_app.url, verbose=False)
    spec, note = client.predict("alice/colours", api_name="/load_hub_model")
    assert spec.startswith("hf-hub:alice/colours@") and "Loaded **alice/colours**" in note
    images = [handle_file(str(p)) for p in sorted((tmp_path / "colours").rglob("*.png"))[::4]]
    from_hub = client.predict(images, spec, "ImageNet", None, 3, False, api_name="/predict")
    from_run = client.predict(images, f"run:{run_id}", "ImageNet", None, 3, False, api_name="/predict")
    assert from_hub[0] == from_run[0] and len(from_hub[0]["confidences"]) == 3  # the first image's top classes
    assert from_hub[2]["data"] and [row[:3] for row in from_hub[2]["data"]] == [row[:3] for row in from_run[2]["data"]]
