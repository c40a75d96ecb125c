"""Every public endpoint, fuzzed: hostile values in place of each parameter (wrong types, None, empty and huge
strings, negative and huge numbers, unicode, nested lists, unknown choices, server paths and URLs where a file
is expected). Each answer is a result or a clear message (never a traceback, a server path, the generic "upstream
Gradio app has raised an exception", or the app's own failure message), the server keeps serving, and nothing is
written outside its folders.

Seeded and bounded (hypothesis, derandomized, no example database): one app server of its own, plain HTTP calls
(``/gradio_api/call/<endpoint>``) so that any JSON can be sent.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from helpers import AppServer, upload
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]

MARKER = f"fuzzmark{uuid.uuid4().hex[:8]}"  # in every path the fuzz names: no file so named may appear anywhere
PER_ENDPOINT = 12  # calls with hostile values per endpoint (fewer where it has few parameters): about 130 in all
TRAINING = {"train", "continue_training"}  # they stream; a training that starts is stopped at once


class Fuzzed:
    """The server, a session with the example dataset loaded (so that training settings are reached), the
    endpoints' parameters and a valid call for each."""

    def __init__(self, server: AppServer, root: Path) -> None:
        self.server = server
        self.root = root
        self.session = uuid.uuid4().hex[:11]
        self.outcomes: list[tuple[str, str, float]] = []  # endpoint, last event, seconds
        with urllib.request.urlopen(f"{server.url}gradio_api/info", timeout=30) as r:
            self.endpoints = {
                name.lstrip("/"): info["parameters"] for name, info in json.load(r)["named_endpoints"].items()
            }
        photo = root / "photo.png"
        Image.new("RGB", (40, 32), (200, 40, 40)).save(photo)
        self.photo = {"path": upload(server, photo), "meta": {"_type": "gradio.FileData"}}
        event, data = call(server, "load_dataset", ["Example dataset", None, None, ""], self.session)
        assert event == "complete", data

    def valid(self, endpoint: str) -> list:
        """A valid call: each parameter's default, the photo where a file is required, small models."""
        values = []
        for p in self.endpoints[endpoint]:
            if not p["parameter_has_default"]:
                value = [self.photo] if p["parameter_name"] == "files" else self.photo
            else:
                value = p["parameter_default"]
            if p["parameter_name"] == "model" and value == "densenet121":
                value = "densenet_bc100_k12"  # a model that needs no download
            values.append(value)
        return values


def _post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, {"detail": e.read().decode(errors="replace")}


def call(server: AppServer, endpoint: str, data: list, session: str) -> tuple[str, str]:
    """One call: (the last event, its data as text). A training that starts is stopped, and its end awaited."""
    status, answer = _post(f"{server.url}gradio_api/call/{endpoint}", {"data": data, "session_hash": session})
    if status != 200:
        return f"http {status}", answer["detail"]
    last = ("none", "")
    stopped = False
    with urllib.request.urlopen(f"{server.url}gradio_api/call/{endpoint}/{answer['event_id']}", timeout=180) as r:
        event = None
        for raw in r:
            line = raw.decode(errors="replace").rstrip("\n")
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event not in (None, "heartbeat"):
                last = (event, line.removeprefix("data: "))
                if event == "generating" and endpoint in TRAINING and not stopped:
                    _post(f"{server.url}gradio_api/run/stop", {"data": [None], "session_hash": session})
                    stopped = True
    return last


SERVER_TEXT = ("Traceback", "upstream Gradio app", "failed on the server", 'File "', "site-packages", "/tmp/", "/root")

SPECIAL = [
    "",
    " ",
    "\x00",
    "😀" * 20,
    "ünïcødé ñame",
    "x" * 100_000,
    "-1",
    "1e309",
    "NaN",
    "densenet121\n",
    "run:",
    f"run:../../{MARKER}",
    f"run:{MARKER}",
    f"../../{MARKER}",
    f"/tmp/{MARKER}/x.png",
    "/etc/passwd",
    "file:///etc/passwd",
    "http://127.0.0.1:1/x.png",
    "https://example.invalid/cat.jpg",
    "Zip file",
    "custom",
]


def _file_record(path: str) -> dict:
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


