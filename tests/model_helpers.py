"""Helpers for tests that need a model whose outputs depend on every weight being where it belongs."""

from __future__ import annotations

import torch

from densenet_demo.model import DenseNet


def trained_looking(model: DenseNet) -> DenseNet:
    """``model`` in eval mode with BatchNorms away from their identity init, so a misplaced tensor shows."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()
