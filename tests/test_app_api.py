"""The real app through gradio_client: /predict, /architecture, /train, and bad input."""

from __future__ import annotations

import time

import pytest
from gradio_client import Client, handle_file
from helpers import colour_zip

from densenet_demo.data.datasets import load_image_folder
from densenet_demo.training import advice

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def test_predict_returns_labels_with_probabilities(client, photo):
    label, gallery, table, info = client.predict(
        [handle_file(str(photo))], "densenet_bc100_k12", "Random init", None, 3, True, api_name="/predict"
    )
    confidences = label["confidences"]
    assert len(confidences) == 3
    assert sum(c["confidence"] for c in confidences) <= 1.0 + 1e-6
    assert all(0.0 <= c["confidence"] <= 1.0 for c in confidences)
    assert len(gallery) == 1  # one Grad-CAM overlay
    assert "photo.png" in str(table)
    assert "random init" in info.lower()


def test_the_onnxruntime_backend_answers_once_prepared_and_the_note_says_who_answered(client, photo):
    """The first request starts the export and PyTorch answers it; later ones are onnxruntime's, same classes."""
    args = ([handle_file(str(photo))], "densenet_fashion", "Random init", None, 3, False)
    label, _, _, info = client.predict(*args, "onnxruntime", api_name="/predict")
    assert "by PyTorch" in info and "ONNX Runtime is being prepared in the background" in info
    deadline = time.monotonic() + 180
    while "by ONNX Runtime" not in info and time.monotonic() < deadline:
        time.sleep(1)
        later, _, _, info = client.predict(*args, "onnxruntime", api_name="/predict")
    assert "by ONNX Runtime" in info and "being prepared" not in info
    assert [c["label"] for c in later["confidences"]] == [c["label"] for c in label["confidences"]]
    *_, info = client.predict(*args, "torch", api_name="/predict")
    assert "by PyTorch" in info and "ℹ️" not in info


def test_an_unknown_backend_gets_a_message_naming_the_choices(client, photo):
    with pytest.raises(Exception, match=r"backend takes one of 'auto', 'torch', 'onnxruntime', 'int8', not 'cuda'"):
        client.predict([handle_file(str(photo))], "densenet_fashion", "Random init", None, 3, False, "cuda",
                       api_name="/predict")  # fmt: skip


def test_architecture_for_preset_and_custom_config(client):
    summary, table, plot, _ = client.predict(
        "densenet121", 12, "16,16,16", 24, 4, 0.5, 0.0, "cifar", "3", None, "none", api_name="/architecture"
    )
    assert "7,978,856" in summary
    assert len(table["data"]) > 58  # stem + 58 dense layers + 3 transitions + head
    # The channel plot is one unbroken saw-tooth: each stage starts at the previous stage's last point, and
    # the first transition halves densenet121's 64 + 6·32 = 256 channels (θ = 0.5).
    points = plot["data"]
    for before, after in zip(points, points[1:], strict=False):
        if before[2] != after[2]:
            assert after[:2] == before[:2], (before, after)
    transition = [channels for _, channels, stage in points if stage == "transition 1"]
    assert transition == [256, 128]
    summary, table, plot, _ = client.predict(
        "custom", 6, "2,3", 12, 0, 1.0, 0.0, "cifar", "1", 16, "none", api_name="/architecture"
    )
    assert "Custom config: DenseNet**," in summary and "16×16×1" in summary
    assert len(table["data"]) >= 2 + 3


def test_invalid_custom_config_gives_a_message_and_the_app_keeps_serving(client, photo):
    with pytest.raises(Exception, match=r"block_config\[1\] must be an integer from 1"):
        client.predict("custom", 12, "2,0", 12, 0, 1.0, 0.0, "cifar", "3", None, "none", api_name="/architecture")
    with pytest.raises(Exception, match="Layers per block"):
        client.predict("custom", 12, "two,three", 12, 0, 1.0, 0.0, "cifar", "3", None, "none", api_name="/architecture")
    label, *_ = client.predict(
        [handle_file(str(photo))], "densenet_bc100_k12", "Random init", None, 1, False, api_name="/predict"
    )
    assert len(label["confidences"]) == 1


def test_non_image_upload_gives_a_message(client, tmp_path):
    fake = tmp_path / "notes.jpg"
    fake.write_text("this is not a picture")
    with pytest.raises(Exception, match="notes.jpg"):
        client.predict(
            [handle_file(str(fake))], "densenet_bc100_k12", "Random init", None, 3, False, api_name="/predict"
        )


def test_corrupt_zip_gives_a_message(client, tmp_path):
    bad = tmp_path / "data.zip"
    bad.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(Exception, match="(?i)zip"):
        client.predict("Zip file", handle_file(str(bad)), None, "", api_name="/load_dataset")


def test_train_streams_events_and_the_run_becomes_a_model(client, app_server):
    report = client.predict("Example dataset", None, None, "", api_name="/load_dataset")
    assert "800 images in 4 classes from the built-in example dataset" in report
    assert "circle: 200" in report and "/tmp" not in report
    runs_folder = app_server.weights_dir / "runs"
    before = set(runs_folder.iterdir()) if runs_folder.is_dir() else set()  # other tests' runs on this server
    job = client.submit(
        "densenet_fashion",
        "Random init",
        "scratch",
        1,
        None,
        32,
        None,
        False,
        "Auto",
        "default",
        "default",
        api_name="/train",
    )
    outputs = list(job)
    assert outputs, "no updates streamed"
    final = job.outputs()[-1]
    log = final[3]
    assert log.index("Started") < log.index("Epoch 1") < log.index("Finished")
    runs = sorted(set(runs_folder.iterdir()) - before)
    assert len(runs) == 1 and (runs[0] / "model.safetensors").is_file()
    predict_choices = final[7]
    assert f"run:{runs[0].name}" in str(predict_choices)


def test_suggest_settings_names_the_settings_for_a_loaded_dataset_as_the_command_line_does(client, tmp_path):
    archive = colour_zip(tmp_path / "colours", per_class=12)
    with pytest.raises(Exception, match="(?i)check a dataset first"):  # a fresh session has no dataset yet
        Client(client.src).predict(api_name="/suggest_settings")
    client.predict("Zip file", handle_file(str(archive)), None, "", api_name="/load_dataset")
    suggestion = client.predict(api_name="/suggest_settings")
    assert set(suggestion) >= {"model", "weights_choice", "mode", "image_size", "batch_size", "time_budget", "reason"}
    assert suggestion["mode"] == "scratch" and suggestion["weights_choice"] == "Random init"
    assert isinstance(suggestion["image_size"], int) and suggestion["reason"].startswith("small colour images")
    # The command line's suggestion for the same files (this process; the same machine) names the same settings.
    files = load_image_folder(tmp_path / "colours")[0]
    cli = advice.suggest_settings(files).settings()
    assert {k: suggestion[k] for k in ("model", "mode", "image_size", "batch_size")} == {
        k: cli[k] for k in ("model", "mode", "image_size", "batch_size")
    }
