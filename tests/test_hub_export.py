"""`export --format hub`: the folder a push uploads, its model card and config, and loading the folder back."""

from __future__ import annotations

import json

import pytest
from hub_helpers import COLOURS, TORCHVISION_LIKE, colour_images, saved_run
from huggingface_hub import ModelCard
from safetensors import safe_open

from densenet_demo.cli.main import main
from densenet_demo.config import DenseNetConfig
from densenet_demo.serving.hub import export_hub
from densenet_demo.serving.predict import build_predictor
from densenet_demo.weights import checkpoints, hub
from densenet_demo.weights import resolver as W

CIFAR_TINY = DenseNetConfig(
    growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2, stem="cifar", num_classes=3
)


@pytest.fixture
def images(tmp_path):
    return sorted(colour_images(tmp_path / "images", per_class=2).rglob("*.png"))


def test_the_card_is_a_model_card_huggingface_hub_reads_with_the_runs_facts(tmp_path):
    saved_run("r1")
    folder = export_hub("run:r1", tmp_path / "out", repo_id="alice/colours")
    card = ModelCard.load(folder.folder / "README.md")
    assert card.data.library_name == "densenet_demo" and card.data.license == "mit"
    assert card.data.pipeline_tag == "image-classification"
    assert {"image-classification", "densenet"} <= set(card.data.tags)
    (result,) = card.data.eval_results
    assert result.metric_type == "accuracy" and result.metric_value == pytest.approx(5 / 6, abs=1e-4)
    assert result.task_type == "image-classification" and result.dataset_name == "colours"
    text = card.text
    for row in ("| blue | 10 | 2 | 100.0% |", "| green | 10 | 2 | 50.0% |", "| red | 10 | 2 | 100.0% |"):
        assert row in text
    assert "30 images in 3 classes from `colours`" in text and "| learning rate (head) | 0.001 |" in text
    assert "![Validation confusion matrix" in text and "--model hf-hub:alice/colours" in text
    assert (folder.folder / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_file_of_the_folder_names_a_path_of_the_training_machine(tmp_path):
    saved_run("r1")
    folder = export_hub("run:r1", tmp_path / "out")
    for name in folder.files:
        content = (folder.folder / name).read_bytes()
        for secret in (b"/srv/uploads", b"session-x", b"/home/someone", str(tmp_path).encode()):
            assert secret not in content, (name, secret)
    with safe_open(str(folder.folder / "model.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}  # the run's own record (with its paths) stays home


def test_config_json_has_the_architecture_class_names_and_timms_preprocessing_fields(tmp_path):
    saved_run("r1")
    config = json.loads((export_hub("run:r1", tmp_path / "out").folder / "config.json").read_text())
    assert DenseNetConfig.from_dict({k: config[k] for k in DenseNetConfig.__dataclass_fields__}) == TORCHVISION_LIKE
    assert config["num_classes"] == 3 and config["label_names"] == list(COLOURS)
    p = config["pretrained_cfg"]
    run = checkpoints.read_checkpoint_info(checkpoints.run_path("r1")).preprocessing
    assert p["input_size"] == [3, run.image_size, run.image_size] and p["resize_size"] == run.resize_size
    assert p["mean"] == list(run.mean) and p["std"] == list(run.std)
    assert p["interpolation"] == "bilinear" and p["crop_mode"] == "center" and p["color_mode"] == "RGB"
    assert p["crop_pct"] == pytest.approx(run.image_size / run.resize_size, abs=1e-6)


def test_predict_with_the_folder_gives_the_runs_own_answers(tmp_path, images, capsys):
    saved_run("r1")
    assert main(["export", "run:r1", "--format", "hub", "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    answers = {}
    for model in ("run:r1", str(tmp_path / "out")):
        assert main(["predict", *map(str, images), "--model", model, "--json", "--top-k", "3"]) == 0
        answers[model] = [json.loads(line)["top_k"] for line in capsys.readouterr().out.splitlines()]
    assert answers["run:r1"] == answers[str(tmp_path / "out")] and len(answers["run:r1"]) == len(images)


def test_a_cifar_model_loads_back_too_and_its_card_says_torchvision_cannot_build_it(tmp_path, images):
    saved_run("c1", CIFAR_TINY)
    folder = export_hub("run:c1", tmp_path / "out")
    assert (
        "torchvision's `DenseNet` has no option for this architecture (a CIFAR stem"
        in (folder.folder / "README.md").read_text()
    )
    run, exported = build_predictor("run:c1"), build_predictor(str(folder.folder))
    assert exported.weights_label == "Hub-format folder out" and exported.class_names == run.class_names
    assert [p.labels for p in run.predict(images)] == [p.labels for p in exported.predict(images)]


def test_a_folder_whose_config_and_weights_disagree_is_refused_with_the_reason(tmp_path):
    saved_run("r1")
    out = export_hub("run:r1", tmp_path / "out").folder
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "label_names": ["a", "b"]}))
    with pytest.raises(checkpoints.CheckpointError, match="2 label_names for num_classes 3"):
        W.load_model(str(out))
    (out / "config.json").write_text(json.dumps({**config, "growth_rate": 6}))
    with pytest.raises(checkpoints.CheckpointError, match="do not match the recorded config"):
        W.load_model(str(out))


def test_only_fine_tuned_runs_export_to_the_hub_and_a_used_folder_is_not_overwritten(tmp_path, capsys):
    assert main(["export", "densenet_fashion", "--format", "hub", "--out", str(tmp_path / "a")]) == 2
    assert "not a fine-tuned run" in capsys.readouterr().err
    saved_run("r1")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    assert main(["export", "run:r1", "--format", "hub", "--out", str(tmp_path / "b")]) == 2
    assert "is not empty" in capsys.readouterr().err and (tmp_path / "b" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize(
    ("text", "repo_id", "revision"),
    [
        ("hf-hub:alice/cats", "alice/cats", None),
        ("alice/cats.v2@main", "alice/cats.v2", "main"),
        ("a/b@" + "f" * 40, "a/b", "f" * 40),
    ],
)
def test_hub_names_parse(text, repo_id, revision):
    ref = hub.parse_hub_ref(text)
    assert (ref.repo_id, ref.revision) == (repo_id, revision)


@pytest.mark.parametrize("text", ["hf-hub:cats", "hf-hub:a/b/c", "hf-hub:../x", "hf-hub:a/b@bad rev", "hf-hub:"])
def test_bad_hub_names_say_what_is_expected(text):
    with pytest.raises(ValueError, match="USER/NAME|not a revision"):
        hub.parse_hub_ref(text)
