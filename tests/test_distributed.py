"""Distributed data-parallel training: the pure helpers, and torchrun runs of 2 gloo processes on the CPU.

The subprocess tests (``e2e``) train a tiny DenseNet-BC on 16 px colour squares: 45 images, 9 of them for
validation (3 per class), so each rank sees 18 training images (3 steps of 8) and 4 or 5 validation images.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY_CONFIG, colour_images, save_tiny_checkpoint

from densenet_demo.data.datasets import load_image_folder
from densenet_demo.model import DenseNet
from densenet_demo.serving.predict import get_predictor
from densenet_demo.training import distributed as D
from densenet_demo.training import events, runners
from densenet_demo.training.cancel import Stop
from densenet_demo.training.config import TrainConfig
from densenet_demo.training.data import FeatureCache
from densenet_demo.training.events import Cancelled, CancelToken, EpochEnd, Failed, Finished, Started, Step
from densenet_demo.training.loop import Trainer
from densenet_demo.weights import checkpoints, run_data

ROOT = Path(__file__).resolve().parent.parent
# One checkpoint and the record of the files it trained on (data.json, for its review), written by one process.
RUN_FILES = sorted([checkpoints.CHECKPOINT_META, checkpoints.CHECKPOINT_WEIGHTS, run_data.DATA_FILE])
SETTINGS = ["--image-size", "16", "--batch-size", "8", "--lr", "0.03", "--seed", "0"]


# ---------------------------------------------------------------------------------------------
# Pure helpers


def _ranks(world_size: int, **kwargs) -> list[D.DataParallel]:
    return [D.DataParallel(rank, world_size, rank, "gloo", **kwargs) for rank in range(world_size)]


def test_training_shares_are_the_same_split_on_every_rank_and_cover_every_image():
    dataset = list(range(19))

    def shares(epoch: int) -> list[list[int]]:
        samplers = [dp.sampler(dataset, shuffle=True, seed=7) for dp in _ranks(2)]
        for sampler in samplers:
            D.DataParallel.set_epoch(type("Loader", (), {"sampler": sampler})(), epoch)
        return [list(sampler) for sampler in samplers]

    first, again, later = shares(1), shares(1), shares(2)
    assert first == again  # derived from seed and epoch only: what every process computes for every rank
    assert first != later  # a new shuffle each epoch
    assert [len(share) for share in first] == [10, 10] == [D.DataParallel(0, 2, 0, "gloo").samples_per_rank(19)] * 2
    together = first[0] + first[1]
    assert set(together) == set(dataset) and len(together) == 20  # every image, one twice to even the shares


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_validation_shares_cover_each_image_once_in_order(world_size):
    for n in range(12):
        ranks = _ranks(world_size)
        assert [i for dp in ranks for i in dp.sampler(list(range(n)), shuffle=False, seed=0)] == list(range(n))
        assert [x for dp in ranks for x in dp.shard("abcdefghijk"[:n])] == list("abcdefghijk"[:n])
        sizes = [len(dp.shard(range(n))) for dp in ranks]
        assert max(sizes) - min(sizes) <= 1


def test_gathered_shares_drop_their_padding_and_keep_the_images_order():
    features = torch.arange(7 * 3, dtype=torch.float32).view(7, 3)
    shares = [features[slice(*D.shard_bounds(7, rank, 3))] for rank in range(3)]
    longest = max(len(s) for s in shares)
    padded = [torch.cat([s, torch.full((longest - len(s), 3), -1.0)]) for s in shares]
    assert torch.equal(D.concat_trimmed(padded, [len(s) for s in shares]), features)


def test_summed_shares_give_the_whole_sets_counts_and_batch_rule():
    dp = D.DataParallel(0, 4, 0, "gloo")
    assert dp.describe_batch(8, 0.01, sharded=True) == (
        32,
        "none: lr 0.01 as given for the global batch of 32 (4 x 8); the linear scaling rule would use 0.04",
    )
    assert dp.describe_batch(8, 0.01, sharded=False)[0] == 8  # linear mode: the whole cache on every rank
    # A one-process group: the reductions run for real and keep integers integers.
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        alone = D.DataParallel(0, 1, 0, "gloo")
        assert alone.sum(3, 2.5) == (3, 2.5) and isinstance(alone.sum(3, 2.5)[0], int)
        cancel, seen = CancelToken(), []
        for batch in alone.lockstep(iter(range(5)), cancel):
            seen.append(batch)
            if batch == 1:
                cancel.cancel()
            if cancel.cancelled:
                break
        assert seen == [0, 1]
        gathered = alone.gather_cache(FeatureCache(torch.ones(3, 2), torch.tensor([0, 1, 2])))
        assert gathered.features.shape == (3, 2) and gathered.labels.tolist() == [0, 1, 2]
    finally:
        dist.destroy_process_group()


def test_a_stop_set_after_the_ranks_agreed_on_a_batch_stops_at_the_next_agreement():
    # A Stop signal can reach one rank just after the ranks agreed to take a batch: that rank must take it too
    # (the others are already in its collectives), and every rank stops at the next agreement.
    import torch.distributed as dist

    def taken(batches) -> list[int]:
        seen = []
        with pytest.raises(Stop):
            for batch in batches:
                seen.append(batch)
                if batch == 1:
                    cancel.cancel()  # the signal, after batch 1 was agreed
        return seen

    cancel = CancelToken()
    assert taken(D.Alone().epoch_batches(iter(range(5)), None, 1, cancel)) == [0, 1]
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        cancel = CancelToken()
        assert taken(D.DataParallel(0, 1, 0, "gloo").lockstep(iter(range(5)), cancel)) == [0, 1]
    finally:
        dist.destroy_process_group()


def test_sync_batchnorm_keeps_the_checkpoint_format(tiny_config):
    model = DenseNet(tiny_config)
    keys = list(model.state_dict())
    (dp,) = _ranks(1, sync_batchnorm=True)
    converted = dp.prepare(model, trains_backbone=True)
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.modules())
    assert not any(type(m) is torch.nn.BatchNorm2d for m in converted.modules())
    assert list(converted.state_dict()) == keys
    untouched = dp.prepare(DenseNet(tiny_config), trains_backbone=False)  # linear mode: the backbone is frozen
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in untouched.modules())


def test_sync_batchnorm_without_cuda_is_refused_with_a_clear_message(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="--sync-bn needs CUDA GPUs"):
        with D.data_parallel(sync_batchnorm=True, device="cpu"):
            pass


def test_outside_torchrun_there_is_no_process_group(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    with D.data_parallel() as dp:
        assert dp is None
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    with D.data_parallel() as dp:
        assert dp is None and D.is_main_process()


def test_events_come_back_from_json_as_the_trainers_dataclasses():
    started = Started("r", ["a", "b"], 10, 2, 1, 3, "cpu", "finetune", None, "random", {"x": 1}, 2, 16, "none")
    finished = Finished(1.0, 1, "d", [[1]], ["a"], 1, False, 1.0, [("p", "why")])
    for event in (started, Step(1, 1, 2, 0.5, 1.0, 0.1, 10.0, None, 1.0), Failed("boom"), Cancelled(None, 1, None)):
        assert events.from_dict(json.loads(json.dumps(event.to_dict()))) == event
    with pytest.raises(ValueError, match="not a training event"):
        events.from_dict({"event": "dataset", "classes": []})
    record = json.loads(json.dumps(finished.to_dict()))
    assert events.from_dict({**record, "later_field": 1}) == finished  # a newer writer's field is left out


def test_gpu_count_honours_the_test_switch(monkeypatch):
    monkeypatch.setenv(D.ENV_FAKE_GPUS, "2")
    assert D.gpu_count() == 2
    monkeypatch.delenv(D.ENV_FAKE_GPUS)
    assert D.gpu_count() == (torch.cuda.device_count() if torch.cuda.is_available() else 0)


# ---------------------------------------------------------------------------------------------
# torchrun on the CPU


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Colour squares, 15 a class (conftest's ``colour_folder`` has 8): see the module's docstring."""
    return colour_images(tmp_path_factory.mktemp("folder"), per_class=15)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """conftest's ``tiny_checkpoint``, once for the file: the torchrun runs below all start from it."""
    torch.manual_seed(0)
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny", DenseNet(TINY_CONFIG), ["a", "b", "c"])


