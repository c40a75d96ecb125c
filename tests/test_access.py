"""Access: the running app serves only its own uploads and outputs, and names of models and runs stay in their folders.

Plain HTTP requests and gradio_client calls against the real app (`python app.py`, loopback only).
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from gradio_client import handle_file
from helpers import upload

from densenet_demo.serving import predict

pytestmark = pytest.mark.timeout(300)

SECRET = "not-for-the-web"  # in a file outside every folder the app may serve


@pytest.fixture(scope="module")
def private_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("private") / "secret.txt"
    path.write_text(SECRET)
    return path


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _call(app_server, api_name: str, data: list) -> tuple[str, str]:
    """One call through Gradio's plain HTTP API: (the stream's last event name, its data)."""
    base = f"{app_server.url}gradio_api/call/{api_name}"
    request = urllib.request.Request(
        base, data=json.dumps({"data": data}).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        event_id = json.load(r)["event_id"]
    with urllib.request.urlopen(f"{base}/{event_id}", timeout=120) as r:
        lines = r.read().decode().strip().splitlines()
    event = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")][-1]
    return event, [line.removeprefix("data: ") for line in lines if line.startswith("data: ")][-1]


def _file_data(path: str) -> dict:
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


def _predict_args(files: list, model: str = "densenet_bc100_k12") -> list:
    return [files, model, "Random init", None, 3, False, "auto"]


def _assert_refused(app_server, api_name: str, data: list, named: str) -> None:
    """The call is refused before the handler runs, with a message that says what a file must be and echoes
    neither the path or address ``named`` nor anything read from it; the log has one INFO line, no traceback."""
    logged = len(app_server.log())
    event, body = _call(app_server, api_name, data)
    assert event == "error", body
    message = json.loads(body)["error"]
    assert "uploaded to this server" in message and "http(s):// URL" in message, message
    assert named not in message and SECRET not in body and "root:" not in body
    deadline = time.monotonic() + 10  # the log line may come just after the answer
    while f"/{api_name} refused: " not in app_server.log()[logged:]:
        assert time.monotonic() < deadline, f"no refusal logged:\n{app_server.log()[logged:]}"
        time.sleep(0.1)
    assert "Traceback" not in app_server.log()[logged:]


@pytest.mark.e2e
def test_the_settings_gradio_leaves_open_are_set(app_server):
    with urllib.request.urlopen(f"{app_server.url}config", timeout=30) as r:
        config = json.load(r)
    assert config["max_file_size"] == 200 * 1024 * 1024
    assert config["show_error"] is False
    assert config["enable_queue"] is True
    assert app_server.url.startswith("http://127.0.0.1:")


@pytest.mark.e2e
@pytest.mark.parametrize(
    "path",
    [
        "/etc/passwd",
        "../../../../../../etc/passwd",
        "%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "app.py",
        "densenet_demo/ui/app.py",
        "file:///etc/passwd",
        "http://127.0.0.1:1/",
    ],
)
def test_the_file_route_refuses_paths_outside_the_apps_folders(app_server, path):
    status, body = _get(f"{app_server.url}gradio_api/file={path}")
    assert status in (403, 404)
    assert b"root:" not in body and b"import" not in body


@pytest.mark.e2e
def test_the_file_route_refuses_a_private_file_and_the_weights_folder(app_server, private_file):
    app_server.weights_dir.mkdir(parents=True, exist_ok=True)
    (app_server.weights_dir / "note.txt").write_text(SECRET)
    for path in (private_file, app_server.weights_dir / "note.txt", app_server.weights_dir):
        status, body = _get(f"{app_server.url}gradio_api/file={urllib.parse.quote(str(path))}")
        assert status in (403, 404), path
        assert SECRET.encode() not in body


@pytest.mark.e2e
def test_an_upload_is_served_back_and_a_path_out_of_it_is_not(app_server, photo):
    served = upload(app_server, photo)
    status, body = _get(f"{app_server.url}gradio_api/file={served}")
    assert status == 200 and body == photo.read_bytes()  # the route works, so the refusals are refusals
    status, body = _get(f"{app_server.url}gradio_api/file={served}/../../../../etc/passwd")
    assert status in (403, 404) and b"root:" not in body


@pytest.mark.e2e
@pytest.mark.parametrize("server_path", ["/etc/passwd", "private"])
def test_a_request_naming_a_server_file_as_its_upload_is_refused(app_server, private_file, server_path):
    path = str(private_file) if server_path == "private" else server_path
    _assert_refused(app_server, "predict", _predict_args([_file_data(path)]), path)
    _assert_refused(app_server, "load_dataset", ["Zip file", _file_data(path), None, ""], path)


@pytest.mark.e2e
def test_a_request_naming_a_server_file_as_its_weights_is_refused(app_server, photo):
    # The image is uploaded as a browser would; the weights "file" is a path the client never uploaded.
    args = [[_file_data(upload(app_server, photo))], "densenet_bc100_k12", "Checkpoint file"]
    _assert_refused(app_server, "predict", [*args, _file_data("/etc/passwd"), 3, False, "auto"], "/etc/passwd")


@pytest.mark.e2e
def test_a_url_to_the_servers_own_loopback_is_not_fetched(app_server):
    inner = f"{app_server.url}gradio_api/file=/etc/passwd"
    # Gradio's guard against server-side request forgery refuses the address before anything is fetched.
    _assert_refused(app_server, "predict", _predict_args([_file_data(inner)]), inner)


@pytest.mark.e2e
@pytest.mark.parametrize("run_id", ["../../x", "..", "/etc", "a/../../b", "", ".hidden", "x\x00y"])
def test_run_ids_that_could_leave_the_runs_folder_are_rejected(client, photo, run_id):
    with pytest.raises(Exception, match="(?i)run id .* is not allowed"):
        client.predict(*_predict_args([handle_file(str(photo))], f"run:{run_id}"), api_name="/predict")


@pytest.mark.e2e
@pytest.mark.parametrize("model", ["/etc", "..", "/tmp", "densenet_demo", "weights"])
def test_a_model_named_by_a_server_path_is_rejected_without_probing_it(client, photo, model):
    with pytest.raises(Exception, match="Unknown model") as error:
        client.predict(*_predict_args([handle_file(str(photo))], model), api_name="/predict")
    assert "safetensors" not in str(error.value) and "/work" not in str(error.value)


@pytest.mark.e2e
def test_an_upload_over_the_size_limit_gets_413_and_is_not_kept(app_server):
    limit = 200 * 1024 * 1024
    boundary = "reliability-test-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="huge.zip"\r\n'
        "Content-Type: application/zip\r\n\r\n"
    ).encode()

    def body():
        yield head
        chunk = bytes(1 << 20)
        for _ in range(limit // len(chunk) + 2):
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    host, port = app_server.url.removeprefix("http://").strip("/").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        connection.request(
            "POST",
            "/gradio_api/upload",
            body=body(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            encode_chunked=True,
        )
        response = connection.getresponse()
        status, text = response.status, response.read().decode()
    finally:
        connection.close()
    assert status == 413
    assert "maximum allowed size" in text


@pytest.mark.e2e
def test_the_app_keeps_serving_after_the_refusals(app_server, client, photo):
    """Refusals of each kind in a row, each with its own message, then a plain request gets the model's answer."""
    image = [handle_file(str(photo))]
    with pytest.raises(Exception, match="(?i)run id .* is not allowed"):
        client.predict(*_predict_args(image, "run:../../x"), api_name="/predict")
    with pytest.raises(Exception, match="Unknown model"):
        client.predict(*_predict_args(image, "/etc"), api_name="/predict")
    _assert_refused(app_server, "predict", _predict_args([_file_data("/etc/passwd")]), "/etc/passwd")
    label, *_ = client.predict(*_predict_args(image), api_name="/predict")
    # Random init is seeded: the app's answer is the one this process computes for the same model and photo.
    (expected,) = predict.get_predictor("densenet_bc100_k12", "random").predict([photo], top_k=3)
    assert label["label"] == expected.labels[0][0]
    assert [c["label"] for c in label["confidences"]] == [name for name, _ in expected.labels]
    assert [c["confidence"] for c in label["confidences"]] == pytest.approx([p for _, p in expected.labels], abs=1e-4)


