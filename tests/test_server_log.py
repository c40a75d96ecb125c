"""The server's log as its host reads it (``python app.py``'s stderr): expected user errors (bad images, wrong run
ids, refused settings) leave one INFO line each and no traceback, and every line of a request carries its
request id and its session's prefix, so one user's story can be followed."""

from __future__ import annotations

import re

import pytest
from gradio_client import Client, handle_file
from helpers import AppServer
from PIL import Image

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

MODEL = "densenet_bc100_k12"
TAGGED = re.compile(r" INFO \[([0-9a-f]{8}) s:([0-9a-f]{8})\] densenet_demo\.ui\.[a-z_]+: (/\w+) refused: (.*)$")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = AppServer.started(tmp_path_factory.mktemp("log_app"), own_tmp=True)
    yield server
    server.stop()


def _refused(call) -> str:
    with pytest.raises(Exception) as error:
        call()
    return str(error.value)


def test_expected_user_errors_leave_one_info_line_each_and_no_traceback(server, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("shopping list: milk, eggs")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    photo = tmp_path / "photo.png"
    Image.new("RGB", (40, 32), (20, 160, 40)).save(photo)
    alice, bob = Client(server.url, verbose=False), Client(server.url, verbose=False)
    alice.predict("Example dataset", None, None, "", api_name="/load_dataset")
    settings = [MODEL, "Random init", "linear", 1, None, 0, None, False, "Auto", "default", "default"]  # batch 0
    messages = {
        "/classify_image": _refused(lambda: alice.predict(handle_file(str(text)), MODEL, api_name="/classify_image")),
        "/predict": _refused(lambda: bob.predict([handle_file(str(empty))], MODEL, api_name="/predict")),
        "/delete_run": _refused(lambda: bob.predict("run:0123-not-a-run", api_name="/delete_run")),
        "/train": _refused(lambda: alice.predict(*settings, api_name="/train")),
    }
    assert "notes.jpg: not an image" in messages["/classify_image"] and "empty.png" in messages["/predict"]
    assert "Unknown model" in messages["/delete_run"] and "less than minimum value 1" in messages["/train"]
    label, *_ = bob.predict([handle_file(str(photo))], MODEL, api_name="/predict")  # and it keeps serving
    assert label["confidences"]

    log = server.log()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
    refusals = [m for m in map(TAGGED.search, log.splitlines()) if m]
    assert sorted(m.group(3) for m in refusals) == sorted(messages), log[-3000:]  # one line each, all tagged
    for match in refusals:
        assert match.group(4) in messages[match.group(3)]  # the line says what the client was told
    sessions = {m.group(3): m.group(2) for m in refusals}
    assert sessions["/classify_image"] == sessions["/train"] != sessions["/predict"] == sessions["/delete_run"]
    assert sessions["/classify_image"] == alice.session_hash[:8] and sessions["/predict"] == bob.session_hash[:8]
    assert len({m.group(1) for m in refusals}) == len(refusals)  # each request its own id
