"""The Architecture tab: a preset's or a custom config's channel growth, totals and feature-reuse heatmap."""

from __future__ import annotations

from typing import Any, NamedTuple

import gradio as gr
import pandas as pd
from matplotlib.figure import Figure

from .. import architecture, plots, predict, units, weights
from ..config import PRESETS, DenseNetConfig, default_image_size
from .common import check_run, preset_choices, reuse_choices, unknown_model, user_errors

__all__ = ["ArchitectureTab", "build_architecture_tab", "reuse_dropdown", "show_architecture"]


class ArchitectureTab(NamedTuple):
    preset: gr.Dropdown
    reuse: gr.Dropdown
    summary: gr.Markdown
    table: gr.Dataframe
    plot: gr.LinePlot
    heatmap: gr.Plot


def reuse_dropdown() -> gr.Dropdown:
    """The heatmap's weights list, made before the tabs (unrendered) so that a finished run can refresh it."""
    return gr.Dropdown(
        reuse_choices(),
        value="none",
        label="Feature-reuse heatmap from",
        render=False,
        elem_id="arch-reuse",
        allow_custom_value=True,  # a session's runs are not in the page's initial list; the handler checks them
    )


def build_architecture_tab(reuse: gr.Dropdown, state: gr.State) -> ArchitectureTab:
    """The tab's layout and events; call inside ``gr.Tab``. ``reuse``: from ``reuse_dropdown()``, rendered here."""
    with gr.Row():
        with gr.Column(scale=1):
            preset = gr.Dropdown(
                preset_choices() + [("custom", "custom")], value="densenet121", label="Model", elem_id="arch-preset"
            )
            size = gr.Number(value=None, label="Image size (0: the model's own)", precision=0)
            with gr.Accordion("Custom config (choose 'custom' above)", open=False):
                k = gr.Slider(1, 64, value=12, step=1, label="Growth rate k")
                blocks = gr.Textbox(value="16,16,16", label="Layers per block")
                init = gr.Number(value=24, label="Stem channels", precision=0)
                bn = gr.Slider(0, 8, value=4, step=1, label="Bottleneck size (0 = none)")
                theta = gr.Slider(0.1, 1.0, value=0.5, step=0.05, label="Compression θ")
                drop = gr.Slider(0.0, 0.5, value=0.0, step=0.05, label="Dropout")
                stem = gr.Radio(["cifar", "imagenet"], value="cifar", label="Stem")
                in_channels = gr.Radio(["3", "1"], value="3", label="Input channels")
            reuse.render()
            button = gr.Button("Show", variant="primary", elem_id="arch-button")
        with gr.Column(scale=3):
            summary = gr.Markdown(elem_id="arch-summary")
            plot = gr.LinePlot(
                x="layer", y="channels", color="stage", title="Channels after each layer", elem_id="arch-plot"
            )
            heatmap = gr.Plot(label="Feature reuse (paper, Fig. 5)", show_label=False, elem_id="arch-heatmap")
    table = gr.Dataframe(label="Per-layer channel growth", interactive=False, elem_id="arch-table")
    button.click(
        show_architecture,
        [preset, k, blocks, init, bn, theta, drop, stem, in_channels, size, reuse, state],
        [summary, table, plot, heatmap],
        api_name="architecture",
    )
    return ArchitectureTab(preset, reuse, summary, table, plot, heatmap)


def show_architecture(
    preset: str,
    growth_rate: float,
    blocks_text: str,
    init_features: float,
    bn_size: float,
    compression: float,
    drop_rate: float,
    stem: str,
    in_channels: str,
    image_size: float,
    reuse_weights: str,
    state: dict[str, Any] | None = None,
) -> tuple[str, pd.DataFrame, pd.DataFrame, Figure | None]:
    """Channel-growth table, plot, totals and feature-reuse heatmap for a preset or a custom config."""
    if preset == "custom":
        cfg = _custom_config(
            growth_rate, blocks_text, init_features, bn_size, compression, drop_rate, stem, in_channels
        )
    elif preset in PRESETS:
        cfg = PRESETS[preset].config
    else:
        raise gr.Error(f"Unknown preset {preset!r}.")
    size = int(image_size) if image_size else default_image_size(cfg)
    with user_errors(ValueError):
        rows = architecture.channel_growth_table(cfg, size)
        totals = architecture.totals(cfg, size)
    macs = units.si(totals["macs"], digits=3, sep=" ")
    naive, efficient = (units.mib(totals[f"activation_bytes_{k}"], 1) for k in ("naive", "memory_efficient"))
    summary = (
        f"**{cfg.variant}**, L = {cfg.depth}, k = {cfg.growth_rate}, blocks {list(cfg.block_config)}, "
        f"θ = {cfg.compression}, input {size}×{size}×{cfg.in_channels}\n\n"
        f"| params | MACs | training activations / image (naive) | (memory-efficient) |\n|---|---|---|---|\n"
        f"| {totals['params']:,} | {macs} | {naive} MiB | {efficient} MiB |"
    )
    return summary, pd.DataFrame(rows), _growth_frame(rows), _feature_reuse_plot(preset, reuse_weights, state)


def _custom_config(
    growth_rate, blocks_text, init_features, bn_size, compression, drop_rate, stem, in_channels
) -> DenseNetConfig:
    try:
        block_config = tuple(int(b) for b in str(blocks_text).replace(" ", "").split(",") if b)
    except ValueError:
        raise gr.Error(
            f"Layers per block must be comma-separated counts such as 6,12,24,16; got {blocks_text!r}"
        ) from None
    with user_errors(ValueError):
        return DenseNetConfig(
            growth_rate=int(growth_rate),
            block_config=block_config,
            num_init_features=int(init_features),
            bn_size=int(bn_size),
            compression=float(compression),
            drop_rate=float(drop_rate),
            stem=stem,
            in_channels=int(in_channels),
        )


def _growth_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Channels after each row, one series per stage; each stage also starts from the previous stage's last
    point, so the line is unbroken and a transition shows as the drop it is (the saw-tooth)."""
    points = []
    for i, row in enumerate(rows):
        if i and row["stage"] != rows[i - 1]["stage"]:
            points.append({"layer": i - 1, "channels": rows[i - 1]["out_channels"], "stage": row["stage"]})
        points.append({"layer": i, "channels": row["out_channels"], "stage": row["stage"]})
    return pd.DataFrame(points)


def _feature_reuse_plot(preset: str, reuse_weights: str, state: dict[str, Any] | None) -> Figure | None:
    if reuse_weights == "none":
        return None
    if reuse_weights.startswith("run:"):
        check_run(reuse_weights, state)  # the same rule as Predict: the session's own runs and the published
    elif reuse_weights != "imagenet":
        raise unknown_model(reuse_weights)
    with user_errors(ValueError, weights.CheckpointError, OSError):
        if reuse_weights == "imagenet":
            weights.imagenet_preset_for(preset)  # a ValueError naming the presets that have them
        if reuse_weights.startswith("run:"):
            predictor = predict.get_predictor(reuse_weights)
        else:
            predictor = predict.get_predictor(preset, "imagenet")
    reuse = architecture.feature_reuse(predictor.model, predictor.cfg)
    return plots.feature_reuse_figure(reuse, predictor.weights_label)
