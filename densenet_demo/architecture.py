"""The architecture as numbers: a per-layer channel-growth table computed from a ``DenseNetConfig``.

Every figure (channels, spatial size, parameters, MACs, activation memory) follows analytically from
the config; ``check_against_module`` confirms the rows against an instantiated ``DenseNet`` with
forward hooks, and ``feature_reuse`` reads the paper's Figure 5 out of a model's weights.
Paper: https://arxiv.org/abs/1608.06993; memory model: Pleiss et al., https://arxiv.org/abs/1707.06990
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .config import DenseNetConfig, default_image_size, min_image_size, transition_channels
from .model import DenseNet

__all__ = [
    "MAX_IMAGE_SIZE",
    "channel_growth_table",
    "check_against_module",
    "feature_reuse",
    "resolve_image_size",
    "totals",
]

# Far beyond any DenseNet input; keeps a typo from describing a multi-gigabyte activation table.
MAX_IMAGE_SIZE = 4096
FLOAT_BYTES = 4  # fp32 activations
INDEX_BYTES = 8  # max-pool keeps int64 argmax indices for its backward
MASK_BYTES = 1  # dropout keeps a bool mask on GPUs (CPU keeps a float one: 4 bytes)


def resolve_image_size(cfg: DenseNetConfig, image_size: int | None = None) -> int:
    """The config's default input side, or ``image_size`` once checked against what the config accepts."""
    if image_size is None:
        return default_image_size(cfg)
    if isinstance(image_size, bool) or not isinstance(image_size, int):
        raise ValueError(f"image size must be a whole number of pixels, got {image_size!r}")
    smallest = min_image_size(cfg)
    if image_size < smallest:
        raise ValueError(
            f"image size {image_size} is too small for this model: its last block needs at least "
            f"{smallest}x{smallest} input pixels"
        )
    if image_size > MAX_IMAGE_SIZE:
        raise ValueError(f"image size {image_size} is too large; use at most {MAX_IMAGE_SIZE} pixels")
    return image_size


def _conv_out(side: int, kernel: int, stride: int, padding: int) -> int:
    return (side + 2 * padding - kernel) // stride + 1


def _row(
    kind: str,
    name: str,
    stage: str,
    op: str,
    *,
    in_channels: int,
    out_channels: int,
    side: int,
    params: int = 0,
    macs: int = 0,
    naive: int = 0,
    efficient: int | None = None,
    block: int | None = None,
    layer: int | None = None,
    bottleneck_channels: int | None = None,
    new_channels: int | None = None,
) -> dict[str, Any]:
    return {
        "kind": kind,
        "name": name,
        "stage": stage,
        "block": block,
        "layer": layer,
        "op": op,
        "in_channels": in_channels,
        "bottleneck_channels": bottleneck_channels,
        "new_channels": new_channels,
        "out_channels": out_channels,
        "out_h": side,
        "out_w": side,
        "out_hw": f"{side}x{side}",
        "params": params,
        "macs": macs,
        "activation_bytes": naive,
        "activation_bytes_memory_efficient": naive if efficient is None else efficient,
    }


def _stem_rows(cfg: DenseNetConfig, size: int) -> tuple[list[dict[str, Any]], int]:
    c0, f = cfg.num_init_features, FLOAT_BYTES
    if cfg.stem == "cifar":
        # The output is the first block's input: naive layers copy it into their concatenation,
        # the memory-efficient ones keep it for recomputation.
        row = _row(
            "stem", "features.conv0", "stem", "Conv3x3", in_channels=cfg.in_channels, out_channels=c0, side=size,
            params=cfg.in_channels * c0 * 9, macs=size * size * c0 * cfg.in_channels * 9,
            naive=0, efficient=f * c0 * size * size,
        )  # fmt: skip
        return [row], size
    s1 = _conv_out(size, 7, 2, 3)
    s2 = _conv_out(s1, 3, 2, 1)
    rows = [
        _row(
            "stem", "features.conv0", "stem", "Conv7x7/2", in_channels=cfg.in_channels, out_channels=c0, side=s1,
            params=cfg.in_channels * c0 * 49, macs=s1 * s1 * c0 * cfg.in_channels * 49, naive=f * c0 * s1 * s1,
        ),
        _row(
            "stem", "features.norm0", "stem", "BatchNorm", in_channels=c0, out_channels=c0, side=s1,
            params=2 * c0, naive=f * c0 * s1 * s1,
        ),
        _row("stem", "features.relu0", "stem", "ReLU (in place)", in_channels=c0, out_channels=c0, side=s1),
        _row(
            "stem", "features.pool0", "stem", "MaxPool3x3/2", in_channels=c0, out_channels=c0, side=s2,
            naive=INDEX_BYTES * c0 * s2 * s2, efficient=(INDEX_BYTES + f) * c0 * s2 * s2,
        ),
    ]  # fmt: skip
    return rows, s2


