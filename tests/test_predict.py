"""Predictor: same outputs as the model, batches, top-k, the cache, the ImageNet fallback, Grad-CAM."""

from __future__ import annotations

import re
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
import torchvision
from helpers import trained_looking
from PIL import Image

from densenet_demo.config import PRESETS
from densenet_demo.data.images import ImageError, Preprocessing
from densenet_demo.inference import InferenceDenseNet
from densenet_demo.model import DenseNet
from densenet_demo.serving import predict
from densenet_demo.weights import checkpoints, pretrained
from densenet_demo.weights import resolver as W

PREPROCESSING = Preprocessing(32, 36, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 3)


pytestmark = pytest.mark.usefixtures("empty_predictor_cache")


def _photo(seed: int = 0, size: tuple[int, int] = (48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture
def make_run(tmp_path, tiny_config):
    """A tiny checkpoint folder (3 classes, 32x32) and its model; the same name again overwrites it."""

    def make(name: str = "run", seed: int = 0, root=None):
        torch.manual_seed(seed)
        model = trained_looking(DenseNet(tiny_config))
        folder = (root or tmp_path) / name
        checkpoints.save_checkpoint(folder, model, class_names=["cat", "dog", "eel"], preprocessing=PREPROCESSING)
        return folder, model

    return make


# ---------------------------------------------------------------------------------------------
# The fast inference path computes the model's function


@pytest.mark.parametrize("variant", ["bc-cifar-stem", "plain", "bc-imagenet-stem", "grayscale-fashion", "odd-size"])
def test_inference_densenet_matches_the_model(variant, tiny_config):
    cfg = {
        "bc-cifar-stem": tiny_config,
        "plain": tiny_config.replace(bn_size=0, compression=1.0),
        "bc-imagenet-stem": tiny_config.replace(stem="imagenet"),
        "grayscale-fashion": PRESETS["densenet_fashion"].config,
        "odd-size": tiny_config.replace(block_config=(2, 2, 2)),
    }[variant]
    model = trained_looking(DenseNet(cfg))
    size = 45 if variant == "odd-size" else 64  # 45 -> 22 -> 11: transitions pool odd sizes (last row dropped)
    x = torch.randn(3, cfg.in_channels, size, size)
    with torch.no_grad():
        expected = model(x)
    assert torch.allclose(InferenceDenseNet(model)(x), expected, atol=1e-5)
    assert all(p.grad is None for p in model.parameters())


def test_predictor_logits_match_the_checkpoint_model(make_run):
    folder, model = make_run()
    predictor = predict.get_predictor(str(folder))
    x = torch.randn(4, 3, 32, 32)
    # On a GPU, cuDNN convolutions run in TF32 by default: equal to about 1e-3, not to float32 rounding.
    atol = 1e-5 if predictor.device.type == "cpu" else 2e-3
    with torch.no_grad():
        assert torch.allclose(predictor.logits(x), model(x), atol=atol)
    assert predictor.class_names == ("cat", "dog", "eel") and predictor.preprocessing == PREPROCESSING
    assert predictor.weights_label == "checkpoint run" and predictor.notice is None


# ---------------------------------------------------------------------------------------------
# predict


def test_torchvision_and_legacy_keys_give_identical_predictions(tmp_path):
    torch.manual_seed(3)
    reference = torchvision.models.densenet121().eval()
    current = tmp_path / "current.pth"
    legacy = tmp_path / "legacy.pth"
    torch.save(reference.state_dict(), current)
    pattern = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.")
    legacy_state = {pattern.sub(r"\1.\2.", k): v for k, v in reference.state_dict().items()}
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy_state
    torch.save(legacy_state, legacy)

    image = _photo(size=(120, 90))
    a = predict.get_predictor("densenet121", current).predict([image], top_k=5)[0]
    b = predict.get_predictor("densenet121", legacy).predict([image], top_k=5)[0]
    assert a.labels == b.labels
    assert a.labels[0][0] in pretrained.imagenet_categories("densenet121")


def test_batch_gives_the_same_answers_as_one_by_one(make_run):
    folder, _ = make_run()
    predictor = predict.get_predictor(str(folder))
    images = [_photo(i) for i in range(5)]
    together = predictor.predict(images, top_k=3)
    for image, result in zip(images, together, strict=True):
        alone = predictor.predict([image], top_k=3)[0]
        assert [name for name, _ in alone.labels] == [name for name, _ in result.labels]
        assert np.allclose([p for _, p in alone.labels], [p for _, p in result.labels], atol=1e-5)


def test_top_k_is_sorted_and_bounded(make_run):
    folder, _ = make_run()
    predictor = predict.get_predictor(str(folder))
    result = predictor.predict([_photo()], top_k=10)[0]
    probabilities = [p for _, p in result.labels]
    assert len(result.labels) == 3  # only three classes
    assert probabilities == sorted(probabilities, reverse=True) and abs(sum(probabilities) - 1) < 1e-5
    assert result.latency_ms > 0 and result.name == "image 1"
    with pytest.raises(ValueError, match="top-k"):
        predictor.predict([_photo()], top_k=0)


def test_a_bad_image_does_not_stop_the_others(make_run):
    folder, _ = make_run()
    predictor = predict.get_predictor(str(folder))
    results = predictor.predict_images([_photo(0), b"not an image", _photo(1)], names=["a.png", "b.png", "c.png"])
    assert isinstance(results[0], predict.Prediction) and isinstance(results[2], predict.Prediction)
    assert isinstance(results[1], ImageError) and "b.png" in str(results[1])
    with pytest.raises(ImageError, match="b.png"):
        predictor.predict([_photo(0), b"not an image"], names=["a.png", "b.png"])


def test_concurrent_requests_on_one_predictor_agree(make_run):
    folder, _ = make_run()
    predictor = predict.get_predictor(str(folder))
    images = [_photo(i) for i in range(4)]
    expected = [r.labels for r in predictor.predict(images)]
    answers, cams = [], []

    def worker(i):
        answers.append([r.labels for r in predictor.predict(images)])
        cams.append(predictor.gradcam(images[i % 4], class_index=1).heatmap)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 8
    for answer in answers:
        for got, want in zip(answer, expected, strict=True):
            assert [n for n, _ in got] == [n for n, _ in want]
    assert all(cam.shape == (32, 32) for cam in cams)


# ---------------------------------------------------------------------------------------------
# The cache


def test_the_cache_returns_the_same_predictor(make_run):
    folder, _ = make_run()
    first = predict.get_predictor(str(folder))
    assert predict.get_predictor(str(folder)) is first


def test_a_run_id_names_a_run_in_the_runs_folder(make_run):
    folder, _ = make_run(name="20260101-000000-tiny-ab12", root=checkpoints.runs_dir())
    predictor = predict.get_predictor("run:20260101-000000-tiny-ab12")
    assert predictor.weights_label == "fine-tuned run 20260101-000000-tiny-ab12"
    assert predict.get_predictor(str(folder)) is predictor  # the same folder, the same key


def test_a_resaved_checkpoint_gives_a_new_predictor(make_run):
    folder, _ = make_run()
    first = predict.get_predictor(str(folder))
    make_run(seed=1)  # the same folder, new weights
    second = predict.get_predictor(str(folder))
    assert second is not first
    x = torch.randn(1, 3, 32, 32)
    assert not torch.allclose(first.logits(x), second.logits(x))


def test_the_cache_is_bounded_and_evicts_the_least_recently_used(make_run):
    folders = [make_run(name=f"run{i}")[0] for i in range(predict.CACHE_SIZE + 1)]
    first = predict.get_predictor(str(folders[0]))
    for folder in folders[1:]:
        predict.get_predictor(str(folder))
    assert len(predict._cache) == predict.CACHE_SIZE
    assert predict.get_predictor(str(folders[0])) is not first  # evicted, then rebuilt


def test_concurrent_first_requests_build_the_model_once(monkeypatch, make_run):
    folder, _ = make_run()
    built = []
    real_build = predict.build_predictor
    gate = threading.Event()

    def slow_build(model, weights=None):
        built.append(model)
        gate.wait(timeout=5)
        return real_build(model, weights)

    monkeypatch.setattr(predict, "build_predictor", slow_build)
    results = []
    threads = [threading.Thread(target=lambda: results.append(predict.get_predictor(str(folder)))) for _ in range(6)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    assert len(built) == 1
    assert len(results) == 6 and all(r is results[0] for r in results)


def test_failed_download_gives_random_weights_with_a_notice(monkeypatch):
    def offline(request, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    predictor = predict.get_predictor("densenet121")
    assert predictor.weights_label == "random init"
    assert "RANDOM weights" in predictor.notice
    assert f"place densenet121-a639ec97.pth from {pretrained.imagenet_weights('densenet121').url}" in predictor.notice
    assert predict.get_predictor("densenet121", "imagenet") is predictor  # no retry per request


def test_unknown_model_or_missing_weights_file_are_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown preset"):
        predict.get_predictor("densenet122")
    with pytest.raises(W.CheckpointError, match="no such file"):
        predict.get_predictor("densenet40_k12", tmp_path / "missing.pth")
    with pytest.raises(W.CheckpointError, match="not a checkpoint"):
        predict.get_predictor(str(tmp_path))


# ---------------------------------------------------------------------------------------------
# Grad-CAM


def test_gradcam_shape_range_and_default_class(make_run):
    folder, _ = make_run()
    predictor = predict.get_predictor(str(folder))
    image = _photo(size=(64, 48))
    cam = predictor.gradcam(image)
    assert cam.heatmap.shape == (32, 32) and cam.heatmap.dtype == np.float32
    assert cam.heatmap.min() >= 0.0 and cam.heatmap.max() <= 1.0 and cam.heatmap.max() > 0.0
    assert cam.overlay.mode == "RGB" and cam.overlay.size == (256, 256)  # a 32 px input, shown at a readable size
    # Smooth, not blocks: neighbouring pixels of the enlarged overlay differ by little
    pixels = np.asarray(cam.overlay, dtype=np.int16)
    assert np.abs(np.diff(pixels, axis=1)).mean() < 6
    top1 = predictor.predict([image], top_k=1)[0].labels[0][0]
    assert cam.class_name == top1 and predictor.class_names[cam.class_index] == top1


def test_gradcam_depends_on_the_chosen_class(make_run):
    folder, _ = make_run()
    predictor = predict.get_predictor(str(folder))
    image = _photo(size=(64, 48))
    cams = [predictor.gradcam(image, class_index=c).heatmap for c in range(3)]
    assert not np.allclose(cams[0], cams[1]) and not np.allclose(cams[1], cams[2])
    with pytest.raises(ValueError, match="out of range"):
        predictor.gradcam(image, class_index=3)


def test_gradcam_leaves_the_shared_model_untouched(make_run):
    folder, _ = make_run()
    predictor = predict.get_predictor(str(folder))
    before = {k: v.clone() for k, v in predictor.model.state_dict().items()}
    predictor.gradcam(_photo())
    assert all(p.grad is None for p in predictor.model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in predictor.model.state_dict().items())


def test_random_init_is_the_same_in_every_build_whatever_the_global_rng_holds():
    image = Image.new("RGB", (40, 40), (30, 120, 200))
    torch.manual_seed(5)
    first = predict.build_predictor("densenet_bc100_k12", "random")
    torch.manual_seed(1234)  # whatever the global stream holds, the random weights do not change
    second = predict.build_predictor("densenet_bc100_k12", "random")
    assert first is not second
    assert first.predict([image], top_k=3)[0].labels == second.predict([image], top_k=3)[0].labels
    assert torch.equal(first.logits(first.preprocess(image)[None]), second.logits(second.preprocess(image)[None]))
