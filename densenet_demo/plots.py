"""Matplotlib figures for the app: the validation confusion matrix and the feature-reuse heatmap. No gradio.

Figures are made with matplotlib's object-oriented API (``Figure``, not pyplot): no backend is chosen and no
global figure list grows on a server that draws many of them; the caller renders or saves them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

__all__ = ["confusion_matrix_figure", "feature_reuse_figure"]


def confusion_matrix_figure(matrix: Sequence[Sequence[float]], class_names: Sequence[str]) -> Figure:
    """Counts of (true, predicted) class pairs, one annotated cell each."""
    counts = np.asarray(matrix, dtype=float)
    n = len(class_names)
    fig = Figure(figsize=(1.2 + 0.6 * n, 1 + 0.6 * n))
    ax = fig.subplots()
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), v in np.ndenumerate(counts):
        ax.text(j, i, f"{int(v)}", ha="center", va="center", color="black")
    ax.set_title("Validation confusion matrix")
    fig.tight_layout()
    return fig


def feature_reuse_figure(reuse: dict[str, Any], weights_label: str) -> Figure:
    """The paper's Fig. 5 from ``architecture.feature_reuse``: one heatmap per dense block."""
    blocks = reuse["blocks"]
    fig = Figure(figsize=(3.4 * len(blocks) + 0.8, 4.2), layout="constrained")
    axes = fig.subplots(1, len(blocks), squeeze=False)
    for ax, block in zip(axes[0], blocks, strict=True):
        image = ax.imshow(np.ma.masked_invalid(block["matrix"]), cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"block {block['block']}")
        n = len(block["sources"])
        # Short tick labels: "in" is the block's input, numbers are its layers, the last row the layer after it.
        ticks = sorted({*range(0, n, max(1, n // 8)), n - 1})
        ax.set_xticks(ticks, ["in" if i == 0 else str(i) for i in ticks])
        targets = [str(i) for i in range(1, n)] + ["T" if block["targets"][-1].startswith("transition") else "C"]
        ax.set_yticks(ticks, [targets[i] for i in ticks])
        ax.set_xlabel("source layer")
        ax.set_ylabel("target layer")
    fig.colorbar(image, ax=list(axes[0]), shrink=0.8)
    fig.suptitle(
        f"Feature reuse (the paper's Fig. 5), {weights_label}\n"
        "mean |w| of each target's first convolution per source layer, normalised per target; "
        "T: transition, C: classifier"
    )
    return fig