def _dense_layer_row(cfg: DenseNetConfig, block: int, layer: int, k0: int, side: int) -> dict[str, Any]:
    k, hw, f = cfg.growth_rate, side * side, FLOAT_BYTES
    m = k0 + k * (layer - 1)
    last = layer == cfg.block_config[block - 1]
    # Naive: the concatenation and its BN-ReLU output (2m), then the bottleneck's conv1 and BN-ReLU outputs.
    # Memory-efficient: only the bottleneck's second half, and the new features, which later layers keep.
    if cfg.bottleneck:
        b = cfg.bn_size * k
        op = f"BN-ReLU-Conv1x1({b})-BN-ReLU-Conv3x3({k})"
        params = 2 * m + m * b + 2 * b + b * k * 9
        macs = hw * b * m + hw * k * b * 9
        naive, efficient = f * hw * (2 * m + 2 * b), f * hw * 2 * b
    else:
        b = None
        op = f"BN-ReLU-Conv3x3({k})"
        params = 2 * m + m * k * 9
        macs = hw * k * m * 9
        naive, efficient = f * hw * 2 * m, 0
    if not last:
        efficient += f * hw * k
    if cfg.drop_rate > 0:
        naive += MASK_BYTES * hw * k
        efficient += MASK_BYTES * hw * k
    return _row(
        "dense_layer", f"features.denseblock{block}.denselayer{layer}", f"block {block}", op,
        in_channels=m, out_channels=m + k, side=side, params=params, macs=macs, naive=naive, efficient=efficient,
        block=block, layer=layer, bottleneck_channels=b, new_channels=k,
    )  # fmt: skip


def channel_growth_table(cfg: DenseNetConfig, image_size: int | None = None) -> list[dict[str, Any]]:
    """One row per stem op, dense layer, transition and head op, computed from ``cfg`` alone.

    Channels: dense layer l of a block with k0 input channels sees k0 + k·(l−1) and leaves k0 + k·l
    after concatenation (``out_channels``; ``new_channels`` = k); a transition keeps floor(θ·m).
    ``block`` is the dense block a dense layer belongs to or a transition follows (None elsewhere).
    ``macs`` count convolutions and the linear layer (torchvision's convention); ``params`` include
    BatchNorm's weight and bias (its running statistics are buffers).

    ``activation_bytes`` is the fp32 memory per image a naive training step keeps for backward, as
    autograd saves it, attributed to the row that creates the tensor:
    stem conv0 and norm0 outputs (ReLU works in place), pool0's int64 indices; per dense layer the
    concatenated input and its BN-ReLU output, plus the bottleneck's conv1 and BN-ReLU outputs
    (the new features are copied into the next concatenation, so not kept); per transition the block's
    concatenated output, its BN-ReLU output and the conv output (kept by the average pool); in the head
    the last block's concatenation, norm5's output and the pooled vector. Not counted: the input image,
    the logits (kept by the loss), BatchNorm's per-channel statistics. With dropout, its mask is counted.

    ``activation_bytes_memory_efficient`` is the same with the concatenation and the first
    BN-ReLU(-conv) recomputed in backward (``memory_efficient=True``): a dense layer keeps only its
    bottleneck's second half and its new features (kept by the later layers' recomputation; the last
    layer's are not), and each block's input (pool0, cifar conv0 or the transition's pool output) is kept.
    """
    size = resolve_image_size(cfg, image_size)
    rows, side = _stem_rows(cfg, size)
    k, f = cfg.growth_rate, FLOAT_BYTES
    channels = cfg.num_init_features
    num_blocks = len(cfg.block_config)
    for block, num_layers in enumerate(cfg.block_config, 1):
        rows.extend(_dense_layer_row(cfg, block, layer, channels, side) for layer in range(1, num_layers + 1))
        m = channels + k * num_layers
        hw = side * side
        if block == num_blocks:
            break
        channels = transition_channels(m, cfg.compression)
        half = side // 2
        naive = f * hw * (2 * m + channels)
        rows.append(_row(
            "transition", f"features.transition{block}", f"transition {block}",
            f"BN-ReLU-Conv1x1({channels})-AvgPool2x2", in_channels=m, out_channels=channels, side=half,
            params=2 * m + m * channels, macs=hw * channels * m,
            naive=naive, efficient=naive + f * channels * half * half, block=block,
        ))  # fmt: skip
        side = half
    rows += [
        _row("head", "features.norm5", "head", "BN-ReLU", in_channels=m, out_channels=m, side=side,
             params=2 * m, naive=f * 2 * m * side * side),
        # Functional in DenseNet.forward_head: there is no module of this name.
        _row("head", "global_pool", "head", "GlobalAvgPool", in_channels=m, out_channels=m, side=1, naive=f * m),
        _row("head", "classifier", "head", f"Linear({cfg.num_classes})", in_channels=m,
             out_channels=cfg.num_classes, side=1, params=m * cfg.num_classes + cfg.num_classes,
             macs=m * cfg.num_classes),
    ]  # fmt: skip
    return rows


