"""The Predictor's backends: auto prepares onnxruntime in the background and never makes a request wait; graphs are
checked, cached on disk by weights content under the caps, and a bad one falls back to PyTorch with a log line;
int8 is kept only where it agrees with fp32, and says why not otherwise."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter

import numpy as np
import pytest
import torch
from helpers import trained_looking
from PIL import Image

from densenet_demo.config import DenseNetConfig
from densenet_demo.data.images import Preprocessing
from densenet_demo.model import DenseNet
from densenet_demo.serving import backends, calibration, graph_cache, int8, onnx_graph, predict
from densenet_demo.weights import checkpoints

TINY = DenseNetConfig(
    growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2, compression=0.5, stem="cifar", num_classes=3
)
PREPROCESSING = Preprocessing(32, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 3)
CLASSES = ["blue", "green", "red"]  # sorted, as a dataset folder lists its classes
WAIT_S = 120


def _model(seed: int) -> DenseNet:
    torch.manual_seed(seed)
    return trained_looking(DenseNet(TINY))


@pytest.fixture(scope="module")
def graph_of_seed0() -> bytes:
    """The real export of ``_model(0)`` (checked against PyTorch), made once: tests hand it to their exporter."""
    return onnx_graph.checked_graph(_model(0), PREPROCESSING, graph_cache.OPSET).data


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.delenv("DENSENET_DEMO_AUTO_BACKEND", raising=False)  # conftest makes auto PyTorch elsewhere
    predict.clear_cache()
    yield
    predict.clear_cache()


@pytest.fixture
def exports(monkeypatch, graph_of_seed0):
    """The exporter returns ``graph_of_seed0`` (once ``release`` is set) and counts its calls."""
    calls: list[int] = []
    release = threading.Event()
    release.set()

    def export(net, example, opset):
        calls.append(1)
        assert release.wait(WAIT_S)
        return graph_of_seed0

    monkeypatch.setattr(onnx_graph, "_to_onnx_bytes", export)
    return calls, release


def _photos(folder, n: int = 4) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    paths = []
    for i in range(n):
        path = folder / f"photo{i}.png"
        Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def _dataset(folder, per_class: int = 8) -> dict:
    """Class folders of generated images; returns what a run records about them."""
    rng = np.random.default_rng(1)
    for c, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(60, 40, (32, 32, 3)), 0, 255)
            pixels[..., c] += 120
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / name / f"{i}.png")
    return {"source": str(folder), "counts": {name: per_class for name in CLASSES}}


def _run(name: str, seed: int = 0, dataset: dict | None = None) -> str:
    """A run in the runs folder; with ``dataset``, it records it as training does."""
    extra = {"dataset": dataset, "train_config": {"val_fraction": 0.25, "seed": 0}} if dataset else None
    folder = checkpoints.runs_dir() / name
    checkpoints.save_checkpoint(folder, _model(seed), class_names=CLASSES, preprocessing=PREPROCESSING, extra=extra)
    return f"run:{name}"


def _state(predictor: predict.Predictor, backend: str) -> backends.BackendStatus:
    return next(s for s in predictor.backend_states() if s.backend == backend)


def test_the_first_request_never_waits_for_an_export_and_auto_switches_once_it_is_ready(exports, tmp_path):
    calls, release = exports
    release.clear()  # the export blocks until the test lets it go
    photos = _photos(tmp_path / "photos")
    predictor = predict.get_predictor(_run("a"))
    first = predictor.predict(photos)  # auto: answers at once, from PyTorch, while the export waits
    assert {p.backend for p in first} == {"torch"} and _state(predictor, "onnxruntime").state == "preparing"
    again = predictor.predict(photos)
    assert {p.backend for p in again} == {"torch"}
    release.set()
    assert predictor.graphs.wait("onnxruntime", WAIT_S)
    later = predictor.predict(photos)
    assert {p.backend for p in later} == {"onnxruntime"} and len(calls) == 1
    for a, b in zip(first, later, strict=True):
        assert [label for label, _ in a.labels] == [label for label, _ in b.labels]
        assert np.allclose([p for _, p in a.labels], [p for _, p in b.labels], atol=1e-5)
    status = _state(predictor, "onnxruntime")
    assert status.state == "ready" and status.latency_ms > 0 and _state(predictor, "torch").latency_ms > 0


def test_the_graph_is_cached_in_the_run_and_a_later_process_loads_it_without_exporting(exports, tmp_path):
    calls, _ = exports
    model = _run("b")
    predictor = predict.get_predictor(model)
    engine, note = predictor.engine("onnxruntime", how="wait")
    assert engine.name == "onnxruntime" and note == "" and len(calls) == 1
    files = sorted(p.name for p in (checkpoints.runs_dir() / "b" / "onnx").iterdir())
    digest = graph_cache.weights_digest(predictor.model)[:20]
    ort_version = __import__("onnxruntime").__version__
    assert files == [f"{digest}-g{graph_cache.GRAPH_REVISION}-opset{graph_cache.OPSET}-ort{ort_version}.onnx"]
    predict.clear_cache()  # as a new process would: nothing in memory, the file on disk
    engine, _ = predict.get_predictor(model).engine("auto", how="cached")
    assert engine.name == "onnxruntime" and len(calls) == 1  # loaded and checked, not exported


def test_auto_in_a_one_shot_command_takes_only_a_cached_graph(exports):
    calls, _ = exports
    predictor = predict.get_predictor(_run("c"))
    engine, note = predictor.engine("auto", how="cached")
    assert engine.name == "torch" and note == "" and calls == []
    assert _state(predictor, "onnxruntime").state == "not started"


def test_on_a_gpu_or_when_the_host_says_so_auto_stays_pytorch(exports, monkeypatch):
    calls, _ = exports
    predictor = predict.get_predictor(_run("d"))
    assert predictor.graphs.select("auto", torch.device("cuda"))[0].name == "torch"
    monkeypatch.setenv(backends.AUTO_ENV, "torch")
    assert predictor.engine("auto")[0].name == "torch"
    assert calls == [] and _state(predictor, "onnxruntime").state == "not started"
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'"):
        predictor.predict_images([], backend="tensorrt")


def test_a_mismatching_export_falls_back_to_pytorch_with_a_log_line(exports, caplog):
    predictor = predict.get_predictor(_run("e", seed=1))  # the exporter hands back seed 0's graph
    with caplog.at_level(logging.WARNING, logger="densenet_demo.serving.backends"):
        engine, note = predictor.engine("onnxruntime", how="wait")
    assert engine.name == "torch" and "differ from PyTorch's" in note
    assert _state(predictor, "onnxruntime").state == "failed"
    assert any("onnxruntime for" in r.message and "PyTorch answers" in r.message for r in caplog.records)
    assert not (checkpoints.runs_dir() / "e" / "onnx").exists()  # nothing cached
    assert predictor.engine("auto")[0].name == "torch"


def test_a_broken_cached_graph_is_logged_and_made_again(exports, caplog):
    calls, _ = exports
    model = _run("f")
    predictor = predict.get_predictor(model)
    path = graph_cache.place_for(predictor.model, checkpoints.runs_dir().resolve() / "f").path("onnxruntime")
    path.parent.mkdir()
    path.write_bytes(b"half a graph")
    with caplog.at_level(logging.WARNING, logger="densenet_demo.serving.backends"):
        engine, _ = predictor.engine("onnxruntime", how="wait")
    assert engine.name == "onnxruntime" and len(calls) == 1
    assert any("unusable" in r.message for r in caplog.records)
    assert path.read_bytes() != b"half a graph"


def test_the_shared_cache_removes_the_least_recently_used_graph_over_its_cap(graph_of_seed0, monkeypatch):
    size = len(graph_of_seed0)
    monkeypatch.setenv(graph_cache.CACHE_MAX_MB_ENV, str(2.5 * size / 2**20))
    places = [graph_cache.place_for(_model(seed), None) for seed in range(3)]
    assert places[0].write("onnxruntime", graph_of_seed0) and places[1].write("onnxruntime", graph_of_seed0)
    assert places[0].read("onnxruntime") is not None  # a use: now places[1] is the least recently used
    assert places[2].write("onnxruntime", graph_of_seed0)
    on_disk = sorted(p.name for p in places[0].folder.iterdir())
    assert on_disk == sorted([places[0].path("onnxruntime").name, places[2].path("onnxruntime").name])
    monkeypatch.setenv(graph_cache.CACHE_MAX_MB_ENV, str(0.5 * size / 2**20))
    assert not graph_cache.place_for(_model(4), None).write("onnxruntime", graph_of_seed0)  # larger than the cap


def test_a_runs_graph_that_would_pass_the_runs_cap_serves_from_memory_and_costs_no_run(exports, monkeypatch):
    for name in ("old", "g"):
        _run(name)
    used = sum(p.stat().st_size for p in checkpoints.runs_dir().rglob("*") if p.is_file())
    monkeypatch.setenv("DENSENET_DEMO_RUNS_MAX_MB", str((used + 1000) / 2**20))
    predictor = predict.get_predictor("run:g")
    assert predictor.engine("onnxruntime", how="wait")[0].name == "onnxruntime"
    assert not (checkpoints.runs_dir() / "g" / "onnx").exists() or not any(
        (checkpoints.runs_dir() / "g" / "onnx").iterdir()
    )
    assert sorted(p.name for p in checkpoints.runs_dir().iterdir()) == ["g", "old"]


def test_int8_calibrates_on_the_runs_training_images_and_is_kept_when_it_agrees(exports, tmp_path, monkeypatch):
    monkeypatch.setattr(int8, "MIN_AGREEMENT", 0.0)  # whether it agrees is the bench's question; here, the path
    model = _run("h", dataset=_dataset(tmp_path / "data"))
    predictor = predict.get_predictor(model)
    engine, note = predictor.engine("int8", how="wait")
    assert engine.name == "int8" and note == ""
    record = json.loads(next((checkpoints.runs_dir() / "h" / "onnx").glob("*-int8.json")).read_text())
    assert record["kept"] and record["held_out"] == 6  # 2 of 8 per class to validation, as in training
    assert "18 of the run's training images" in record["description"]
    assert len(list((checkpoints.runs_dir() / "h" / "onnx").glob("*-int8.onnx"))) == 1
    labels = predictor.predict(_photos(tmp_path / "photos"), backend="int8")
    assert {p.backend for p in labels} == {"int8"} and all(p.labels[0][0] in CLASSES for p in labels)


def test_int8_that_disagrees_is_not_kept_and_fp32_answers_with_the_reason(exports, tmp_path, monkeypatch):
    monkeypatch.setattr(int8, "MIN_AGREEMENT", 1.01)
    model = _run("i", dataset=_dataset(tmp_path / "data"))
    predictor = predict.get_predictor(model)
    engine, note = predictor.engine("int8", how="wait")
    assert engine.name == "onnxruntime" and "int8 not kept: top-1 agreed with fp32 on only" in note
    assert "needs 101%" in note and _state(predictor, "int8").state == "not kept"
    assert not list((checkpoints.runs_dir() / "i" / "onnx").glob("*-int8.onnx"))
    predict.clear_cache()
    monkeypatch.setattr(int8, "quantize", lambda *a: pytest.fail("the verdict is on disk: no new calibration"))
    again = predict.get_predictor(model)
    assert again.engine("int8", how="wait")[0].name == "onnxruntime" and _state(again, "int8").state == "not kept"


def test_int8_of_a_run_whose_images_are_gone_says_so_unless_the_session_hands_them_over(exports, tmp_path):
    recorded = _dataset(tmp_path / "data")
    model = _run("j", dataset={**recorded, "source": "upload.zip"})
    predictor = predict.get_predictor(model)
    engine, note = predictor.engine("int8", how="wait")
    assert engine.name == "onnxruntime" and "no longer here (upload.zip)" in note
    assert _state(predictor, "int8").state == "unavailable"
    from densenet_demo.data.datasets import load_image_folder

    files, _ = load_image_folder(tmp_path / "data")
    predict.clear_cache()
    done = predict.classify_files(
        model, None, _photos(tmp_path / "photos"), top_k=1, names=["a", "b", "c", "d"], gradcam=False,
        backend="int8", dataset=files,
    )  # fmt: skip
    assert done.backend in ("torch", "onnxruntime") and "being prepared" in done.backend_note
    assert predict.get_predictor(model).graphs.wait("int8", WAIT_S)
    assert _state(predict.get_predictor(model), "int8").state in ("ready", "not kept")


def test_gradcam_runs_on_pytorch_only_when_asked(exports, tmp_path, monkeypatch):
    model = _run("k")
    photos = _photos(tmp_path / "photos", 2)
    predict.get_predictor(model).engine("onnxruntime", how="wait")
    calls = Counter()
    real = predict.Predictor.gradcam
    monkeypatch.setattr(
        predict.Predictor, "gradcam", lambda self, *a, **k: calls.update(["cam"]) or real(self, *a, **k)
    )
    plain = predict.classify_files(model, None, photos, top_k=2, names=["a", "b"], gradcam=False, backend="auto")
    assert plain.backend == "onnxruntime" and plain.overlays == [None, None] and not calls
    drawn = predict.classify_files(model, None, photos, top_k=2, names=["a", "b"], gradcam=True, backend="auto")
    assert calls["cam"] == 2 and all(isinstance(o, Image.Image) for o in drawn.overlays)


def test_the_presets_calibration_holds_out_other_photos_than_it_calibrates_on():
    seen: list[str] = []

    def prepare(image) -> torch.Tensor:
        seen.append(getattr(image, "filename", "") or str(image))
        return PREPROCESSING.to_tensor(image if isinstance(image, Image.Image) else Image.open(image).convert("RGB"))

    images = calibration.generic(prepare)
    assert len(images.calibration) == 2 * calibration.VIEWS_PER_PHOTO + calibration.GENERATED
    assert len(images.held_out) == 2 * calibration.VIEWS_PER_PHOTO + calibration.GENERATED
    assert "astronaut, coffee" in images.description and "views of cat, rocket" in images.description
    assert not any(torch.equal(a, b) for a in images.calibration[-8:] for b in images.held_out[-8:])


def test_onnxruntime_sessions_take_every_core_unless_the_host_says_otherwise(monkeypatch):
    monkeypatch.delenv(backends.THREADS_ENV, raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert backends.onnxruntime_threads() == 4
    monkeypatch.setenv(backends.THREADS_ENV, "3")
    assert backends.onnxruntime_threads() == 3  # the host's setting wins
    monkeypatch.setenv(backends.THREADS_ENV, "zero")
    assert backends.onnxruntime_threads() == 4  # a setting that is not a count is ignored


def test_onnxruntime_sessions_let_idle_threads_sleep(graph_of_seed0):
    """Spinning threads would take the cores from the PyTorch work that follows a prediction (Grad-CAM)."""
    session = onnx_graph.onnxruntime_session(graph_of_seed0, threads=2)
    options = session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == 2


class _HeldSession:
    """An onnxruntime session stand-in whose ``run`` waits until the test lets it go; counts its runs."""

    def __init__(self, name: str) -> None:
        self.name, self.runs, self.started = name, 0, threading.Semaphore(0)
        self.release = threading.Event()

    def run(self, outputs, feeds):
        self.runs += 1
        self.started.release()
        assert self.release.wait(WAIT_S)
        return [np.zeros((len(feeds[onnx_graph.INPUT_NAME]), 3), np.float32)]


def test_a_forward_pass_that_overlaps_another_runs_on_one_thread_of_the_same_graph(graph_of_seed0, monkeypatch):
    """A lone pass takes every core; overlapping passes share a one-thread session, made in the background the
    first time two overlap (the wide session answers meanwhile), of the same graph."""
    wide, narrow = _HeldSession("wide"), _HeldSession("narrow")
    made: list[tuple[bytes, int]] = []

    def session(data, threads=None):
        made.append((data, threads))
        return narrow

    monkeypatch.setattr(onnx_graph, "onnxruntime_session", session)
    engine = backends.GraphEngine("onnxruntime", wide, graph_of_seed0, threads=2)
    batch = torch.zeros(1, 3, 32, 32)
    wide.release.set()
    engine.logits(batch)
    assert (wide.runs, made) == (1, [])  # alone: the wide session, nothing more made
    wide.release.clear()
    first = threading.Thread(target=engine.logits, args=(batch,))
    first.start()
    assert wide.started.acquire(timeout=WAIT_S)
    second = threading.Thread(target=engine.logits, args=(batch,))
    second.start()  # overlaps: the wide session still answers, and the one-thread one is made from the graph
    assert wide.started.acquire(timeout=WAIT_S)
    deadline = time.monotonic() + WAIT_S
    while engine._narrow is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert made == [(graph_of_seed0, 1)] and narrow.runs == 0
    third = threading.Thread(target=engine.logits, args=(batch,))
    third.start()  # overlaps again: the one-thread session
    assert narrow.started.acquire(timeout=WAIT_S)
    wide.release.set()
    narrow.release.set()
    for thread in (first, second, third):
        thread.join(WAIT_S)
    assert (wide.runs, narrow.runs, len(made)) == (3, 1, 1)
    engine.logits(batch)
    assert wide.runs == 4  # alone again: every core


def test_a_one_thread_engine_makes_no_other_session_and_the_one_thread_session_answers_as_the_wide_one(
    graph_of_seed0, monkeypatch
):
    held = _HeldSession("only")
    with monkeypatch.context() as m:
        m.setattr(onnx_graph, "onnxruntime_session", lambda data, threads=None: pytest.fail("made a session"))
        engine = backends.GraphEngine("onnxruntime", held, graph_of_seed0, threads=1)
        first = threading.Thread(target=engine.logits, args=(torch.zeros(1, 3, 32, 32),))
        first.start()
        assert held.started.acquire(timeout=WAIT_S)
        held.release.set()
        engine.logits(torch.zeros(1, 3, 32, 32))  # overlapping, but one thread is all there is: no other session
        first.join(WAIT_S)
    assert held.runs == 2
    batch = onnx_graph.check_batch(PREPROCESSING, 2)
    wide = backends.GraphEngine("onnxruntime", onnx_graph.onnxruntime_session(graph_of_seed0, 2), graph_of_seed0, 2)
    wide._make_narrow(graph_of_seed0)
    assert wide._narrow.get_session_options().intra_op_num_threads == 1
    narrow = wide._narrow.run([onnx_graph.OUTPUT_NAME], {onnx_graph.INPUT_NAME: batch.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(narrow), wide.logits(batch), rtol=1e-5, atol=1e-5)