FILES = [
    _file_record("/etc/passwd"),
    _file_record(f"../../{MARKER}.png"),
    _file_record(f"/tmp/{MARKER}.zip"),
    {"url": "http://127.0.0.1:1/x.png", "path": None, "meta": {"_type": "gradio.FileData"}},
    {"url": "https://example.invalid/cat.jpg", "meta": {"_type": "gradio.FileData"}},
    {"path": "photo.png"},
    [_file_record("/etc/passwd")],
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.sampled_from([0, -1, 10**9, 10**30, 1e-300, -1e308]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(SPECIAL),
)
nested = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
hostile = st.one_of(scalars, nested, st.sampled_from(FILES))


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    server = AppServer.started(root / "app", own_tmp=True)
    try:
        yield Fuzzed(server, root)
    finally:
        server.stop()


def _check_answer(fuzzed: Fuzzed, endpoint: str, event: str, data: str) -> None:
    log = lambda: fuzzed.server.log()[-4000:]  # noqa: E731  (read only when an assertion fails)
    assert event in ("complete", "error") or event.startswith("http 4"), (endpoint, event, data[:300], log())
    if event != "complete":
        message = json.loads(data).get("error") if event == "error" and data.startswith("{") else data
        assert isinstance(message, str) and message.strip(), (endpoint, event, data[:300], log())
        for text in SERVER_TEXT:
            assert text not in message, (endpoint, message[:300], log())


@settings(
    max_examples=PER_ENDPOINT,
    deadline=None,
    database=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
@given(data=st.data())
def _fuzz(fuzzed: Fuzzed, endpoint: str, data: st.DataObject) -> None:
    values = fuzzed.valid(endpoint)
    if values:
        how_many = data.draw(st.integers(1, min(2, len(values))), label="hostile values")
        for index in data.draw(st.lists(st.integers(0, len(values) - 1), min_size=how_many, max_size=how_many)):
            values[index] = data.draw(hostile, label=fuzzed.endpoints[endpoint][index]["parameter_name"])
    began = time.monotonic()
    event, answer = call(fuzzed.server, endpoint, values, fuzzed.session)
    _check_answer(fuzzed, endpoint, event, answer)
    fuzzed.outcomes.append((endpoint, event, time.monotonic() - began))


def test_every_endpoint_answers_hostile_values_with_a_result_or_a_clear_message(fuzzed):
    assert {"predict", "classify_image", "train", "load_dataset", "architecture"} <= set(fuzzed.endpoints)
    start = time.monotonic()
    for endpoint in sorted(fuzzed.endpoints):
        _fuzz(fuzzed, endpoint)
    elapsed = time.monotonic() - start
    assert {endpoint for endpoint, *_ in fuzzed.outcomes} == set(fuzzed.endpoints)
    assert {"complete", "error"} <= {event for _, event, _ in fuzzed.outcomes}  # some values are harmless
    log = fuzzed.server.log()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
    # The server still serves, and answers as before.
    event, answer = call(fuzzed.server, "classify_image", fuzzed.valid("classify_image"), fuzzed.session)
    assert event == "complete" and "densenet_bc100_k12" in answer
    assert elapsed < 300
    # Nothing named by the fuzz was written: not in the server's folders, the checkout, the folders above it, /tmp.
    checkout = Path(__file__).resolve().parent.parent
    found = [*fuzzed.root.rglob(f"*{MARKER}*"), *checkout.rglob(f"*{MARKER}*")]
    for folder in (Path("/tmp"), *checkout.parents[:3]):
        found += folder.glob(f"*{MARKER}*")
    assert found == []


def test_wrong_numbers_of_values_are_answered_with_the_parameters(fuzzed):
    for values in ([], [None] * 40, ["x"]):
        event, answer = call(fuzzed.server, "architecture_table", values, fuzzed.session)
        assert event == "error" and "takes 2 value(s), in this order: model, image_size" in answer, answer
    event, answer = call(fuzzed.server, "predict", [[fuzzed.photo], "densenet_bc100_k12", "nope"], fuzzed.session)
    assert event == "error" and "files, model, weights_choice, weights_file, top_k, show_cam" in answer, answer