def totals(cfg: DenseNetConfig, image_size: int | None = None) -> dict[str, Any]:
    """Whole-model figures: params, MACs, and training activation memory per image, naive vs memory-efficient.

    Memory model (Pleiss et al., https://arxiv.org/abs/1707.06990): a naive DenseNet keeps, for each
    layer, its concatenated input and that input's BN-ReLU output, 2·(k0 + k·(l−1)) channels for layer l,
    so a block of L layers keeps about k·L² channel maps: quadratic in depth. The memory-efficient
    implementation recomputes the concatenation and the first BN-ReLU(-conv) in backward and keeps
    only each layer's k new channels (plus the bottleneck's second half): linear in depth, for roughly
    15-20% more compute. ``dense_activation_bytes_*`` are the dense layers' share alone. See
    ``channel_growth_table`` for exactly what is counted. Bytes are fp32, per image.
    """
    size = resolve_image_size(cfg, image_size)
    rows = channel_growth_table(cfg, size)
    dense = [r for r in rows if r["kind"] == "dense_layer"]
    return {
        "image_size": size,
        "depth": cfg.depth,
        "num_blocks": len(cfg.block_config),
        "num_layers": sum(cfg.block_config),
        "num_features": rows[-1]["in_channels"],
        "params": sum(r["params"] for r in rows),
        "macs": sum(r["macs"] for r in rows),
        "activation_bytes_naive": sum(r["activation_bytes"] for r in rows),
        "activation_bytes_memory_efficient": sum(r["activation_bytes_memory_efficient"] for r in rows),
        "dense_activation_bytes_naive": sum(r["activation_bytes"] for r in dense),
        "dense_activation_bytes_memory_efficient": sum(r["activation_bytes_memory_efficient"] for r in dense),
    }


