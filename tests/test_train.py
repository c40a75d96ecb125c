"""The trainer on a tiny DenseNet and generated images: learning, events, the feature cache, cancel, failures,
checkpoints and determinism."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import colour_images, event_kinds, train_config
from PIL import Image

from densenet_demo.data import datasets as data
from densenet_demo.model import DenseNet
from densenet_demo.serving import predict
from densenet_demo.training import loop
from densenet_demo.training.build import build_model, make_optimizer
from densenet_demo.training.config import TrainConfig
from densenet_demo.training.events import CancelToken, EpochEnd, Failed, Finished, Started, Step
from densenet_demo.training.loop import Trainer
from densenet_demo.weights import checkpoints


def _run(config: TrainConfig, files, cancel: CancelToken | None = None, **kwargs) -> tuple[Trainer, list]:
    trainer = Trainer(config, files, **kwargs)
    return trainer, list(trainer.run(cancel))


def _started(events) -> Started:
    return next(e for e in events if isinstance(e, Started))


def test_a_tiny_model_learns_loss_falls_and_val_acc_beats_chance(tiny_config, colours):
    _, events = _run(train_config(tiny_config, epochs=6), colours)
    epochs = [e for e in events if isinstance(e, EpochEnd)]
    finished = events[-1]
    assert isinstance(finished, Finished), events[-1]
    assert epochs[-1].train_loss < epochs[0].train_loss
    assert finished.best_val_acc > 1 / 3 + 0.2  # chance is 1/3
    assert np.array(finished.confusion_matrix).sum() == 6 and finished.class_names == ["blue", "green", "red"]


def test_events_come_in_order_started_steps_epoch_ends_finished(tiny_config, colours):
    _, events = _run(train_config(tiny_config, epochs=2), colours)
    kinds = " ".join(e.kind for e in events)
    pattern = r"preparing started preparing (step ){3}validating epoch_end (step ){3}validating epoch_end finished"
    assert re.fullmatch(pattern, kinds)  # "validating": seconds without a step are coming
    assert "building custom (random weights)" in events[0].what
    started, step = events[1], events[3]
    assert (started.n_train, started.n_val, started.steps_per_epoch, started.device) == (18, 6, 3, "cpu")
    assert started.classes == ["blue", "green", "red"] and started.amp is None
    assert (step.epoch, step.step, step.steps) == (1, 1, 3) and step.gpu_memory_mb is None
    assert step.images_per_s > 0 and step.eta_s >= 0 and step.lr > 0
    assert all(e.to_dict()["event"] == e.kind for e in events)


def test_linear_mode_computes_each_image_features_exactly_once(tiny_config, colours, monkeypatch):
    seen = []
    forward_features = DenseNet.forward_features
    monkeypatch.setattr(DenseNet, "forward_features", lambda self, x: seen.append(len(x)) or forward_features(self, x))
    trainer, events = _run(train_config(tiny_config, mode="linear", epochs=4), colours)
    assert isinstance(events[-1], Finished)
    assert sum(seen) == 24 == trainer.backbone_images  # 18 train + 6 val images, once each, over 4 epochs
    assert re.fullmatch(r"started (caching )+((step )+validating epoch_end ){4}finished", event_kinds(events))


def test_linear_mode_without_the_cache_runs_the_backbone_every_epoch(tiny_config, colours, monkeypatch):
    seen = []
    forward_features = DenseNet.forward_features
    monkeypatch.setattr(DenseNet, "forward_features", lambda self, x: seen.append(len(x)) or forward_features(self, x))
    _, events = _run(train_config(tiny_config, mode="linear", epochs=2, cache_features=False), colours)
    assert isinstance(events[-1], Finished) and sum(seen) == 2 * 24


def test_linear_mode_trains_only_the_head(tiny_config, colours):
    trainer, events = _run(train_config(tiny_config, mode="linear", epochs=2), colours)
    assert isinstance(events[-1], Finished)
    torch.manual_seed(trainer.config.seed)  # as the trainer does before building its model
    start, _, _ = build_model(trainer.config, trainer.class_names)
    before, after = start.state_dict(), trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("classifier."))
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])


def test_cancel_mid_epoch_yields_cancelled_with_the_best_checkpoint_so_far(tiny_config, colours):
    cancel = CancelToken()
    trainer = Trainer(train_config(tiny_config, batch_size=2), colours)
    events = []
    for event in trainer.run(cancel):
        events.append(event)
        if isinstance(event, Step) and (event.epoch, event.step) == (2, 3):
            cancel.cancel()
    assert event_kinds(events).endswith("epoch_end step step step cancelled")  # stopped within one step
    cancelled = events[-1]
    assert cancelled.epoch == 2 and cancelled.best_val_acc == events[-5].best_val_acc
    model, info = checkpoints.load_checkpoint(cancelled.checkpoint_dir)
    assert info.metrics["epoch"] == 1 and info.class_names == ("blue", "green", "red")
    assert model(torch.zeros(1, 3, 16, 16)).shape == (1, 3)
    # The best epoch's confusion matrix comes along, for the page to show after Stop.
    assert cancelled.confusion_matrix == info.metrics["confusion_matrix"]
    assert np.array(cancelled.confusion_matrix).sum() == 6 and cancelled.class_names == ["blue", "green", "red"]


def test_cancel_before_any_epoch_ended_keeps_the_weights_so_far(tiny_config, colours):
    cancel = CancelToken()
    events = []
    for event in Trainer(train_config(tiny_config, batch_size=2), colours).run(cancel):
        events.append(event)
        if isinstance(event, Step):
            cancel.cancel()
    assert event_kinds(events) == "started step cancelled"
    model, info = checkpoints.load_checkpoint(events[-1].checkpoint_dir)
    assert info.metrics["cancelled_mid_epoch"] is True and events[-1].best_val_acc is None
    assert events[-1].confusion_matrix is None
    assert predict.get_predictor(events[-1].checkpoint_dir).class_names == ("blue", "green", "red")


def test_seeded_runs_on_the_cpu_give_identical_metrics(tiny_config, colours):
    timings = ("seconds", "images_per_s", "eta_s", "checkpoint_dir")

    def metrics(events):
        kept = [e.to_dict() for e in events if e.kind in ("step", "epoch_end", "finished")]
        return [{k: v for k, v in d.items() if k not in timings} for d in kept]

    config = train_config(tiny_config, augment=True, epochs=2)
    first, second = metrics(_run(config, colours)[1]), metrics(_run(config, colours)[1])
    assert first == second and len(first) == 2 * 4 + 1
    other = metrics(_run(train_config(tiny_config, augment=True, epochs=2, seed=1), colours)[1])
    assert other != first


def test_the_saved_checkpoint_predicts_what_the_trained_model_predicts(tiny_config, colours):
    trainer, events = _run(train_config(tiny_config), colours)
    finished = events[-1]
    assert Path(finished.checkpoint_dir).parent == checkpoints.runs_dir().resolve()
    predictor = predict.get_predictor(finished.checkpoint_dir)
    paths = [path for path, _ in trainer.val_items]
    batch = torch.stack([predictor.preprocess(path) for path in paths])
    with torch.inference_mode():
        expected = torch.softmax(trainer.model(batch), 1)
    got = torch.softmax(predictor.logits(batch), 1)
    assert torch.allclose(expected, got, atol=1e-5)
    top = [labels[0][0] for labels in predictor.classify(batch, top_k=1)]
    assert top == [trainer.class_names[i] for i in expected.argmax(1).tolist()]
    info = checkpoints.read_checkpoint_info(finished.checkpoint_dir)
    assert info.metrics["val_acc"] == finished.best_val_acc and info.metrics["epoch"] == finished.best_epoch
    assert info.preprocessing.image_size == 16 and info.extra["train_config"]["mode"] == "scratch"


def _truncated_png() -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 40).convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


@pytest.mark.parametrize("mode", ["scratch", "linear"])
def test_an_image_corrupt_only_when_decoded_is_skipped_reported_and_training_goes_on(tiny_config, tmp_path, mode):
    root = colour_images(tmp_path / "d", per_class=4)
    (root / "red" / "broken.png").write_bytes(_truncated_png())
    files, report = data.load_image_folder(root)
    assert report.skipped == [] and len(files.train) == 13  # its header is fine
    trainer, events = _run(train_config(tiny_config, mode=mode, epochs=2, batch_size=4, val_fraction=0.5), files)
    assert isinstance(events[-1], Finished), events[-1]
    (path, reason), *more = events[-1].skipped
    assert not more and path.endswith("broken.png") and "truncated" in reason
    epoch_reports = [e.skipped for e in events if isinstance(e, EpochEnd)]
    assert sum(len(s) for s in epoch_reports) == 1  # reported once, not once per epoch


def test_an_exception_in_a_step_fails_the_run_and_the_next_run_succeeds(tiny_config, colours, monkeypatch):
    class Failing:
        def __getattr__(self, name):
            return getattr(torch.nn.functional, name)

        @staticmethod
        def cross_entropy(*args, **kwargs):
            if torch.is_grad_enabled():
                raise RuntimeError("boom in a step")
            return torch.nn.functional.cross_entropy(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(loop, "F", Failing())
        _, events = _run(train_config(tiny_config), colours)
    assert event_kinds(events) == "started failed"
    failed = events[-1]
    assert failed.message == "training failed: RuntimeError: boom in a step"
    assert "Traceback" in failed.detail and "Traceback" not in failed.message and failed.checkpoint_dir is None
    assert isinstance(_run(train_config(tiny_config, epochs=1), colours)[1][-1], Finished)


def test_out_of_memory_fails_with_advice_and_the_next_run_succeeds(tiny_config, colours, monkeypatch):
    def out_of_memory(self, x):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    with monkeypatch.context() as patch:
        patch.setattr(DenseNet, "forward", out_of_memory)
        _, events = _run(train_config(tiny_config), colours)
    message = events[-1].message
    assert isinstance(events[-1], Failed) and message.startswith("out of memory")
    assert "smaller batch size (now 6)" in message and "smaller image size (now 16)" in message
    assert "memory-efficient on" in message
    assert isinstance(_run(train_config(tiny_config, epochs=1), colours)[1][-1], Finished)


def test_a_failed_run_logs_its_message_and_traceback_at_error(tiny_config, colours, monkeypatch, caplog):
    def faulty_forward(self, x):
        raise RuntimeError("injected fault in the forward pass")

    with monkeypatch.context() as patch, caplog.at_level(logging.INFO, logger="densenet_demo.training.loop"):
        patch.setattr(DenseNet, "forward", faulty_forward)
        trainer, events = _run(train_config(tiny_config), colours)
    assert isinstance(events[-1], Failed)
    (error,) = [record for record in caplog.records if record.levelno >= logging.WARNING]
    logged = error.getMessage()
    assert error.levelno == logging.ERROR and trainer.run_id in logged and events[-1].message in logged
    # The server's log gets what the page leaves out: the traceback down to the line that raised.
    assert "Traceback" in logged and "in faulty_forward" in logged and "injected fault in the forward pass" in logged


def test_a_run_logs_its_start_and_its_end_at_info(tiny_config, colours, caplog):
    with caplog.at_level(logging.INFO, logger="densenet_demo.training"):
        trainer, events = _run(train_config(tiny_config, epochs=1), colours)
    assert isinstance(events[-1], Finished)
    started, finished = [record.getMessage() for record in caplog.records]
    assert all(record.levelno == logging.INFO for record in caplog.records)
    assert started.startswith(f"training run {trainer.run_id} started: scratch mode, 18 train and 6 val images")
    assert finished.startswith(f"training run {trainer.run_id} finished") and events[-1].checkpoint_dir in finished


def test_the_gpu_code_paths_run_on_the_cpu(tiny_config, colours):
    config = train_config(tiny_config, mode="finetune", amp="bf16", channels_last=True, memory_efficient=True, epochs=1)
    trainer, events = _run(config, colours)
    assert isinstance(events[-1], Finished), events[-1]
    assert _started(events).amp == "bfloat16" and trainer.model.cfg.memory_efficient
    with pytest.raises(ValueError, match="fp16 mixed precision needs a CUDA GPU"):
        Trainer(train_config(tiny_config, amp="fp16"), colours)


def test_training_on_the_cpu_runs_channels_last_by_default_and_contiguous_when_asked(tiny_config, colours):
    # oneDNN's CPU convolutions train ~13% and evaluate ~20% faster in NHWC (DenseNet-121, 64 px, 1 thread).
    trainer, events = _run(train_config(tiny_config, epochs=1), colours)
    assert isinstance(events[-1], Finished)
    conv = trainer.model.features.conv0.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    trainer, events = _run(train_config(tiny_config, epochs=1, channels_last=False), colours)
    assert isinstance(events[-1], Finished) and trainer.model.features.conv0.weight.is_contiguous()


def test_finetune_gives_the_backbone_a_tenth_of_the_head_lr(tiny_config):
    model = DenseNet(tiny_config)
    optimizer = make_optimizer(train_config(tiny_config, mode="finetune", lr=1e-3).resolved(), model)
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([1e-4, 1e-3])
    sgd = make_optimizer(train_config(tiny_config, optimizer="sgd").resolved(), model)
    assert sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.9


def test_training_continues_from_a_checkpoint_folder(tiny_config, colours):
    first = _run(train_config(tiny_config, epochs=1), colours)[1][-1]
    trainer, events = _run(train_config(tiny_config, mode="finetune", weights=first.checkpoint_dir, epochs=1), colours)
    assert _started(events).weights == f"checkpoint {Path(first.checkpoint_dir).name}"
    assert isinstance(events[-1], Finished) and trainer.out_dir != Path(first.checkpoint_dir)


def test_a_train_and_val_layout_is_honoured_by_the_trainer(tiny_config, tmp_path):
    colour_images(tmp_path / "d" / "train", per_class=4)
    colour_images(tmp_path / "d" / "val", per_class=1, seed=1)
    files, _ = data.load_image_folder(tmp_path / "d")
    trainer, events = _run(train_config(tiny_config, epochs=1), files, out_dir=tmp_path / "out")
    assert (_started(events).n_train, _started(events).n_val) == (12, 3)
    assert all("/val/" in str(path) for path, _ in trainer.val_items)
    assert events[-1].checkpoint_dir == str(tmp_path / "out")


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"model": "densenet40_k12", "weights": "imagenet", "mode": "linear"},
            "no ImageNet weights for densenet40_k12",
        ),
        ({"mode": "scratch", "weights": "imagenet"}, "scratch mode starts from random weights"),
        ({"batch_size": 0}, "batch_size must be an integer from 1"),
        ({"image_size": 100_000}, "image_size must be an integer from .* to 1024"),
        ({"lr": -1.0}, "lr must be a number"),
        ({"mode": "distill"}, "mode must be one of linear, finetune, scratch"),
    ],
)
def test_bad_settings_are_refused_with_a_clear_message(tiny_config, changes, message):
    with pytest.raises(ValueError, match=message):
        train_config(tiny_config, **changes)


def test_too_few_images_to_validate_is_a_dataset_error(tiny_config, tmp_path):
    files, _ = data.load_image_folder(colour_images(tmp_path / "d", per_class=1))
    with pytest.raises(data.DatasetError, match="at least 2 images"):
        Trainer(train_config(tiny_config), files)
