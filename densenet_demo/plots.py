"""Matplotlib figures for the app: the confusion matrix, training curves, the feature-reuse heatmap. No gradio.

Figures are made with matplotlib's object-oriented API (``Figure``, not pyplot): no backend is chosen and no
global figure list grows on a server that draws many of them; the caller renders or saves them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

__all__ = ["confusion_matrix_figure", "curves_figure", "feature_reuse_figure"]

# Relative luminance (ITU-R BT.709) under which a cell is dark enough to need white text.
_DARK_CELL = 0.45


def confusion_matrix_figure(matrix: Sequence[Sequence[float]], class_names: Sequence[str]) -> Figure:
    """Counts of (true, predicted) class pairs, one annotated cell each."""
    counts = np.asarray(matrix, dtype=float)
    n = len(class_names)
    fig = Figure(figsize=(1.2 + 0.6 * n, 1 + 0.6 * n))
    ax = fig.subplots()
    cmap, norm = colormaps["Blues"], Normalize(vmin=counts.min(), vmax=max(counts.max(), counts.min() + 1))
    ax.imshow(counts, cmap=cmap, norm=norm)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), v in np.ndenumerate(counts):
        ax.text(j, i, f"{int(v)}", ha="center", va="center", color=text_colour_on(cmap(norm(v))))
    ax.set_title("Validation confusion matrix")
    fig.tight_layout()
    return fig


def text_colour_on(rgba: Sequence[float]) -> str:
    """White on a dark cell, black on a light one, so that a count can be read on any shade."""
    r, g, b = rgba[:3]
    return "white" if 0.2126 * r + 0.7152 * g + 0.0722 * b < _DARK_CELL else "black"


def curves_figure(
    series: dict[str, list[tuple[int, float]]],
    *,
    title: str,
    epochs: float | None,
    percent: bool,
    live: dict[str, list[tuple[float, float]]] | None = None,
) -> Figure:
    """Per-epoch curves, one marked line per series (``{"train loss": [(epoch, value), ...]}``), and ``live``
    series at fractional epochs (a smoothed per-step loss, mid-epoch validations) as thin lines.

    ``epochs``: the run's length in epochs, planned (an epoch count) or expected (a time budget's, from the pace so
    far); None when not known yet. The x axis spans that length or the points drawn, whichever reaches further, so
    a run under a time budget is drawn as it happens. Every epoch is a marker, so one epoch is a visible point.
    """
    fig = Figure(figsize=(5, 3.2), layout="constrained")
    ax = fig.subplots()
    furthest = 0.0
    for name, points in (live or {}).items():
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="." if len(points) < 20 else None, linewidth=1, alpha=0.7, label=name)
            furthest = max(furthest, *xs)
    for name, points in series.items():
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", markersize=5, label=name)
            furthest = max(furthest, *xs)
    length = max(epochs or 0.0, furthest, 1.0)
    ax.set_xlim(0.0 if live else 0.5, length + (0.5 if not live or length >= 3 else 0.2))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if percent:
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("epoch")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if any(series.values()) or any((live or {}).values()):
        ax.legend(loc="best", fontsize=9)
    return fig


def feature_reuse_figure(reuse: dict[str, Any], weights_label: str) -> Figure:
    """The paper's Fig. 5 from ``architecture.feature_reuse``: one heatmap per dense block.

    At most two blocks a row, so that each panel keeps a size at which its tick labels can be read when the
    page scales the image down to its column (four side by side shrank them to a few pixels).
    """
    blocks = reuse["blocks"]
    cols = min(2, len(blocks))
    rows = -(-len(blocks) // cols)
    fig = Figure(figsize=(4.4 * cols + 0.6, 3.9 * rows + 1.0), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(blocks) :]:
        ax.set_visible(False)
    for ax, block in zip(axes, blocks, strict=False):
        image = ax.imshow(np.ma.masked_invalid(block["matrix"]), cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"block {block['block']}", fontsize=12)
        n = len(block["sources"])
        # Short tick labels: "in" is the block's input, numbers are its layers, the last row the layer after it.
        ticks = sorted({*range(0, n, max(1, n // 8)), n - 1})
        ax.set_xticks(ticks, ["in" if i == 0 else str(i) for i in ticks], fontsize=10)
        targets = [str(i) for i in range(1, n)] + ["T" if block["targets"][-1].startswith("transition") else "C"]
        ax.set_yticks(ticks, [targets[i] for i in ticks], fontsize=10)
        ax.set_xlabel("source layer", fontsize=11)
        ax.set_ylabel("target layer", fontsize=11)
    fig.colorbar(image, ax=list(axes[: len(blocks)]), shrink=0.8, label="relative mean |w|")
    fig.suptitle(
        f"Feature reuse (the paper's Fig. 5), {weights_label}\n"
        "mean |w| of each target's first convolution per source layer, normalised per target;\n"
        "T: the transition after the block, C: the classifier",
        fontsize=11,
    )
    return fig
