"""Weights from anywhere, safely: legacy keys, refused pickles, ImageNet cache and failures, checkpoints."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
import torchvision
from helpers import trained_looking
from PIL import Image
from safetensors.torch import save_file

from densenet_demo.config import PRESETS
from densenet_demo.data.images import Preprocessing, default_preprocessing
from densenet_demo.model import DenseNet
from densenet_demo.weights import checkpoints, pretrained
from densenet_demo.weights import resolver as W

PREPROCESSING = Preprocessing(32, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 3)


def _legacy(state_dict: dict) -> dict:
    """The same state dict under old torchvision names: denselayer1.norm1.weight -> denselayer1.norm.1.weight."""
    pattern = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.")
    return {pattern.sub(r"\1.\2.", k): v for k, v in state_dict.items()}


@pytest.fixture
def no_network(monkeypatch):
    """The download fails as it does offline; the calls are recorded."""
    calls = []

    def fail(request, *args, **kwargs):
        calls.append(getattr(request, "full_url", request))
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", fail)
    return calls


# ---------------------------------------------------------------------------------------------
# Local files


def test_legacy_keys_are_renamed_like_torchvision():
    state = {"features.denseblock1.denselayer3.norm.1.weight": 1, "features.denseblock1.denselayer3.conv.2.weight": 2}
    assert pretrained.remap_legacy_keys(state) == {
        "features.denseblock1.denselayer3.norm1.weight": 1,
        "features.denseblock1.denselayer3.conv2.weight": 2,
    }
    assert pretrained.remap_legacy_keys({"module.classifier.bias": 3}) == {"classifier.bias": 3}


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "model", "module-prefix"])
@pytest.mark.parametrize("suffix", [".pth", ".pt", ".safetensors"])
def test_state_dict_files_load_in_every_common_layout(tmp_path, wrap, suffix, tiny_config):
    source = trained_looking(DenseNet(tiny_config))
    state = {k: v.clone() for k, v in source.state_dict().items()}
    if wrap == "module-prefix":
        state = {f"module.{k}": v for k, v in state.items()}
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))  # safetensors holds a flat dict only
    else:
        torch.save(state if wrap in ("bare", "module-prefix") else {wrap: state, "epoch": 7}, path)
    target = DenseNet(tiny_config)
    pretrained.load_weights_into(target, pretrained.load_state_dict_file(path))
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(target.eval()(x), source(x))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('ran')",))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": Payload()}, path)
    with pytest.raises(W.CheckpointError, match="evil.pth: refused"):
        pretrained.load_state_dict_file(path)
    with pytest.raises(W.CheckpointError, match="refused"):
        W.load_model("densenet40_k12", path)
    assert not marker.exists()


def test_shape_mismatch_lists_keys_with_both_shapes(tmp_path, tiny_config):
    path = tmp_path / "other.pth"
    torch.save(DenseNet(tiny_config.replace(growth_rate=6)).state_dict(), path)
    with pytest.raises(W.CheckpointError) as error:
        pretrained.load_weights_into(DenseNet(tiny_config), pretrained.load_state_dict_file(path))
    message = str(error.value)
    assert "shape mismatch" in message
    assert "features.denseblock1.denselayer1.conv1.weight: file (12, 8, 1, 1) vs model (8, 8, 1, 1)" in message
    assert "more)" in message  # only the first few are listed


def test_missing_and_unexpected_keys_are_named(tiny_config):
    state = DenseNet(tiny_config).state_dict()
    state["features.extra.weight"] = state.pop("features.norm5.weight")
    with pytest.raises(W.CheckpointError, match=r"missing key\(s\): features\.norm5\.weight.*unexpected key"):
        pretrained.load_weights_into(DenseNet(tiny_config), state)


def test_another_number_of_classes_replaces_the_head_only_when_asked(tiny_config):
    source = trained_looking(DenseNet(tiny_config))
    target = DenseNet(tiny_config.replace(num_classes=5))
    with pytest.raises(W.CheckpointError, match="replace the head"):
        pretrained.load_weights_into(target, source.state_dict())
    kept = pretrained.load_weights_into(target, source.state_dict(), replace_head=True)
    assert kept == ["classifier.weight", "classifier.bias"]
    assert target.classifier.out_features == 5
    assert torch.equal(target.features.conv0.weight, source.features.conv0.weight)


def test_not_a_weights_file_is_reported(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("hello")
    with pytest.raises(W.CheckpointError, match="notes.pth: not a readable weights file"):
        pretrained.load_state_dict_file(path)
    with pytest.raises(W.CheckpointError, match="must be a"):
        pretrained.load_state_dict_file(tmp_path / "weights.onnx")


def test_file_weights_with_another_head_size_build_that_many_classes(tmp_path):
    path = tmp_path / "ten.safetensors"
    model = DenseNet(PRESETS["densenet40_k12"].config.replace(num_classes=7))
    save_file(model.state_dict(), str(path))
    loaded = W.load_model("densenet40_k12", path)
    assert loaded.model.cfg.num_classes == 7 and len(loaded.class_names) == 7
    assert loaded.label == "file ten.safetensors"


# ---------------------------------------------------------------------------------------------
# ImageNet weights


def test_failed_download_names_the_file_its_url_and_the_folder(no_network, _private_weights_dir):
    with pytest.raises(W.WeightsUnavailable) as error:
        pretrained.load_imagenet_state_dict("densenet121")
    message = str(error.value)
    assert "place densenet121-a639ec97.pth from https://download.pytorch.org/models/densenet121-a639ec97.pth" in message
    assert str(_private_weights_dir) in message
    assert "no network connection" in message and "urlopen" not in message
    assert no_network == ["https://download.pytorch.org/models/densenet121-a639ec97.pth"]
    assert list(_private_weights_dir.iterdir()) == []  # nothing half-downloaded left behind


@pytest.fixture
def http_server():
    """A loopback HTTP server: ``/weights`` serves PAYLOAD; ``/stall`` accepts and never answers."""
    import http.server
    import threading

    release = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/stall":
                release.wait(10)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    release.set()
    server.shutdown()
    server.server_close()


PAYLOAD = b"weights " * 100_000


def test_download_keeps_a_file_whose_hash_matches(http_server, tmp_path):
    target = tmp_path / "w.pth"
    pretrained.download_file(f"{http_server}/weights", target, hashlib.sha256(PAYLOAD).hexdigest()[:8])
    assert target.read_bytes() == PAYLOAD
    assert [p.name for p in tmp_path.iterdir()] == ["w.pth"]


def test_download_with_a_wrong_hash_keeps_nothing(http_server, tmp_path):
    with pytest.raises(RuntimeError, match="does not start with 00000000"):
        pretrained.download_file(f"{http_server}/weights", tmp_path / "w.pth", "00000000")
    assert list(tmp_path.iterdir()) == []


def test_a_stalled_download_times_out_and_keeps_nothing(http_server, tmp_path):
    start = time.monotonic()
    with pytest.raises(OSError, match="timed out"):
        pretrained.download_file(f"{http_server}/stall", tmp_path / "w.pth", timeout_s=0.5)
    assert time.monotonic() - start < 5
    assert list(tmp_path.iterdir()) == []


def test_load_model_falls_back_to_random_and_says_so(no_network):
    loaded = W.load_model("densenet121")
    assert loaded.label == "random init"
    assert "RANDOM weights" in loaded.notice and "densenet121-a639ec97.pth" in loaded.notice
    assert loaded.class_names[0] == "tench"  # still the ImageNet head, so still ImageNet's labels
    with pytest.raises(W.WeightsUnavailable):
        W.load_model("densenet121", "imagenet", fallback_to_random=False)


def test_a_file_placed_by_hand_is_used_without_downloading(no_network):
    # torchvision's published files use the legacy key names and the legacy (non-zip) serialization,
    # and predate BatchNorm's num_batches_tracked.
    torch.manual_seed(1)
    reference = torchvision.models.densenet121().eval()
    state = {k: v for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = pretrained.imagenet_file("densenet121")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(_legacy(state), path, _use_new_zipfile_serialization=False)
    loaded = W.load_model("densenet121")
    assert no_network == []
    assert loaded.label == "ImageNet (torchvision IMAGENET1K_V1)" and loaded.notice is None
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), reference(x), atol=1e-5)


def test_a_wrong_file_in_the_cache_is_reported_as_unavailable(no_network, tiny_config):
    path = pretrained.imagenet_file("densenet121")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(DenseNet(tiny_config).state_dict(), path)
    with pytest.raises(W.WeightsUnavailable, match="is not densenet121's ImageNet file .*place densenet121-a639ec97"):
        W.load_model("densenet121", fallback_to_random=False)


def test_imagenet_weights_only_for_imagenet_presets():
    with pytest.raises(ValueError, match="ImageNet weights exist only for"):
        W.load_model("densenet40_k12", "imagenet")


def test_imagenet_preprocessing_gives_the_same_tensors_as_the_weights_own_transforms():
    ours = default_preprocessing(PRESETS["densenet121"].config)
    theirs = torchvision.models.DenseNet121_Weights.IMAGENET1K_V1.transforms()
    assert (ours.image_size, ours.resize_size) == (224, 256)
    for size in [(300, 200), (517, 777), (224, 224)]:
        image = Image.effect_mandelbrot(size, (-2, -1.5, 1, 1.5), 60).convert("RGB")
        assert torch.equal(ours.to_tensor(image), theirs(image))


def test_imagenet_categories_are_available_offline():
    names = pretrained.imagenet_categories("densenet201")
    assert len(names) == 1000 and names[0] == "tench"


# ---------------------------------------------------------------------------------------------
# Checkpoints of this project


def _save(directory: Path, model: DenseNet, accuracy: float = 0.5) -> checkpoints.CheckpointInfo:
    return checkpoints.save_checkpoint(
        directory, model, class_names=["cat", "dog", "eel"], preprocessing=PREPROCESSING, metrics={"acc": accuracy}
    )


def test_checkpoint_round_trip_gives_identical_logits(tmp_path, tiny_config):
    model = trained_looking(DenseNet(tiny_config))
    info = _save(tmp_path / "run", model)
    loaded, read = checkpoints.load_checkpoint(tmp_path / "run")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))
    assert read.class_names == ("cat", "dog", "eel") and read.preprocessing == PREPROCESSING
    assert read.config == model.cfg and read.metrics == {"acc": 0.5} and read.created_at == info.created_at
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["model.json", "model.safetensors"]


def test_a_save_that_fails_midway_keeps_the_previous_checkpoint(tmp_path, monkeypatch, tiny_config):
    first = trained_looking(DenseNet(tiny_config))
    _save(tmp_path / "run", first, accuracy=0.1)

    def disk_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoints, "save_file", disk_full)
    with pytest.raises(W.CheckpointError, match="previous checkpoint, if any, is unchanged"):
        _save(tmp_path / "run", DenseNet(tiny_config), accuracy=0.9)
    loaded, info = checkpoints.load_checkpoint(tmp_path / "run")
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(loaded(x), first(x)) and info.metrics == {"acc": 0.1}
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["model.json", "model.safetensors"]


def test_a_save_interrupted_between_the_two_files_is_still_whole(tmp_path, monkeypatch, tiny_config):
    _save(tmp_path / "run", trained_looking(DenseNet(tiny_config)), accuracy=0.1)
    second = trained_looking(DenseNet(tiny_config))
    real_replace, calls = os.replace, []

    def interrupted(src, dst):
        calls.append(dst)
        if str(dst).endswith("model.json"):
            raise KeyboardInterrupt
        real_replace(src, dst)

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(os, "replace", interrupted)
        _save(tmp_path / "run", second, accuracy=0.9)
    # The safetensors file (weights + metadata in its header) is the authority: the new checkpoint, whole.
    loaded, info = checkpoints.load_checkpoint(tmp_path / "run")
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(loaded(x), second(x)) and info.metrics == {"acc": 0.9}
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["model.json", "model.safetensors"]


@pytest.mark.e2e
def test_a_killed_save_leaves_a_loadable_checkpoint_and_only_hidden_leftovers(tmp_path):
    run = tmp_path / "run"
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
        from densenet_demo.weights.checkpoints import save_checkpoint
        from densenet_demo.config import PRESETS
        from densenet_demo.data.images import default_preprocessing
        from densenet_demo.model import DenseNet
        cfg = PRESETS["densenet_fashion"].config
        model = DenseNet(cfg)
        names = [str(i) for i in range(10)]
        for i in range(10_000):
            save_checkpoint({str(run)!r}, model, class_names=names, preprocessing=default_preprocessing(cfg))
            if i == 0:
                print("saved", flush=True)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "saved"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    model, info = checkpoints.load_checkpoint(run)
    assert info.config == PRESETS["densenet_fashion"].config
    visible = sorted(p.name for p in run.iterdir() if not p.name.startswith("."))
    assert visible == ["model.json", "model.safetensors"]


def test_run_ids_cannot_point_outside_the_runs_folder():
    for bad in ("../x", "a/b", ".hidden", ""):
        with pytest.raises(W.CheckpointError):
            checkpoints.run_path(bad)


def test_partial_files_are_swept_only_when_old_and_only_the_hidden_temporaries(tmp_path):
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    old, young = run / ".model.safetensors.abc.tmp", run / ".model.json.def.tmp"
    download = tmp_path / ".densenet121-a639ec97.pth.xyz.tmp"
    keep = [run / "model.safetensors", run / "notes.tmp", young]
    for f in [old, download, *keep]:
        f.write_bytes(b"x")
    hour_ago = time.time() - 3700
    for f in (old, download, run / "model.safetensors", run / "notes.tmp"):
        os.utime(f, (hour_ago, hour_ago))
    assert sorted(checkpoints.sweep_partial_files(tmp_path)) == sorted([old, download])
    assert all(f.exists() for f in keep)


def test_the_weights_folder_is_the_projects_own_unless_the_environment_names_one(monkeypatch, tmp_path):
    project = Path(__file__).resolve().parent.parent
    with monkeypatch.context() as patch:
        patch.delenv("DENSENET_DEMO_WEIGHTS", raising=False)
        assert checkpoints.weights_dir() == project / "weights"
        assert (checkpoints.weights_dir() / "README.md").is_file()
        patch.setenv("DENSENET_DEMO_WEIGHTS", str(tmp_path))
        assert checkpoints.weights_dir() == tmp_path


def test_a_failed_download_is_explained_in_words():
    import socket
    import urllib.error

    assert pretrained.download_failure(urllib.error.URLError(socket.gaierror(-3, "Temporary failure"))).startswith(
        "no network connection"
    )
    http = urllib.error.HTTPError("https://x", 404, "Not Found", {}, None)
    assert pretrained.download_failure(http) == "the server answered HTTP 404 Not Found"
    assert pretrained.download_failure(urllib.error.URLError(TimeoutError("timed out"))) == "the connection timed out"
    assert "<urlopen" not in pretrained.download_failure(urllib.error.URLError("refused"))