def test_a_launch_sweeps_session_folders_left_by_a_stopped_server_and_nothing_else(tmp_path):
    from densenet_demo.hosting.sessions import SESSION_PREFIX, STATE_TTL_S, sweep_stale_sessions

    old = time.time() - STATE_TTL_S - 60
    stale = tmp_path / f"{SESSION_PREFIX}stale"
    (stale / "zip_1").mkdir(parents=True)
    (stale / "zip_1" / "a.png").write_bytes(b"x")
    os.utime(stale, (old, old))
    fresh = tmp_path / f"{SESSION_PREFIX}fresh"
    fresh.mkdir()
    unrelated = tmp_path / "someone_elses_folder"
    unrelated.mkdir()
    os.utime(unrelated, (old, old))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep")
    link = tmp_path / f"{SESSION_PREFIX}link"
    link.symlink_to(elsewhere, target_is_directory=True)
    os.utime(link, (old, old), follow_symlinks=False)

    assert sweep_stale_sessions(tmp_path) == [stale]
    assert not stale.exists()
    assert fresh.is_dir() and unrelated.is_dir() and link.is_symlink()
    assert (elsewhere / "keep.txt").read_text() == "keep"


def test_the_example_dataset_is_made_once_per_version_and_never_taken_from_someone_else(tmp_path, monkeypatch):
    import tempfile

    from densenet_demo.data import examples

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(examples, "_example_folders", {})
    first = examples.example_dataset_folder("example", n_per_class=2, image_size=16)
    assert sorted(p.name for p in first.iterdir()) == sorted(examples.EXAMPLE_CLASSES)
    assert len(list(first.glob("*/*.png"))) == 8
    assert examples.example_dataset_folder("example", n_per_class=2, image_size=16) == first
    # Another generator version or other arguments: another folder, never the old one.
    monkeypatch.setattr(examples, "EXAMPLE_VERSION", examples.EXAMPLE_VERSION + 1)
    assert examples.example_dataset_folder("example", n_per_class=2, image_size=16) != first
    assert examples.example_dataset_folder("example", n_per_class=3, image_size=16) != first
    # A folder of the expected name that belongs to another user is not used.
    monkeypatch.setattr(examples, "EXAMPLE_VERSION", examples.EXAMPLE_VERSION - 1)
    monkeypatch.setattr(examples, "_example_folders", {})
    monkeypatch.setattr(examples.os, "getuid", lambda: os.stat(first).st_uid + 1)
    private = examples.example_dataset_folder("example", n_per_class=2, image_size=16)
    assert private != first and len(list(private.glob("*/*.png"))) == 8
