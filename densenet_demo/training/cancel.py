"""Stop inside a training step: a step of DenseNet-121 at 224 px takes half a minute on a CPU, too long to wait.

``Stop`` is what a run raises where it notices a set cancel token: between steps, while caching or validating,
and inside a step: ``stop_inside_steps(model, cancel)`` hooks every dense layer and transition, in the forward
pass before each one runs and in the backward pass when its output's gradient arrives. The trainer turns it into a
``Cancelled`` event. A step is abandoned before ``optimizer.step()``, so the weights stay those of the last whole
step. The caller removes the returned handles when the run ends (a kept model must not raise on a later forward).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..model import DenseLayer, Transition
from .events import CancelToken

__all__ = ["Stop", "check_stop", "stop_inside_steps"]


class Stop(Exception):
    """Raised where a run notices that its cancel token is set; becomes a ``Cancelled`` event."""


def check_stop(cancel: CancelToken) -> None:
    """Raise ``Stop`` when ``cancel`` is set."""
    if cancel.cancelled:
        raise Stop


def stop_inside_steps(model: nn.Module, cancel: CancelToken) -> list[RemovableHandle]:
    """Hook ``model`` so that a cancelled token raises ``Stop`` at its next dense layer or transition."""

    def check(*_: Any) -> None:
        check_stop(cancel)

    def watch_backward(_module: nn.Module, _args: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(check)

    handles = []
    for module in model.modules():
        if isinstance(module, (DenseLayer, Transition)):
            handles += [module.register_forward_pre_hook(check), module.register_forward_hook(watch_backward)]
    return handles
