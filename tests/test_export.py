"""ONNX export: onnxruntime reproduces PyTorch for every preset family and a fine-tuned run; the bundle's JSON
and README snippet are right; bad requests get one line and exit code 2; a failed check writes nothing."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import TINY_CONFIG, colour_images, trained_looking
from PIL import Image

from densenet_demo.cli.main import main
from densenet_demo.config import DenseNetConfig
from densenet_demo.data.datasets import load_image_folder
from densenet_demo.data.images import Preprocessing, default_preprocessing
from densenet_demo.model import DenseNet
from densenet_demo.serving import export, onnx_graph, predict
from densenet_demo.training.config import TrainConfig
from densenet_demo.training.events import Finished
from densenet_demo.training.loop import Trainer
from densenet_demo.weights import checkpoints

REPO = Path(__file__).resolve().parent.parent
TINY_BC = TINY_CONFIG
# ImageNet stem (7x7/2 conv + max-pool, 256->224-style resize and crop) at a size that exports in seconds; one
# input channel, so that a grayscale model's export is checked in the fast loop too.
SMALL_IMAGENET_STEM = DenseNetConfig(
    growth_rate=8, block_config=(2, 2, 2), num_init_features=16, bn_size=4, compression=0.5, stem="imagenet",
    num_classes=4, in_channels=1,
)  # fmt: skip


@dataclass
class Exported:
    onnx_path: Path
    metadata: dict  # the bundle's model.json
    predictor: predict.Predictor
    cli_output: str = ""

    @classmethod
    def of(cls, result: export.ExportResult, predictor: predict.Predictor) -> Exported:
        return cls(result.onnx_path, result.metadata, predictor)


def _checkpoint(folder: Path, cfg: DenseNetConfig, preprocessing: Preprocessing) -> Path:
    names = [f"kind {chr(97 + i)}" for i in range(cfg.num_classes)]
    checkpoints.save_checkpoint(folder, trained_looking(DenseNet(cfg)), class_names=names, preprocessing=preprocessing)
    return folder


@pytest.fixture(scope="module")
def cli_exported(tmp_path_factory) -> Exported:
    """A checkpoint folder exported with ``python -m densenet_demo export`` (in process, stdout captured)."""
    root = tmp_path_factory.mktemp("cli")
    # memory_efficient on: the export must switch it off on its own copy and leave the shared model alone.
    cfg = TINY_BC.replace(memory_efficient=True)
    folder = _checkpoint(root / "tiny-bc", cfg, Preprocessing(32, 36, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)))
    out = root / "out" / "tiny.onnx"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["export", str(folder), "--format", "onnx", "--out", str(out)]) == 0
    metadata = json.loads(zipfile.ZipFile(out.with_suffix(".zip")).read("model.json"))
    return Exported(out, metadata, predict.get_predictor(str(folder)), stdout.getvalue())


def _export_fine_tuned_run(root: Path) -> Exported:
    start = _checkpoint(root / "start", TINY_BC, default_preprocessing(TINY_BC, 24))
    files, _ = load_image_folder(colour_images(root / "colours", per_class=4))
    config = TrainConfig(
        model=str(start), mode="finetune", epochs=1, batch_size=6, image_size=24, val_fraction=0.25, device="cpu"
    )
    *_, end = Trainer(config, files).run()
    assert isinstance(end, Finished), end
    run = f"run:{Path(end.checkpoint_dir).name}"
    return Exported.of(export.export_onnx(run, out=root / "out" / "run.onnx"), predict.get_predictor(run))


def _export_preset(root: Path, name: str) -> Exported:
    result = export.export_onnx(name, "random", out=root / "out" / f"{name}.onnx")
    return Exported.of(result, predict.get_predictor(name, "random"))


def _export_small_imagenet_stem(root: Path) -> Exported:
    folder = _checkpoint(root / "imagenet-stem", SMALL_IMAGENET_STEM, default_preprocessing(SMALL_IMAGENET_STEM, 64))
    predictor = predict.get_predictor(str(folder))
    return Exported.of(export.export_onnx(predictor, out=root / "out" / "stem.onnx"), predictor)


FAMILIES = {
    "grayscale-imagenet-stem": _export_small_imagenet_stem,
    "cifar-preset": lambda root: _export_preset(root, "densenet40_k12"),
    "grayscale-preset": lambda root: _export_preset(root, "densenet_fashion"),
    "fine-tuned-run": _export_fine_tuned_run,
}


# densenet40_k12 (36 dense layers) and densenet_fashion (16) take seconds each to export: with the end-to-end
# tests; the small checkpoints cover both stems and both input kinds (RGB, grayscale) in the fast loop.
SLOW = {"cifar-preset", "grayscale-preset"}


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(name, marks=[pytest.mark.e2e] if name in SLOW else [])
        for name in ["checkpoint-via-cli", *FAMILIES]
    ],
)
def exported(request, tmp_path_factory):
    """One export per family, shared by the tests below; the runs folder lives in this fixture's tmp dir."""
    if request.param == "checkpoint-via-cli":
        yield request.getfixturevalue("cli_exported")
        return
    root = tmp_path_factory.mktemp(request.param)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DENSENET_DEMO_WEIGHTS", str(root / "weights"))
        yield FAMILIES[request.param](root)


