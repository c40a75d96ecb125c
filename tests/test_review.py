"""The review of a run: the data it records, its confusions and their files, the likely mislabels, and the data it
is reviewed on (recorded, given again, gone); a tiny DenseNet on generated images."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import COLOURS, TINY_CONFIG, colour_images

from densenet_demo.data import datasets as data
from densenet_demo.training.config import TrainConfig
from densenet_demo.training.events import Finished
from densenet_demo.training.loop import Trainer
from densenet_demo.training.mislabels import CrossFit, cross_fit_probabilities, self_confidence_rank
from densenet_demo.training.review import ReviewError, review_run
from densenet_demo.weights import checkpoints, run_data


def _train(tiny_config, folder: Path, out: Path) -> Trainer:
    files, report = data.load_image_folder(folder)
    config = TrainConfig(
        model=tiny_config, weights="random", mode="scratch", epochs=4, batch_size=8, lr=1e-2, optimizer="adamw",
        image_size=16, val_fraction=0.3, device="cpu",
    )  # fmt: skip
    trainer = Trainer(config, files, report=report, out_dir=out)
    assert isinstance(list(trainer.run())[-1], Finished)
    return trainer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run on 30 colour squares, 9 of them for validation; (trainer, data folder, run folder)."""
    root = tmp_path_factory.mktemp("review")
    folder = colour_images(root / "colours", per_class=10)
    trainer = _train(TINY_CONFIG, folder, root / "run")
    return trainer, folder, root / "run"


@pytest.fixture(scope="module")
def reviewed(trained):
    """The tiny run reviewed on its recorded data."""
    return review_run(trained[2], device="cpu")


def test_a_run_records_the_files_it_trained_and_validated_on_beside_its_checkpoint(trained):
    trainer, folder, run = trained
    record = run_data.read_run_data(run)
    assert record.root == folder.resolve() and record.class_names == ("blue", "green", "red")
    assert sorted(record.train) == sorted(trainer.train_items) and sorted(record.val) == sorted(trainer.val_items)
    stored = json.loads((run / run_data.DATA_FILE).read_text())
    assert stored["train"][0][0] in {f"{c}/{i}.png" for c in COLOURS for i in range(10)}  # relative to the root


def test_the_record_stays_on_this_machine_a_download_holds_only_the_model(trained, tmp_path):
    _, _, run = trained
    with zipfile.ZipFile(checkpoints.zip_checkpoint(run, tmp_path)) as z:
        assert sorted(Path(n).name for n in z.namelist()) == [
            checkpoints.CHECKPOINT_META,
            checkpoints.CHECKPOINT_WEIGHTS,
        ]
    assert "blue/0.png" not in (run / checkpoints.CHECKPOINT_META).read_text()  # no file list in what is shared


def test_the_review_counts_the_validation_images_as_the_run_did(trained, reviewed):
    _, folder, run = trained
    review = reviewed
    info = checkpoints.read_checkpoint_info(run)
    assert review.confusion_matrix().tolist() == info.metrics["confusion_matrix"]
    assert len(review.files) == 30 and int(review.trained_on.sum()) == 21
    assert all(not f.startswith("/") and str(folder) not in f for f in review.files)


def test_json_has_exactly_the_confusions_and_the_suspects_with_relative_files(reviewed):
    review = reviewed
    result = review.to_dict()
    assert set(result) == {"confusions", "suspected_mislabels"}
    matrix = review.confusion_matrix()
    assert sum(c["count"] for c in result["confusions"]) == matrix.sum() - np.trace(matrix)
    for c in result["confusions"]:
        assert set(c) == {"true", "predicted", "count", "files"} and c["true"] != c["predicted"]
        assert len(c["files"]) == c["count"] and all(f.split("/")[0] == c["true"] for f in c["files"])
    for s in result["suspected_mislabels"]:
        assert set(s) == {"file", "label", "suggested", "p_label", "p_suggested"}
        assert s["suggested"] != s["label"] and s["p_suggested"] >= s["p_label"] and s["file"].startswith(s["label"])
    p_labels = [s["p_label"] for s in result["suspected_mislabels"]]
    assert p_labels == sorted(p_labels)


def test_a_cell_lists_its_images_most_confident_first_with_their_top_3(reviewed):
    review = reviewed
    for true in range(3):
        for predicted in range(3):
            rows = review.cell(true, predicted)
            assert len(rows) == review.confusion_matrix()[true, predicted]
            confidence = [review.probabilities[r, predicted] for r in rows]
            assert confidence == sorted(confidence, reverse=True)
            for r in rows:
                top = review.top(r)
                assert len(top) == 3 and top[0][0] == review.class_names[predicted]
                assert abs(sum(p for _, p in top) - 1) < 1e-4  # three classes: the top 3 are all of them


