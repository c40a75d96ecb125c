"""A faster eval-only forward of a trained DenseNet: the same function as ``DenseNet.eval()``, rearranged.

- A BatchNorm that follows a convolution (the stem's ``norm0``, a bottleneck's ``norm2``) is folded
  into that convolution's weight and bias.
- A BatchNorm that precedes a convolution (``norm1``, a transition's ``norm``, ``norm5``) cannot be folded
  past the ReLU; it becomes one precomputed per-channel scale and shift (``addcmul``).
- Each dense block writes its layers' outputs into one preallocated buffer instead of concatenating all
  earlier features again for every layer: the shared-storage idea of Pleiss et al.
  (https://arxiv.org/abs/1707.06990), here used for speed rather than memory.
- A transition average-pools before its 1x1 convolution: both are linear and the convolution acts on each pixel
  alone, so they commute, and the convolution then sees a quarter of the pixels (4x fewer multiply-adds there).
- Activations are channels_last, the layout oneDNN's CPU convolutions work in without reorders.

``bench/predict.py`` measures each step against torchvision's plain forward. The weights are copied into
plain tensors that never require grad, so a cached instance can serve many threads and Grad-CAM's backward
pass (``head`` on a detached feature map) cannot touch shared state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .model import DenseBlock, DenseLayer, DenseNet, Transition

__all__ = ["InferenceDenseNet"]


@dataclass(frozen=True)
class _Affine:
    """An eval-mode BatchNorm as y = x * scale + shift, with (1, C, 1, 1) tensors."""

    scale: Tensor
    shift: Tensor

    @classmethod
    def of(cls, bn: nn.BatchNorm2d) -> _Affine:
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        return cls(scale.reshape(1, -1, 1, 1), shift.reshape(1, -1, 1, 1))

    def relu(self, x: Tensor) -> Tensor:
        return torch.addcmul(self.shift, x, self.scale).relu_()


@dataclass(frozen=True)
class _Conv:
    weight: Tensor
    bias: Tensor | None
    stride: tuple[int, ...]
    padding: tuple[int, ...]

    @classmethod
    def of(cls, conv: nn.Conv2d, then_bn: nn.BatchNorm2d | None = None) -> _Conv:
        weight, bias = conv.weight, conv.bias
        if then_bn is not None:
            # BN(conv(x)) = conv(x) * s + t: scale each output filter by s, and the bias becomes t (+ s * b).
            bn = _Affine.of(then_bn)
            weight = weight * bn.scale.reshape(-1, 1, 1, 1)
            bias = bn.shift.flatten() + (bias * bn.scale.flatten() if bias is not None else 0)
        weight = weight.contiguous(memory_format=torch.channels_last)
        return cls(weight, bias, conv.stride, conv.padding)

    def __call__(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)


@dataclass(frozen=True)
class _Layer:
    norm: _Affine
    conv1: _Conv  # bottleneck 1x1 with norm2 folded in, or the plain layer's 3x3
    conv2: _Conv | None  # the bottleneck's 3x3

    def __call__(self, x: Tensor) -> Tensor:
        out = self.conv1(self.norm.relu(x))
        return out if self.conv2 is None else self.conv2(out.relu_())


@dataclass(frozen=True)
class _Block:
    layers: tuple[_Layer, ...]
    out_channels: int

    def __call__(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        buffer = torch.empty(
            n, self.out_channels, h, w, dtype=x.dtype, device=x.device, memory_format=torch.channels_last
        )
        buffer[:, :c] = x
        for layer in self.layers:
            # Layer l reads channels [0, c) = [x0, x1, ..., x(l-1)] in place and appends its k channels.
            new = layer(buffer[:, :c])
            buffer[:, c : c + new.shape[1]] = new
            c += new.shape[1]
        return buffer


@dataclass(frozen=True)
class TransitionStep:
    norm: _Affine
    conv: _Conv

    def __call__(self, x: Tensor) -> Tensor:
        return self.conv(F.avg_pool2d(self.norm.relu(x), 2, 2))


class InferenceDenseNet:
    """Eval-only, thread-safe, faster forward of ``model`` (same outputs up to float rounding).

    ``block_output`` runs everything up to the last dense block; ``head`` does norm5-ReLU-pool-linear.
    Grad-CAM differentiates ``head`` with respect to ``block_output``.
    """

    def __init__(self, model: DenseNet, device: torch.device | str | None = None) -> None:
        device = torch.device(device) if device is not None else next(model.parameters()).device
        self.device = device
        self.cfg = model.cfg
        with torch.no_grad():
            self._steps = [_on(step, device) for step in _compile_features(model)]
            self._norm5 = _on(_Affine.of(model.features.norm5), device)
            self._classifier_weight = _on(model.classifier.weight, device)
            self._classifier_bias = _on(model.classifier.bias, device)

    def block_output(self, x: Tensor) -> Tensor:
        """The last dense block's output, before ``norm5``: (N, num_features, h, w)."""
        x = x.to(self.device, torch.float32).contiguous(memory_format=torch.channels_last)
        for step in self._steps:
            x = step(x)
        return x

    def head(self, features: Tensor) -> Tensor:
        """norm5-ReLU, global average pool, classifier: block output -> logits."""
        pooled = self._norm5.relu(features).mean(dim=(2, 3))
        return F.linear(pooled, self._classifier_weight, self._classifier_bias)

    def __call__(self, x: Tensor) -> Tensor:
        return self.head(self.block_output(x))