def _images(n: int, folder: Path) -> list[Path]:
    """Generated non-square images (smooth colour fields), so resize and crop both do something."""
    rng = np.random.default_rng(n)
    paths = []
    for i in range(n):
        small = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
        path = folder / f"image{n}-{i}.png"
        Image.fromarray(small).resize((70 + 9 * i, 50), Image.BICUBIC).save(path)
        paths.append(path)
    return paths


@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_gives_pytorchs_logits(exported, batch, tmp_path):
    p = exported.predictor
    x = torch.stack([p.preprocess(path) for path in _images(batch, tmp_path)])
    with torch.no_grad():
        expected = p.model(x).numpy()
    session = ort.InferenceSession(str(exported.onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    assert got.shape == (batch, p.cfg.num_classes)
    assert np.abs(got - expected).max() <= 1e-4 * max(1.0, float(np.abs(expected).max()))


def test_the_onnx_file_is_self_contained_with_a_dynamic_batch(exported):
    path = exported.onnx_path
    assert sorted(f.name for f in path.parent.iterdir()) == sorted([path.name, path.with_suffix(".zip").name])
    proto = onnx.load(str(path), load_external_data=False)
    assert proto.graph.initializer and all(t.data_location == onnx.TensorProto.DEFAULT for t in proto.graph.initializer)
    batch_dim, *rest = proto.graph.input[0].type.tensor_type.shape.dim
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")
    size = exported.predictor.preprocessing.image_size
    assert [d.dim_value for d in rest] == [exported.predictor.cfg.in_channels, size, size]
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    assert opset == exported.metadata["opset"] >= export.MIN_OPSET


def test_each_transition_pools_before_its_convolution_in_the_graph(exported):
    proto = onnx.load(str(exported.onnx_path), load_external_data=False)
    consumers = {name: node.op_type for node in proto.graph.node for name in node.input}
    pools = [node for node in proto.graph.node if node.op_type == "AveragePool"]
    assert len(pools) == len(exported.predictor.cfg.block_config) - 1  # one per transition (the head averages apart)
    assert all(consumers[node.output[0]] == "Conv" for node in pools)


@pytest.mark.parametrize("size", [32, 27])  # odd: both orders drop the last row and column
def test_pooling_before_a_transitions_convolution_keeps_the_models_function(size):
    model = trained_looking(DenseNet(TINY_BC.replace(block_config=(2, 2, 2)))).eval()
    fast = onnx_graph.pool_first(model)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.allclose(fast(x), model(x), atol=1e-5)
    order = [[name for name, _ in net.features.transition1.named_children()] for net in (model, fast)]
    assert order == [["norm", "relu", "conv", "pool"], ["norm", "relu", "pool", "conv"]]  # the model is untouched
    assert fast.state_dict().keys() == model.state_dict().keys()


def test_the_bundle_holds_the_model_its_json_and_a_readme(exported):
    p = exported.predictor
    with zipfile.ZipFile(exported.onnx_path.with_suffix(".zip")) as z:
        assert sorted(z.namelist()) == ["README.md", "model.json", "model.onnx"]
        assert z.read("model.onnx") == exported.onnx_path.read_bytes()
        meta = json.loads(z.read("model.json"))
        readme = z.read("README.md").decode()
    assert meta == exported.metadata
    assert meta["class_names"] == list(p.class_names)
    assert meta["preprocessing"] == json.loads(json.dumps(p.preprocessing.to_dict()))
    assert meta["input"]["shape"] == [
        "batch",
        p.cfg.in_channels,
        p.preprocessing.image_size,
        p.preprocessing.image_size,
    ]
    assert meta["input"]["color_mode"] == p.preprocessing.mode
    assert meta["output"]["shape"] == ["batch", len(p.class_names)]
    assert (meta["model"], meta["weights"]) == (p.model_key, p.weights_label)
    assert meta["check"]["max_abs_logit_diff"] <= meta["check"]["tolerance"]
    assert meta["config"] == p.cfg.replace(memory_efficient=False).to_dict()
    assert export.SNIPPET in readme and f"opset {meta['opset']}" in readme


def test_the_shared_model_keeps_its_memory_efficient_flag(cli_exported):
    """Export works on a copy: a cached predictor's model is never changed (here: a memory-efficient one)."""
    layers = [m for m in cli_exported.predictor.model.modules() if hasattr(m, "memory_efficient")]
    assert layers and all(m.memory_efficient for m in layers) and cli_exported.predictor.cfg.memory_efficient
    assert cli_exported.metadata["config"]["memory_efficient"] is False


def test_the_cli_prints_the_path_opset_check_and_size(cli_exported):
    lines = cli_exported.cli_output.splitlines()
    path, size = cli_exported.onnx_path, cli_exported.onnx_path.stat().st_size
    assert (
        lines[0] == f"{path}  ({size / 2**20:.2f} MiB, opset {cli_exported.metadata['opset']}, batch dimension dynamic)"
    )
    assert lines[1].startswith(f"{path.with_suffix('.zip')}  (")
    check = cli_exported.metadata["check"]
    expected = f"max |Δlogit| {check['max_abs_logit_diff']:.2e} (allowed {check['tolerance']:.1e}) at batch 3 and 1"
    assert lines[2].startswith(f"check: onnxruntime vs PyTorch {expected}")


@pytest.mark.e2e
def test_the_readme_snippet_prints_the_same_top1_as_predict(exported, tmp_path):
    with zipfile.ZipFile(exported.onnx_path.with_suffix(".zip")) as z:
        z.extractall(tmp_path)
    code = re.search(r"```python\n(.*?)```", (tmp_path / "README.md").read_text(), re.S).group(1)
    (tmp_path / "classify.py").write_text(code)
    (image,) = _images(1, tmp_path)
    run = subprocess.run(
        [sys.executable, "classify.py", str(image)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    first = run.stdout.splitlines()[0]
    percent, label = first.split("  ", 1)
    (expected,) = exported.predictor.predict([image], top_k=1)
    assert label == expected.labels[0][0]
    assert abs(float(percent.rstrip("%")) - 100 * expected.labels[0][1]) < 0.01


# ---------------------------------------------------------------------------------------------
# Bad requests and failed checks


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run:no-such-run"], "no-such-run"),
        (["densenet_nope"], "unknown preset 'densenet_nope'"),
        (["densenet_fashion", "--format", "tflite"], "unknown export format 'tflite'"),
        (["densenet_fashion", "--opset", "9"], "opset must be"),
    ],
)
def test_a_bad_request_gets_one_line_and_exit_code_2(args, message, tmp_path, capsys):
    code = main(["export", *args, "--out", str(tmp_path / "x.onnx")])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_an_output_name_without_onnx_is_refused(tmp_path, capsys):
    assert main(["export", "densenet_fashion", "--out", str(tmp_path / "model.zip")]) == 2
    assert "must end in .onnx" in capsys.readouterr().err


@pytest.mark.e2e
def test_the_cli_exits_2_with_one_line_for_an_unknown_run_and_format(tmp_path):
    env_run = [sys.executable, "-m", "densenet_demo", "export", "--out", str(tmp_path / "x.onnx")]
    for extra in (["run:no-such-run"], ["densenet_fashion", "--format", "tflite"]):
        run = subprocess.run([*env_run, *extra], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert run.returncode == 2, run.stderr
        assert run.stdout == "" and len(run.stderr.strip().splitlines()) == 1 and run.stderr.startswith("error: ")
    assert list(tmp_path.iterdir()) == []


def test_a_check_that_fails_writes_nothing_and_keeps_an_older_export(tmp_path, monkeypatch):
    folder = _checkpoint(tmp_path / "tiny", TINY_BC, default_preprocessing(TINY_BC))
    out = tmp_path / "out" / "tiny.onnx"
    out.parent.mkdir()
    out.write_bytes(b"an older export")
    real_run = ort.InferenceSession.run
    # A runtime whose logits drift by 0.01: the kind of mismatch the check exists to catch.
    monkeypatch.setattr(ort.InferenceSession, "run", lambda self, *a, **k: [real_run(self, *a, **k)[0] + 0.01])
    with pytest.raises(export.ExportError, match="differ from PyTorch's by up to 0.01"):
        export.export_onnx(str(folder), out=out)
    assert sorted(f.name for f in out.parent.iterdir()) == ["tiny.onnx"]
    assert out.read_bytes() == b"an older export"


@pytest.mark.e2e
def test_densenet121_exports_with_imagenet_labels_and_preprocessing(tmp_path):
    """The full ImageNet preset (random weights: no download here); about 30 s of export on two cores."""
    result = export.export_onnx("densenet121", "random", out=tmp_path / "densenet121.onnx")
    meta = result.metadata
    assert len(meta["class_names"]) == 1000 and meta["class_names"][0] == "tench"
    assert (meta["preprocessing"]["resize_size"], meta["preprocessing"]["image_size"]) == (256, 224)
    assert 30 * 2**20 < result.size_bytes < 34 * 2**20  # 7.98M float32 parameters, inside the file
    predictor = predict.get_predictor("densenet121", "random")
    x = torch.stack([predictor.preprocess(path) for path in _images(3, tmp_path)])
    with torch.no_grad():
        expected = predictor.model(x).numpy()
    session = ort.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"])
    for batch in (x[:1], x):
        got = session.run(None, {"input": batch.numpy()})[0]
        assert np.abs(got - expected[: len(batch)]).max() <= 1e-4 * max(1.0, float(np.abs(expected).max()))


def _docs_snippets() -> list[str]:
    """The Python blocks of the project's README and docs that run a bundle (they open its model.onnx)."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    blocks = [b for page in pages for b in re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.S)]
    return [block for block in blocks if '"model.onnx"' in block]


def test_the_export_docs_show_a_snippet_that_classifies_with_a_bundle_as_predict_does(
    cli_exported, tmp_path, monkeypatch, capsys
):
    """Each snippet the docs show (docs/export.md), run as a reader would (in the unzipped bundle, an image as its
    argument), prints the top classes and probabilities the project's own predictor gives."""
    snippets = _docs_snippets()
    assert snippets, "docs/export.md should show how to run an exported bundle"
    with zipfile.ZipFile(cli_exported.onnx_path.with_suffix(".zip")) as z:
        z.extractall(tmp_path / "bundle")
    (image,) = _images(1, tmp_path)
    (expected,) = cli_exported.predictor.predict([image], top_k=5)
    monkeypatch.chdir(tmp_path / "bundle")
    monkeypatch.setattr(sys, "argv", ["classify.py", str(image)])
    for code in snippets:
        exec(compile(code, "docs snippet", "exec"), {"__name__": "__main__"})
        printed = [line.split("  ", 1) for line in capsys.readouterr().out.splitlines()]
        assert [label for _, label in printed] == [label for label, _ in expected.labels]
        percents = [100 * p for _, p in expected.labels]
        assert [float(p.rstrip("%")) for p, _ in printed] == pytest.approx(percents, abs=0.01)