def check_against_module(
    cfg: DenseNetConfig, image_size: int | None = None, device: str | torch.device = "meta"
) -> list[str]:
    """Run ``DenseNet(cfg)`` once with forward hooks and list where it disagrees with the analytic rows.

    Checks each row's output channels and spatial size, the input channels of dense layers, the
    parameter count and the MACs of each row's module, and that every parameter belongs to some row.
    An empty list means the table describes the module exactly. On the default ``meta`` device the
    forward pass propagates shapes through PyTorch's own operators without computing anything
    (DenseNet-161 at 224 in well under a second); ``device="cpu"`` runs the real kernels.
    """
    size = resolve_image_size(cfg, image_size)
    rows = channel_growth_table(cfg, size)
    with torch.device(device):
        model = DenseNet(cfg).eval()
    seen: dict[str, dict[str, Any]] = {row["name"]: {"macs": 0} for row in rows}
    handles = []

    def on_output(name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            seen[name]["shape"] = tuple(output.shape[1:])

        return hook

    def on_input(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            inputs = args[0] if isinstance(args[0], list) else [args[0]]
            seen[name]["in_channels"] = sum(t.shape[1] for t in inputs)
            if name == "classifier":  # the pooled vector: what the functional global pool produced
                seen["global_pool"]["shape"] = (inputs[0].shape[1], 1, 1)

        return hook

    def count_macs(name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            spatial = output.shape[2] * output.shape[3] if output.dim() == 4 else 1
            seen[name]["macs"] += spatial * module.weight.numel()

        return hook

    modules = {row["name"]: model.get_submodule(row["name"]) for row in rows if row["name"] != "global_pool"}
    for name, module in modules.items():
        handles.append(module.register_forward_hook(on_output(name)))
        handles.append(module.register_forward_pre_hook(on_input(name)))
        for sub in module.modules():
            if isinstance(sub, (nn.Conv2d, nn.Linear)):
                handles.append(sub.register_forward_hook(count_macs(name)))
    try:
        with torch.no_grad():
            model(torch.zeros(1, cfg.in_channels, size, size, device=device))
    finally:
        for handle in handles:
            handle.remove()

    problems = []
    for row in rows:
        name, got = row["name"], seen[row["name"]]
        channels = row["new_channels"] if row["kind"] == "dense_layer" else row["out_channels"]
        expected = (channels,) if name == "classifier" else (channels, row["out_h"], row["out_w"])
        if got.get("shape") != expected:
            problems.append(f"{name}: output shape {got.get('shape')} but the table says {expected}")
        if name in modules:
            if got.get("in_channels") != row["in_channels"]:
                problems.append(
                    f"{name}: {got.get('in_channels')} input channels but the table says {row['in_channels']}"
                )
            concatenated = got.get("in_channels", 0) + got.get("shape", (0,))[0]
            if row["kind"] == "dense_layer" and concatenated != row["out_channels"]:
                problems.append(
                    f"{name}: {concatenated} channels after concatenation but the table says {row['out_channels']}"
                )
            params = sum(p.numel() for p in modules[name].parameters())
            if params != row["params"]:
                problems.append(f"{name}: {params} parameters but the table says {row['params']}")
        if got["macs"] != row["macs"]:
            problems.append(f"{name}: {got['macs']} MACs but the table says {row['macs']}")
    covered = {id(p) for module in modules.values() for p in module.parameters()}
    problems += [
        f"{name}: parameter not covered by any row" for name, p in model.named_parameters() if id(p) not in covered
    ]
    return problems


def _source_means(weight: torch.Tensor, k0: int, k: int, sources: int) -> np.ndarray:
    """Mean |w| over the input channels from each source: the block input (k0), then k per earlier layer."""
    per_channel = weight.detach().abs().transpose(0, 1).reshape(weight.shape[1], -1).double().mean(1).cpu()
    bounds = [0, k0] + [k0 + k * s for s in range(1, sources)]
    return np.array([per_channel[a:b].mean().item() for a, b in pairwise(bounds)])


def _weight(state: dict[str, torch.Tensor], key: str, in_channels: int) -> torch.Tensor:
    if key not in state:
        raise ValueError(f"the weights have no '{key}'; are they a DenseNet with this config?")
    weight = state[key]
    if weight.dim() < 2 or weight.shape[1] != in_channels:
        raise ValueError(f"'{key}' has shape {tuple(weight.shape)}, expected {in_channels} input channels")
    return weight


def feature_reuse(
    model_or_state_dict: nn.Module | dict[str, torch.Tensor], cfg: DenseNetConfig | None = None
) -> dict[str, Any]:
    """The paper's Figure 5: how strongly each layer's first convolution uses each earlier layer's features.

    For each dense block, row i is a target (layer 1..L, then the transition after the block, or the
    classifier after the last block, which reads norm5's channels), column j a source (0 = the block
    input, then layers 1..L). Entry = mean |weight| over the target's input channels that come from
    that source, divided by the row's maximum; NaN where the source does not feed the target (j > i).
    ``cfg`` may be left out for a ``DenseNet`` module (it carries its own).
    Returns ``{"blocks": [{"block", "matrix" (np.ndarray, (L+1)x(L+1)), "targets", "sources"}]}``.
    """
    if isinstance(model_or_state_dict, nn.Module):
        cfg = cfg or getattr(model_or_state_dict, "cfg", None)
        state = model_or_state_dict.state_dict()
    else:
        state = model_or_state_dict
    if cfg is None:
        raise ValueError("feature_reuse needs the DenseNetConfig that the state dict was built from")
    k, channels, blocks = cfg.growth_rate, cfg.num_init_features, []
    num_blocks = len(cfg.block_config)
    for block, num_layers in enumerate(cfg.block_config, 1):
        matrix = np.full((num_layers + 1, num_layers + 1), np.nan)
        for layer in range(1, num_layers + 1):
            key = f"features.denseblock{block}.denselayer{layer}.conv1.weight"
            matrix[layer - 1, :layer] = _source_means(
                _weight(state, key, channels + k * (layer - 1)), channels, k, layer
            )
        last = block == num_blocks
        key = "classifier.weight" if last else f"features.transition{block}.conv.weight"
        m = channels + k * num_layers
        matrix[num_layers] = _source_means(_weight(state, key, m), channels, k, num_layers + 1)
        row_max = np.nanmax(matrix, axis=1, keepdims=True)
        matrix = np.divide(matrix, row_max, out=matrix, where=row_max > 0)
        blocks.append(
            {
                "block": block,
                "matrix": matrix,
                "targets": [f"layer {i}" for i in range(1, num_layers + 1)]
                + ["classifier" if last else f"transition {block}"],
                "sources": ["block input"] + [f"layer {i}" for i in range(1, num_layers + 1)],
            }
        )
        if not last:
            channels = transition_channels(m, cfg.compression)
    return {"blocks": blocks}
