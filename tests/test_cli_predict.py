"""python -m densenet_demo predict: results for the good images, errors on stderr, exit codes, JSON, Grad-CAM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import torch
from PIL import Image

from densenet_demo.cli.main import main
from densenet_demo.data.images import Preprocessing
from densenet_demo.model import DenseNet
from densenet_demo.weights import checkpoints

pytestmark = pytest.mark.usefixtures("empty_predictor_cache")


@pytest.fixture
def checkpoint(tmp_path, tiny_config) -> str:
    folder = tmp_path / "tiny-run"
    preprocessing = Preprocessing(32, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 3)
    checkpoints.save_checkpoint(
        folder, DenseNet(tiny_config), class_names=["cat", "dog", "eel"], preprocessing=preprocessing
    )
    return str(folder)


@pytest.fixture
def images(tmp_path) -> list[str]:
    paths = []
    for i, color in enumerate([(255, 0, 0), (0, 128, 255)]):
        path = tmp_path / f"good{i}.png"
        Image.new("RGB", (40, 30), color).save(path)
        paths.append(str(path))
    return paths


def test_one_bad_image_among_good_ones(checkpoint, images, tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    code = main(["predict", images[0], str(bad), images[1], "--model", checkpoint, "--top-k", "2"])
    out, err = capsys.readouterr()
    assert code == 1
    assert images[0] in out and images[1] in out and "broken.jpg" not in out
    assert "broken.jpg" in err and "error:" in err
    assert sum(line.strip().endswith(("cat", "dog", "eel")) for line in out.splitlines()) == 4  # 2 images x top-2


def test_all_good_images_exit_0(checkpoint, images, capsys):
    assert main(["predict", *images, "--model", checkpoint]) == 0
    assert capsys.readouterr().err == ""


def test_json_prints_one_object_per_image(checkpoint, images, capsys):
    assert main(["predict", *images, "--model", checkpoint, "--json", "--top-k", "2"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["image"] for r in records] == images
    for record in records:
        assert set(record) == {"image", "model", "weights", "top_k", "latency_ms", "backend"}
        assert len(record["top_k"]) == 2 and set(record["top_k"][0]) == {"label", "probability"}
        assert record["top_k"][0]["probability"] >= record["top_k"][1]["probability"]
        assert record["weights"] == "checkpoint tiny-run" and record["latency_ms"] > 0 and record["backend"] == "torch"


def test_json_reports_a_bad_image_as_an_error_object(checkpoint, images, tmp_path, capsys):
    bad = tmp_path / "empty.png"
    bad.write_bytes(b"")
    assert main(["predict", str(bad), images[0], "--model", checkpoint, "--json"]) == 1
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert records[0]["image"] == str(bad) and "empty" in records[0]["error"]
    assert records[1]["image"] == images[0] and "top_k" in records[1]


def test_cam_writes_a_png(checkpoint, images, tmp_path, capsys):
    out = tmp_path / "cam.png"
    assert main(["predict", images[0], "--model", checkpoint, "--cam", str(out)]) == 0
    with Image.open(out) as cam:
        assert cam.format == "PNG" and cam.size == (256, 256) and cam.mode == "RGB"  # enlarged: OVERLAY_MIN_SIDE
    assert "Grad-CAM" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["predict", "x.png", "--model", "densenet122"],
        ["predict", "x.png", "--model", "densenet40_k12", "--top-k", "0"],
        ["predict", "x.png", "--model", "densenet40_k12", "--weights", "missing.pth"],
        ["predict", "x.png", "--model", "densenet40_k12", "--weights", "imagenet"],
    ],
    ids=["unknown-model", "top-k-0", "missing-weights-file", "imagenet-for-cifar"],
)
def test_bad_arguments_exit_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_unparseable_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "x.png", "--model", "densenet40_k12", "--top-k", "five"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "x.png"])  # no --model
    assert exit_info.value.code == 2


def test_a_pickle_with_code_is_refused_and_never_runs(tmp_path, capsys):
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('ran')",))

    evil = tmp_path / "weights.pth"
    torch.save({"model": Payload()}, evil)
    assert main(["predict", "x.png", "--model", "densenet40_k12", "--weights", str(evil)]) == 2
    assert "refused" in capsys.readouterr().err
    assert not marker.exists()


def test_offline_imagenet_warns_and_still_classifies(images, monkeypatch, capsys):
    def offline(request, *args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    assert main(["predict", images[0], "--model", "densenet121", "--top-k", "1"]) == 0
    out, err = capsys.readouterr()
    assert "RANDOM weights" in err and "densenet121-a639ec97.pth" in err
    assert images[0] in out and "random init" in out


def test_the_backend_choices_are_the_engines(capsys):
    from densenet_demo.cli.predict import BACKENDS
    from densenet_demo.serving.backends import BACKENDS as ENGINE_BACKENDS

    assert BACKENDS == ENGINE_BACKENDS


def test_auto_without_a_cached_graph_answers_from_pytorch_and_exports_nothing(
    checkpoint, images, monkeypatch, capsys, _private_weights_dir
):
    monkeypatch.delenv("DENSENET_DEMO_AUTO_BACKEND")
    assert main(["predict", *images, "--model", checkpoint, "--json"]) == 0
    out, err = capsys.readouterr()
    assert {json.loads(line)["backend"] for line in out.splitlines()} == {"torch"} and err == ""
    assert not (_private_weights_dir / "onnx").exists()


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_backend_onnxruntime_caches_its_graph_and_a_later_auto_run_uses_it(checkpoint, images, tmp_path):
    """Three one-shot processes: the first exports and caches, the next two load; all agree with PyTorch."""
    env = {k: v for k, v in os.environ.items() if k != "DENSENET_DEMO_AUTO_BACKEND"}
    env["DENSENET_DEMO_WEIGHTS"] = str(tmp_path / "weights")

    def predict_with(backend: str) -> tuple[list[dict], str]:
        argv = [sys.executable, "-m", "densenet_demo", "predict", *images, "--model", checkpoint, "--json"]
        done = subprocess.run(
            [*argv, "--backend", backend], capture_output=True, text=True, env=env, timeout=240,
            cwd=Path(__file__).resolve().parent.parent,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()], done.stderr

    first, err = predict_with("onnxruntime")
    assert "preparing onnxruntime" in err and {r["backend"] for r in first} == {"onnxruntime"}
    assert len(list((tmp_path / "weights" / "onnx").glob("*.onnx"))) == 1
    later, err = predict_with("auto")
    assert err == "" and {r["backend"] for r in later} == {"onnxruntime"}
    reference, _ = predict_with("torch")
    for got, expected in zip(later, reference, strict=True):
        assert [t["label"] for t in got["top_k"]] == [t["label"] for t in expected["top_k"]]
        for a, b in zip(got["top_k"], expected["top_k"], strict=True):
            assert abs(a["probability"] - b["probability"]) < 1e-4