def test_most_confidently_wrong_are_held_out_mistakes_in_falling_confidence(reviewed):
    review = reviewed
    rows = review.most_confidently_wrong()
    assert all(not review.trained_on[r] and review.predicted[r] != review.labels[r] for r in rows)
    assert len(rows) == review.confusion_matrix().sum() - np.trace(review.confusion_matrix())
    confidence = [review.probabilities[r].max() for r in rows]
    assert confidence == sorted(confidence, reverse=True)


def test_the_same_data_given_again_elsewhere_is_known_by_its_place_in_the_folder(trained, reviewed, tmp_path):
    _, folder, run = trained
    copy = shutil.copytree(folder, tmp_path / "copy")
    again = review_run(run, copy, device="cpu")
    recorded = reviewed
    assert dict(zip(again.files, again.trained_on, strict=True)) == dict(
        zip(recorded.files, recorded.trained_on, strict=True)
    )
    archive = shutil.make_archive(str(tmp_path / "colours"), "zip", folder)
    zipped = review_run(run, archive, device="cpu")
    assert sorted(zipped.files) == sorted(recorded.files) and zipped.to_dict() == recorded.to_dict()


def test_data_gone_from_the_machine_asks_for_it_without_naming_server_paths(tiny_config, tmp_path):
    folder = colour_images(tmp_path / "colours", per_class=4)
    _train(tiny_config, folder, tmp_path / "run")
    shutil.rmtree(folder)
    with pytest.raises(ReviewError, match="no longer on this machine") as e:
        review_run(tmp_path / "run", device="cpu")
    assert str(tmp_path) not in str(e.value)


def test_data_with_a_class_the_run_does_not_know_is_refused(trained, tmp_path):
    _, folder, run = trained
    other = shutil.copytree(folder, tmp_path / "other")
    (other / "red").rename(other / "purple")
    with pytest.raises(ReviewError, match="'purple' of the data is not one of run"):
        review_run(run, other, device="cpu")


def test_a_run_without_a_record_asks_for_its_data_and_splits_data_given_as_it_was_trained(trained, tmp_path):
    trainer, folder, run = trained
    old = shutil.copytree(run, tmp_path / "old-run")
    (old / run_data.DATA_FILE).unlink()
    with pytest.raises(ReviewError, match="did not record its data"):
        review_run(old, device="cpu")
    review = review_run(old, folder, device="cpu")
    held_out = {f for f, t in zip(review.files, review.trained_on, strict=True) if not t}
    assert held_out == {f"{p.parent.name}/{p.name}" for p, _ in trainer.val_items}


def test_an_unknown_run_and_an_unknown_device_say_so(trained):
    with pytest.raises(ReviewError, match="no run 'nope'"):
        review_run("nope")
    with pytest.raises(ReviewError, match="no device 'gpu7'"):
        review_run(trained[2], device="gpu7")


# ---------------------------------------------------------------------------------------------
# The mislabel score


def test_self_confidence_ranks_only_disagreements_lowest_given_probability_first():
    labels = np.array([0, 1, 2, 0])
    probabilities = np.array([[0.9, 0.05, 0.05], [0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.4, 0.5, 0.1]])
    assert self_confidence_rank(labels, probabilities).tolist() == [2, 1, 3]


def test_the_cross_fit_finds_flipped_labels_that_an_overfit_head_would_absorb():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 4, (4, 32))
    labels = np.repeat(np.arange(4), 50)
    features = torch.tensor(centres[labels] + rng.normal(0, 1, (200, 32)), dtype=torch.float32)
    noisy = labels.copy()
    flipped = rng.choice(200, 10, replace=False)
    noisy[flipped] = (labels[flipped] + 1) % 4
    probabilities = cross_fit_probabilities(features, torch.tensor(noisy), 4, CrossFit())
    ranked = self_confidence_rank(noisy, probabilities.numpy())
    assert set(ranked[:10].tolist()) == set(flipped.tolist())
    assert probabilities.shape == (200, 4) and torch.allclose(probabilities.sum(1), torch.ones(200))


def test_the_cross_fit_declines_when_there_are_too_few_images_to_leave_folds_out():
    assert cross_fit_probabilities(torch.randn(7, 4), torch.tensor([0, 1] * 3 + [0]), 2, CrossFit(folds=5)) is None


def test_an_unreadable_record_is_a_clear_checkpoint_error(tmp_path):
    (tmp_path / run_data.DATA_FILE).write_text("{not json")
    with pytest.raises(checkpoints.CheckpointError, match="record of the data is unreadable"):
        run_data.read_run_data(tmp_path)