def _torchrun(weights_dir: Path, args: list[str], *, nproc: int = 2, script: list[str] | None = None, env=None):
    """``torchrun --standalone`` (a free port of its own) running ``train``; its own weights folder."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    command += [*(script or ["-m", "densenet_demo"]), "train", *args]
    env = {**os.environ, "DENSENET_DEMO_WEIGHTS": str(weights_dir), "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=weights_dir.parent, timeout=300)


def _events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, folder, tiny_checkpoint):
    weights_dir = tmp_path_factory.mktemp("two") / "weights"
    args = [str(folder), "--model", str(tiny_checkpoint), "--mode", "finetune", "--epochs", "3", *SETTINGS, "--json"]
    result = _torchrun(weights_dir, args)
    assert result.returncode == 0, result.stderr[-3000:]
    return weights_dir, result


@pytest.mark.e2e
def test_two_processes_write_one_checkpoint_and_one_stream_of_events(two_process_run):
    weights_dir, result = two_process_run
    events = _events(result.stdout)
    kinds = [e["event"] for e in events]
    assert kinds[:3] == ["dataset", "preparing", "started"] and kinds[-1] == "finished"
    assert kinds.count("started") == 1 and kinds.count("epoch_end") == 3 and kinds.count("step") == 3 * 3
    started = events[2]
    assert started["world_size"] == 2 and started["global_batch_size"] == 16 and started["steps_per_epoch"] == 3
    assert "linear scaling rule would use 0.06" in started["lr_scaling"]
    (run,) = (weights_dir / "runs").iterdir()  # one checkpoint, from rank 0
    assert result.stdout.strip().splitlines()[-1] == str(run) == events[-1]["checkpoint_dir"]
    assert sorted(p.name for p in run.iterdir()) == RUN_FILES


@pytest.mark.e2e
def test_val_accuracy_is_over_the_whole_val_set_and_the_checkpoint_predicts_it(two_process_run, folder):
    _, result = two_process_run
    finished = _events(result.stdout)[-1]
    files, _ = load_image_folder(folder)
    _, val = files.split(0.2, 0)
    assert sum(map(sum, finished["confusion_matrix"])) == len(val) == 9  # not one rank's 4 or 5
    predictor = get_predictor(finished["checkpoint_dir"])
    predicted = predictor.predict_images([str(path) for path, _ in val], top_k=1)
    names = list(files.class_names)
    confusion = [[0] * 3 for _ in names]
    for (_, label), prediction in zip(val, predicted, strict=True):
        confusion[label][names.index(prediction.labels[0][0])] += 1
    assert confusion == finished["confusion_matrix"]
    assert finished["best_val_acc"] == pytest.approx(sum(confusion[i][i] for i in range(3)) / len(val))


@pytest.mark.e2e
def test_one_and_two_processes_reach_comparable_accuracy(two_process_run, folder, tiny_checkpoint, tmp_path):
    # Two processes see each epoch's images in another order, with a global batch of 16 instead of 8, so half
    # as many optimizer steps: the runs are not the same computation. The task is easy enough for both to end
    # well above chance (1/3); they may differ by up to two of the nine validation images.
    files, _ = load_image_folder(folder)
    config = TrainConfig(
        model=str(tiny_checkpoint), mode="finetune", epochs=3, image_size=16, batch_size=8, lr=0.03, device="cpu"
    )
    one = list(Trainer(config, files, out_dir=tmp_path / "one").run())[-1]
    two = _events(two_process_run[1].stdout)[-1]
    assert isinstance(one, Finished), one
    assert one.best_val_acc >= 6 / 9 and two["best_val_acc"] >= 6 / 9
    assert abs(one.best_val_acc - two["best_val_acc"]) <= 2 / 9 + 1e-9


@pytest.mark.e2e
def test_linear_mode_gathers_the_feature_cache_and_matches_one_process(folder, tiny_checkpoint, tmp_path):
    # Each rank runs the backbone on its half; gathered in order, every rank trains the head on the whole
    # cache exactly as one process does: the same accuracy and confusion matrix.
    args = [str(folder), "--model", str(tiny_checkpoint), "--mode", "linear", "--epochs", "4", *SETTINGS, "--json"]
    result = _torchrun(tmp_path / "weights", args)
    assert result.returncode == 0, result.stderr[-3000:]
    events = _events(result.stdout)
    started = next(e for e in events if e["event"] == "started")
    assert started["world_size"] == 2 and started["global_batch_size"] == 8
    files, _ = load_image_folder(folder)
    config = TrainConfig(
        model=str(tiny_checkpoint), mode="linear", epochs=4, image_size=16, batch_size=8, lr=0.03, device="cpu"
    )
    one = list(Trainer(config, files, out_dir=tmp_path / "one").run())[-1]
    assert isinstance(one, Finished), one
    assert events[-1]["best_val_acc"] == pytest.approx(one.best_val_acc)
    assert events[-1]["confusion_matrix"] == one.confusion_matrix


@pytest.mark.e2e
def test_a_failing_rank_ends_the_run_with_its_message_and_no_half_written_checkpoint(folder, tiny_checkpoint, tmp_path):
    weights_dir = tmp_path / "weights"
    args = [str(folder), "--model", str(tiny_checkpoint), "--mode", "finetune", "--epochs", "3", *SETTINGS, "--json"]
    fail = {"DENSENET_DEMO_FAIL_RANK": "1", "DENSENET_DEMO_FAIL_STEP": "5"}  # epoch 2, step 2
    result = _torchrun(weights_dir, args, script=[str(ROOT / "tests" / "distributed_fault.py")], env=fail)
    assert result.returncode != 0
    events = _events(result.stdout)
    assert [e["event"] for e in events].count("epoch_end") == 1
    failed = events[-1]
    assert failed["event"] == "failed"
    assert failed["message"].startswith("process 1 of 2 failed: ") and "injected failure on rank 1" in failed["message"]
    (run,) = (weights_dir / "runs").iterdir()  # epoch 1's checkpoint, whole, and nothing half-written beside it
    assert failed["checkpoint_dir"] == str(run)
    assert sorted(p.name for p in run.iterdir()) == RUN_FILES
    assert checkpoints.load_checkpoint(run)[1].metrics["epoch"] == 1


def _processes_with(text: str) -> list[int]:
    """Processes whose environment mentions ``text`` (this test's own weights folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _tiny_run(tiny_checkpoint: Path, **changes) -> TrainConfig:
    settings = dict(model=str(tiny_checkpoint), mode="finetune", image_size=16, batch_size=8, lr=0.03, seed=0)
    return TrainConfig(**{**settings, **changes})


@pytest.mark.e2e
def test_stop_from_the_app_ends_both_ranks(folder, tiny_checkpoint, tmp_path, monkeypatch):
    weights_dir = tmp_path / "weights"
    monkeypatch.setenv(D.ENV_FAKE_GPUS, "2")
    monkeypatch.setenv("DENSENET_DEMO_WEIGHTS", str(weights_dir))
    assert D.gpu_count() == 2
    files, report = load_image_folder(folder)
    run = runners.start(_tiny_run(tiny_checkpoint, epochs=500), files, report=report, where="torchrun")
    assert run.processes == 2 and run.out_dir == (weights_dir / "runs" / run.run_id).resolve()
    seen = []
    for event in run.events():
        seen.append(event)
        if isinstance(event, EpochEnd):
            run.stop()
    started = next(e for e in seen if isinstance(e, Started))  # after the Preparing events
    assert started.world_size == 2 and started.run_id == run.run_id  # the run the parent named
    end = seen[-1]
    assert isinstance(end, Cancelled), end
    assert end.epoch < 500 and end.best_val_acc is not None and end.checkpoint_dir == str(run.out_dir)
    info = checkpoints.load_checkpoint(end.checkpoint_dir)[1]
    assert info.metrics["epoch"] >= 1 and info.extra["dataset"]["source"] == report.source
    assert _processes_with(str(weights_dir)) == []  # torchrun and both ranks are gone


@pytest.mark.e2e
def test_a_run_the_child_cannot_start_ends_with_its_message_as_an_event(folder, tiny_checkpoint, monkeypatch):
    monkeypatch.setenv(D.ENV_FAKE_GPUS, "2")  # the child's processes see no GPU
    files, _ = load_image_folder(folder)
    run = runners.start(_tiny_run(tiny_checkpoint, epochs=1, device="cuda"), files, where="torchrun")
    (failed,) = list(run.events())
    assert isinstance(failed, Failed) and "no usable GPU" in failed.message and failed.checkpoint_dir is None
