"""Runs to push and load in the Hub tests: one saved directly (metrics as a real run records them) and one really
trained by the command line on generated images; and the environment that points huggingface_hub at a stand-in."""

from __future__ import annotations

import hashlib
from pathlib import Path

import helpers
import pytest
from helpers import trained_looking

from densenet_demo.config import DenseNetConfig
from densenet_demo.data.images import default_preprocessing
from densenet_demo.model import DenseNet
from densenet_demo.weights import checkpoints

# Small enough to train in seconds; the ImageNet stem and θ = 0.5 make it one torchvision's DenseNet builds too.
TORCHVISION_LIKE = DenseNetConfig(
    growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2, compression=0.5, stem="imagenet", num_classes=3
)
COLOURS = {"blue": (40, 60, 200), "green": (40, 180, 60), "red": (200, 40, 40)}


def colour_images(root: Path, per_class: int, seed: int = 0) -> Path:
    """Noisy 40×48 images of three colours: a tiny model tells them apart in an epoch or two."""
    return helpers.colour_images(root, per_class, seed, size=(40, 48))


def saved_run(run_id: str, config: DenseNetConfig = TORCHVISION_LIKE, *, image_size: int = 32) -> Path:
    """A run in the runs folder with what a trained run records: metrics per class, confusion, data, settings."""
    model = trained_looking(DenseNet(config))
    names = list(COLOURS)[: config.num_classes]
    preprocessing = default_preprocessing(config, image_size)
    return checkpoints.save_checkpoint(
        checkpoints.run_path(run_id),
        model,
        class_names=names,
        preprocessing=preprocessing,
        metrics={
            "val_acc": 5 / 6,
            "val_loss": 0.41,
            "epoch": 3,
            "per_class_val_acc": {"blue": 1.0, "green": 0.5, "red": 1.0},
            "confusion_matrix": [[2, 0, 0], [1, 1, 0], [0, 0, 2]],
            "n_train": 24,
            "n_val": 6,
        },
        extra={
            "train_config": {"model": "/home/someone/private/base-ckpt", "mode": "finetune", "epochs": 3, "lr": 1e-3},
            "dataset": {"source": "/srv/uploads/session-x/colours.zip", "counts": {"blue": 10, "green": 10, "red": 10}},
            "initial_weights": "ImageNet (torchvision IMAGENET1K_V1)",
            "run_id": run_id,
        },
    ).path


def folder_digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and a hash of its content: equal before and after means untouched."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*")}


def hub_env(monkeypatch: pytest.MonkeyPatch, url: str, cache: Path, token: str | None) -> None:
    """huggingface_hub pointed at ``url`` with its cache in ``cache``, signed in with ``token`` (None: nobody)."""
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    if token is None:
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
        from huggingface_hub import constants

        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(cache / "no-token-file"))
    else:
        monkeypatch.setenv("HF_TOKEN", token)