def _compile_features(model: DenseNet) -> list:
    """The ``features`` Sequential as a list of callables on plain, folded tensors."""
    children = list(model.features.named_children())
    steps: list = []
    i = 0
    while i < len(children):
        name, module = children[i]
        following = children[i + 1][1] if i + 1 < len(children) else None
        if isinstance(module, nn.Conv2d):
            if isinstance(following, nn.BatchNorm2d):  # the ImageNet stem: conv0 -> norm0
                steps.append(_Conv.of(module, following))
                i += 1
            else:  # the CIFAR stem: conv0 alone
                steps.append(_Conv.of(module))
        elif isinstance(module, nn.ReLU):
            steps.append(torch.relu_)
        elif isinstance(module, nn.MaxPool2d):
            steps.append(lambda x, m=module: F.max_pool2d(x, m.kernel_size, m.stride, m.padding))
        elif isinstance(module, DenseBlock):
            layers = tuple(_layer(layer) for layer in module.values())
            steps.append(_Block(layers, _block_out_channels(module)))
        elif isinstance(module, Transition):
            steps.append(TransitionStep(_Affine.of(module.norm), _Conv.of(module.conv)))
        elif name == "norm5":
            pass  # part of the head
        else:
            raise TypeError(f"cannot compile features.{name} ({type(module).__name__}) for inference")
        i += 1
    return steps


def _layer(layer: DenseLayer) -> _Layer:
    if layer.bottleneck:
        return _Layer(_Affine.of(layer.norm1), _Conv.of(layer.conv1, layer.norm2), _Conv.of(layer.conv2))
    return _Layer(_Affine.of(layer.norm1), _Conv.of(layer.conv1), None)


def _block_out_channels(block: DenseBlock) -> int:
    layers = list(block.values())
    new = layers[0].conv2.out_channels if layers[0].bottleneck else layers[0].conv1.out_channels
    return layers[0].norm1.num_features + len(layers) * new


def _on(obj, device: torch.device):
    """A copy of a frozen dataclass (nested ones included) with every tensor detached onto ``device``."""
    if isinstance(obj, Tensor):
        return obj.detach().to(device).clone()
    if isinstance(obj, tuple):
        return tuple(_on(v, device) for v in obj)
    if hasattr(obj, "__dataclass_fields__"):
        return type(obj)(**{k: _on(getattr(obj, k), device) for k in obj.__dataclass_fields__})
    return obj
