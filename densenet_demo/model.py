"""DenseNet as a plain torch module, built from a ``DenseNetConfig``.

Module names follow torchvision's ``models/densenet.py`` (``features.conv0``, ``denseblock1``,
``denselayer1.norm1``, ``transition1``, ``norm5``, ``classifier``): those names are the checkpoint
format, so torchvision's ImageNet state dicts load into the four ImageNet presets with ``strict=True``.
Paper: https://arxiv.org/abs/1608.06993; memory-efficient variant: https://arxiv.org/abs/1707.06990
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import Tensor

from .config import DenseNetConfig, transition_channels

__all__ = ["DenseBlock", "DenseLayer", "DenseNet", "Transition"]


class DenseLayer(nn.Module):
    """H_l: BN-ReLU-Conv1x1(bn_size·k)-BN-ReLU-Conv3x3(k), or BN-ReLU-Conv3x3(k) without bottleneck."""

    def __init__(
        self,
        num_input_features: int,
        growth_rate: int,
        bn_size: int,
        drop_rate: float,
        memory_efficient: bool = False,
    ) -> None:
        super().__init__()
        self.bottleneck = bn_size > 0
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        if self.bottleneck:
            self.conv1 = nn.Conv2d(num_input_features, bn_size * growth_rate, kernel_size=1, stride=1, bias=False)
            self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
            self.relu2 = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, kernel_size=3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(num_input_features, growth_rate, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = float(drop_rate)
        self.memory_efficient = memory_efficient

    def bn_function(self, inputs: list[Tensor]) -> Tensor:
        concatenated = torch.cat(inputs, 1)
        return self.conv1(self.relu1(self.norm1(concatenated)))

    def any_requires_grad(self, inputs: list[Tensor]) -> bool:
        return any(t.requires_grad for t in inputs)

    def call_checkpoint_bottleneck(self, inputs: list[Tensor]) -> Tensor:
        # Recompute concat + BN-ReLU-conv1 in backward instead of storing them (quadratic -> linear memory).
        def closure(*inputs: Tensor) -> Tensor:
            return self.bn_function(list(inputs))

        return cp.checkpoint(closure, *inputs, use_reentrant=False)

    def forward(self, input: Tensor | list[Tensor]) -> Tensor:
        prev_features = [input] if isinstance(input, Tensor) else input
        # Only pay for recomputation when there is a backward pass to save memory for.
        if self.memory_efficient and self.any_requires_grad(prev_features) and torch.is_grad_enabled():
            out = self.call_checkpoint_bottleneck(prev_features)
        else:
            out = self.bn_function(prev_features)
        if self.bottleneck:
            out = self.conv2(self.relu2(self.norm2(out)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return out


class DenseBlock(nn.ModuleDict):
    """``num_layers`` dense layers; layer l sees the block input and every earlier layer's output, concatenated."""

    def __init__(
        self,
        num_layers: int,
        num_input_features: int,
        bn_size: int,
        growth_rate: int,
        drop_rate: float,
        memory_efficient: bool = False,
    ) -> None:
        super().__init__()
        for i in range(num_layers):
            layer = DenseLayer(
                num_input_features + i * growth_rate,
                growth_rate=growth_rate,
                bn_size=bn_size,
                drop_rate=drop_rate,
                memory_efficient=memory_efficient,
            )
            self.add_module(f"denselayer{i + 1}", layer)

    def forward(self, init_features: Tensor) -> Tensor:
        features = [init_features]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """Between blocks: BN-ReLU-Conv1x1 (θ·m output channels) - AvgPool 2x2."""

    def __init__(self, num_input_features: int, num_output_features: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(num_input_features)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(num_input_features, num_output_features, kernel_size=1, stride=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet(nn.Module):
    """Densely Connected Convolutional Network (https://arxiv.org/abs/1608.06993).

    Args:
        cfg: the architecture; see ``DenseNetConfig`` for each field.
        generator: where the initial random weights are drawn from; default torch's global RNG.

    Offers timm's fine-tuning verbs: ``forward_features``, ``forward_head``, ``get_classifier``,
    ``reset_classifier(num_classes)``, ``set_grad_checkpointing(enable)``.
    """

    def __init__(self, cfg: DenseNetConfig, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.stem == "imagenet":
            stem = [
                (
                    "conv0",
                    nn.Conv2d(cfg.in_channels, cfg.num_init_features, kernel_size=7, stride=2, padding=3, bias=False),
                ),
                ("norm0", nn.BatchNorm2d(cfg.num_init_features)),
                ("relu0", nn.ReLU(inplace=True)),
                ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
            ]
        else:
            # CIFAR: one 3x3 conv; the first dense layer's BN-ReLU follows it.
            stem = [("conv0", nn.Conv2d(cfg.in_channels, cfg.num_init_features, kernel_size=3, padding=1, bias=False))]
        self.features = nn.Sequential(OrderedDict(stem))

        num_features = cfg.num_init_features
        for i, num_layers in enumerate(cfg.block_config):
            block = DenseBlock(
                num_layers=num_layers,
                num_input_features=num_features,
                bn_size=cfg.bn_size,
                growth_rate=cfg.growth_rate,
                drop_rate=cfg.drop_rate,
                memory_efficient=cfg.memory_efficient,
            )
            self.features.add_module(f"denseblock{i + 1}", block)
            num_features = num_features + num_layers * cfg.growth_rate
            if i != len(cfg.block_config) - 1:
                out_features = transition_channels(num_features, cfg.compression)
                self.features.add_module(f"transition{i + 1}", Transition(num_features, out_features))
                num_features = out_features

        self.features.add_module("norm5", nn.BatchNorm2d(num_features))
        self.num_features = num_features
        self.classifier = nn.Linear(num_features, cfg.num_classes)

        self.init_weights(generator)

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """torchvision's init: Kaiming-normal convs, BN at 1/0, the head's default Linear init with bias 0.

        With ``generator``, the draws come from it instead of torch's global RNG (random weights that do not
        depend on what else drew from the global stream).
        """
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, generator=generator)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                if generator is not None:  # without one, nn.Linear's own init has already drawn the weight
                    nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
                nn.init.constant_(m.bias, 0)

    def forward_features(self, x: Tensor) -> Tensor:
        """Feature map after the last block's BN-ReLU: (N, num_features, h, w)."""
        return F.relu(self.features(x), inplace=True)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head with a fresh ``num_classes``-way linear layer (for fine-tuning)."""
        self.classifier = nn.Linear(self.num_features, num_classes)
        nn.init.constant_(self.classifier.bias, 0)
        self.cfg = self.cfg.replace(num_classes=num_classes)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for m in self.modules():
            if isinstance(m, DenseLayer):
                m.memory_efficient = enable
        self.cfg = self.cfg.replace(memory_efficient=enable)
