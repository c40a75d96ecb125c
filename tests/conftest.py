"""Shared fixtures: tiny models, generated images, a private weights folder per test."""

from __future__ import annotations

import pytest
import torch

from densenet_demo.config import DenseNetConfig


@pytest.fixture(autouse=True)
def _private_weights_dir(tmp_path_factory, monkeypatch):
    """Every test gets its own weights cache, so nothing touches the repo's weights/ folder."""
    path = tmp_path_factory.mktemp("weights")
    monkeypatch.setenv("DENSENET_DEMO_WEIGHTS", str(path))
    return path


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny_config() -> DenseNetConfig:
    """A DenseNet-BC small enough to train in a second on a CPU."""
    return DenseNetConfig(
        growth_rate=4,
        block_config=(2, 2),
        num_init_features=8,
        bn_size=2,
        compression=0.5,
        stem="cifar",
        num_classes=3,
    )
