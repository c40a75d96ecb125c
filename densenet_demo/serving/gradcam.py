"""Grad-CAM (Selvaraju et al., https://arxiv.org/abs/1610.02391): where the model looked for one class.

Always on PyTorch, and only when asked: the graph backends have no gradients. It differentiates only the head
(norm5-ReLU-pool-linear) with respect to this request's own detached copy of the last dense block's output, so
no hook is registered on the model that every request shares.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from ..data.images import Preprocessing
from ..inference import InferenceDenseNet

__all__ = ["OVERLAY_MIN_SIDE", "GradCam", "gradcam"]

OVERLAY_MIN_SIDE = 256  # Grad-CAM overlays are drawn at least this large (a 32 px input is enlarged smoothly)


@dataclass
class GradCam:
    """Where the model looked for one class."""

    heatmap: np.ndarray  # (H, W) float32 in [0, 1], over the model's input crop
    overlay: Image.Image  # the input crop with the heatmap on top, RGB, at least OVERLAY_MIN_SIDE px a side
    class_index: int
    class_name: str


def gradcam(
    net: InferenceDenseNet,
    preprocessing: Preprocessing,
    class_names: Sequence[str],
    decoded: Image.Image,
    class_index: int | None = None,
) -> GradCam:
    """Grad-CAM from the last dense block of ``net`` for ``class_index`` (default: the top-1 class)."""
    x = preprocessing.to_tensor(decoded)[None]
    with torch.no_grad():
        features = net.block_output(x)
    features = features.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = net.head(features)[0]
        if class_index is None:
            class_index = int(logits.argmax())
        if not 0 <= class_index < len(class_names):
            raise ValueError(f"class index {class_index} is out of range 0..{len(class_names) - 1}")
        (grads,) = torch.autograd.grad(logits[class_index], features)
    with torch.no_grad():
        channel_weights = grads.mean(dim=(2, 3), keepdim=True)  # α_k: the class's use of channel k
        cam = F.relu((channel_weights * features).sum(dim=1, keepdim=True))
    side = preprocessing.image_size
    heatmap = _upsampled(cam, side)
    # People look at the overlay at a readable size: the input crop enlarged smoothly and the map upsampled
    # from the last block's few cells to that size, not a 32 px image stretched into blocks by the browser.
    shown = max(side, OVERLAY_MIN_SIDE)
    view = preprocessing.view(decoded).convert("RGB").resize((shown, shown), Image.Resampling.BICUBIC)
    overlay = _overlay(view, heatmap if shown == side else _upsampled(cam, shown))
    return GradCam(heatmap, overlay, class_index, class_names[class_index])


def _upsampled(cam: torch.Tensor, side: int) -> np.ndarray:
    """A (1, 1, h, w) class activation map, bilinearly upsampled to ``side`` x ``side`` and scaled to 0..1."""
    with torch.no_grad():
        cam = F.interpolate(cam, size=(side, side), mode="bilinear", align_corners=False)[0, 0].float().cpu()
        low, high = float(cam.min()), float(cam.max())
        cam = (cam - low) / (high - low) if high > low else torch.zeros_like(cam)
    return cam.numpy().astype(np.float32)


def _overlay(view: Image.Image, heatmap: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """The heatmap as blue (cold) - yellow - red (hot), blended onto the model's view of the image."""
    heat = Image.fromarray((heatmap * 255.0).round().astype(np.uint8), "L")
    colored = ImageOps.colorize(heat, black=(0, 0, 160), mid=(255, 220, 0), white=(220, 0, 0))
    return Image.blend(view.convert("RGB"), colored, alpha)
