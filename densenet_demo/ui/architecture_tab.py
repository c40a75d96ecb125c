"""The Architecture tab: a preset's or a custom config's channel growth, totals and feature-reuse heatmap.

The config fields always hold the architecture that Show describes: choosing a preset fills them with its
config, editing any of them switches the model to "custom", and choosing a fine-tuned run for the heatmap
loads that run's config into them. The heatmap is drawn only from weights of the architecture on the page.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import gradio as gr
import pandas as pd
from matplotlib.figure import Figure

from .. import architecture, plots, units
from ..config import IMAGENET_PRESETS, PRESETS, DenseNetConfig, default_image_size
from ..serving import predict
from ..units import format_bytes
from ..weights import checkpoints, pretrained
from ..weights import resolver as weights
from .common import (
    MODEL_API,
    api_type,
    check_run,
    names_only,
    preset_choices,
    reuse_choices,
    unknown_model,
    user_errors,
)

__all__ = [
    "ArchitectureTab",
    "build_architecture_tab",
    "config_fields",
    "display_table",
    "format_bytes",
    "growth_frame",
    "stage_colours",
    "reuse_dropdown",
    "show_architecture",
]

CUSTOM = "custom"
DEFAULT_MODEL = "densenet121"

# The page's table: the columns people read first come first (a phone shows the first two, the layer pinned);
# the CLI and JSON keep the raw rows. The layer's name is its place in the module, shortened
# (features.denseblock1.denselayer4 -> block1.layer4).
DISPLAY_COLUMNS = (
    "Layer",
    "Channels in → out",
    "Output size",
    "Params",
    "MACs",
    "Activations (naive)",
    "Activations (memory-efficient)",
    "Operation",
)
_COLUMN_WIDTHS = ["136px", "124px", "96px", "80px", "88px", "112px", "136px", "340px"]
MEMORY_NOTE = (
    "Memory-efficient training keeps each dense block's input for its recomputation: in the rows that make it "
    "(pool0, a CIFAR stem's conv0, each transition) that figure is above the naive one, and in every dense layer "
    "after it far below."
)
# One colour per stage name, the same in every figure, so a legend names only the stages a model has.
_STAGE_COLOURS = ["#1f77b4", "#ff7f0e", "#d62728", "#17becf", "#2ca02c", "#bcbd22", "#9467bd", "#e377c2", "#8c564b"]


class ArchitectureTab(NamedTuple):
    preset: gr.Dropdown
    reuse: gr.Dropdown
    summary: gr.Markdown
    table: gr.Dataframe
    plot: gr.LinePlot
    heatmap: gr.Plot
    size: gr.Number


def reuse_dropdown() -> gr.Dropdown:
    """The heatmap's weights list, made before the tabs (unrendered) so that a finished run can refresh it."""
    dropdown = gr.Dropdown(
        reuse_choices(),
        value="none",
        label="Feature-reuse heatmap from",
        render=False,
        elem_id="arch-reuse",
        allow_custom_value=True,  # a session's runs are not in the page's initial list; the handler checks them
    )
    heatmap_api = "none | imagenet (the preset's ImageNet weights) | run:<run-id> of one of your runs (/list_runs)"
    return api_type(dropdown, {"type": "string", "description": heatmap_api})


def config_fields(cfg: DenseNetConfig) -> tuple[Any, ...]:
    """The custom-config fields' values for ``cfg``, in the order the tab lays them out."""
    return (
        cfg.growth_rate,
        ",".join(str(n) for n in cfg.block_config),
        cfg.num_init_features,
        cfg.bn_size,
        cfg.compression,
        cfg.drop_rate,
        cfg.stem,
        str(cfg.in_channels),
        cfg.num_classes,
    )


def build_architecture_tab(reuse: gr.Dropdown, state: gr.State) -> ArchitectureTab:
    """The tab's layout and events; call inside ``gr.Tab``. ``reuse``: from ``reuse_dropdown()``, rendered here."""
    start = dict(
        zip(
            ("k", "blocks", "init", "bn", "theta", "drop", "stem", "in_channels", "classes"),
            config_fields(PRESETS[DEFAULT_MODEL].config),
            strict=True,
        )
    )
    # The default model's figures from the start: they come from its config alone (no weights, no model built).
    first_summary, first_table, first_plot, _ = show_architecture(
        DEFAULT_MODEL, *config_fields(PRESETS[DEFAULT_MODEL].config)[:8]
    )
    with gr.Row():
        with gr.Column(scale=1):
            preset = gr.Dropdown(
                preset_choices() + [(CUSTOM, CUSTOM)], value=DEFAULT_MODEL, label="Model", elem_id="arch-preset",
                allow_custom_value=True,  # a run chosen for the heatmap shows here as the model (its architecture)
            )  # fmt: skip
            api_type(preset, {**MODEL_API, "description": MODEL_API["description"] + ", or custom (the fields)"})
            size = gr.Number(value=None, label="Image size (0: the model's own)", precision=0)
            with gr.Accordion("Config (the chosen model's; editing any field makes it 'custom')", open=False):
                k = gr.Slider(1, 64, value=start["k"], step=1, label="Growth rate k", elem_id="arch-k")
                api_type(k, {"type": "integer", "description": "growth rate k, 1 to 64"})
                blocks = gr.Textbox(value=start["blocks"], label="Layers per block", elem_id="arch-blocks")
                init = gr.Number(value=start["init"], label="Stem channels", precision=0, elem_id="arch-init")
                bn = gr.Slider(0, 8, value=start["bn"], step=1, label="Bottleneck size (0 = none)")
                api_type(bn, {"type": "integer", "description": "bottleneck width in multiples of k, 0 (none) to 8"})
                theta = gr.Slider(0.1, 1.0, value=start["theta"], step=0.05, label="Compression θ")
                drop = gr.Slider(0.0, 0.5, value=start["drop"], step=0.05, label="Dropout")
                stem = gr.Radio(["cifar", "imagenet"], value=start["stem"], label="Stem")
                in_channels = gr.Radio(["3", "1"], value=start["in_channels"], label="Input channels")
                classes = gr.Number(
                    value=start["classes"], label="Classes (outputs of the classifier)", precision=0,
                    elem_id="arch-classes",
                )  # fmt: skip
            reuse.render()
            button = gr.Button("Show", variant="primary", elem_id="arch-button")
        with gr.Column(scale=3):
            summary = gr.Markdown(first_summary, elem_id="arch-summary")
            plot = gr.LinePlot(
                first_plot,
                x="layer",
                y="channels",
                color="stage",
                color_map=stage_colours(first_plot),
                title="Channels after each layer",  # the classifier left out: see growth_frame
                elem_id="arch-plot",
            )
            heatmap = gr.Plot(label="Feature reuse (paper, Fig. 5)", show_label=False, elem_id="arch-heatmap")
    table = gr.Dataframe(
        first_table, label="Per-layer channel growth", interactive=False, pinned_columns=1, wrap=True,
        column_widths=_COLUMN_WIDTHS, max_height=600, elem_id="arch-table",
    )  # fmt: skip
    gr.Markdown(f"<small>{MEMORY_NOTE}</small>", elem_id="arch-memory-note")
    fields = [k, blocks, init, bn, theta, drop, stem, in_channels, classes]
    # Only a person's choice fills the fields (.input, not .change), so filling them does not loop back.
    preset.input(_fields_for_preset, preset, fields, api_visibility="private", queue=False)
    for field in fields:
        field.input(lambda: CUSTOM, None, preset, api_visibility="private", queue=False)
    reuse.input(_fields_for_run, [reuse, state], [preset, *fields], api_visibility="private")
    button.click(
        show_architecture,
        [preset, k, blocks, init, bn, theta, drop, stem, in_channels, size, reuse, classes, state],
        [summary, table, plot, heatmap],
        api_name="architecture",
    ).success(_legend_for, plot, plot, api_visibility="private", queue=False)
    return ArchitectureTab(preset, reuse, summary, table, plot, heatmap, size)


def _fields_for_preset(preset: str) -> list[Any]:
    if preset not in PRESETS:  # "custom": keep what the fields hold
        return [gr.skip()] * 9
    return list(config_fields(PRESETS[preset].config))


def _run_config(run: str, state: dict[str, Any] | None) -> DenseNetConfig:
    """The architecture of ``run:<id>``, one of this session's runs."""
    check_run(run, state)
    with user_errors(ValueError, weights.CheckpointError):
        return checkpoints.read_checkpoint_info(checkpoints.find_run(run.removeprefix("run:"))).config


def _fields_for_run(reuse_weights: str, state: dict[str, Any] | None) -> list[Any]:
    """A fine-tuned run chosen for the heatmap: the model shown becomes the run (by its label), and its
    architecture goes into the fields; editing a field then makes it a custom config, as with a preset."""
    if not reuse_weights.startswith("run:"):
        return [gr.skip()] * 10
    cfg = _run_config(reuse_weights, state)
    label = dict((value, label) for label, value in reuse_choices(state)).get(reuse_weights, reuse_weights)
    gr.Info(f"Model: {label}, the architecture of the run whose weights the heatmap shows.")
    choices = [*preset_choices(), (label, reuse_weights), (CUSTOM, CUSTOM)]
    return [gr.update(choices=choices, value=reuse_weights), *config_fields(cfg)]


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
    image_size: float | None = None,
    reuse_weights: str = "none",
    num_classes: float | None = 1000,
    state: dict[str, Any] | None = None,
) -> tuple[str, pd.DataFrame, pd.DataFrame, Figure | None]:
    """Summary, per-layer table, channel plot and feature-reuse heatmap for a preset or a custom config.

    ``num_classes`` (last, so that callers from before it existed keep working) sizes a custom config's head.
    """
    if preset == CUSTOM:
        cfg = _custom_config(
            growth_rate, blocks_text, init_features, bn_size, compression, drop_rate, stem, in_channels, num_classes
        )
    elif preset in PRESETS:
        cfg = PRESETS[preset].config
    elif str(preset).startswith("run:"):
        cfg = _run_config(preset, state)
    else:
        raise gr.Error(f"Unknown model {str(preset)[:100]!r}: choose a preset, one of your runs or 'custom'.")
    size = int(image_size) if image_size else default_image_size(cfg)
    with user_errors(ValueError):
        rows = architecture.channel_growth_table(cfg, size)
        totals = architecture.totals(cfg, size)
    figure, note = _feature_reuse_plot(preset, cfg, reuse_weights, state)
    if note:
        gr.Warning(note)
    summary = _summary(preset, cfg, size, totals) + (f"\n\n**Heatmap:** {note}" if note else "")
    frame = growth_frame(rows)
    return summary, display_table(rows), frame, figure


def _summary(preset: str, cfg: DenseNetConfig, size: int, totals: dict[str, Any]) -> str:
    # A list, not a table: on a phone a 4-column table breaks its words letter by letter.
    name = (
        "Custom config"
        if preset == CUSTOM
        else f"Run {preset.removeprefix('run:')}"
        if preset.startswith("run:")
        else preset
    )
    return (
        f"**{name}: {cfg.variant}**, L = {cfg.depth}, k = {cfg.growth_rate}, blocks {list(cfg.block_config)}, "
        f"θ = {cfg.compression}, {cfg.num_classes} classes, input {size}×{size}×{cfg.in_channels}\n\n"
        f"- **Parameters:** {totals['params']:,} ({units.si(totals['params'])})\n"
        f"- **MACs:** {units.si(totals['macs'], digits=3, sep=' ')}\n"
        f"- **Training activations per image:** {format_bytes(totals['activation_bytes_naive'])} naive, "
        f"{format_bytes(totals['activation_bytes_memory_efficient'])} memory-efficient"
    )


def _whole(name: str, value: Any) -> int:
    if value is None or value == "":
        raise gr.Error(f"{name} is empty; enter a whole number.")
    return int(value)


def _custom_config(
    growth_rate, blocks_text, init_features, bn_size, compression, drop_rate, stem, in_channels, num_classes
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
            num_init_features=_whole("Stem channels", init_features),
            bn_size=int(bn_size),
            compression=float(compression),
            drop_rate=float(drop_rate),
            stem=stem,
            in_channels=int(in_channels),
            num_classes=_whole("Classes", num_classes),
        )


def _layer_label(name: str) -> str:
    """``features.denseblock1.denselayer4`` -> ``block1.layer4``; ``features.transition2`` -> ``transition2``."""
    short = name.removeprefix("features.")
    return short.replace("denseblock", "block").replace("denselayer", "layer")


def display_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The page's view of ``architecture.channel_growth_table``: plain-word headers, readable units."""
    return pd.DataFrame(
        [
            (
                _layer_label(row["name"]),
                f"{row['in_channels']} → {row['out_channels']}",
                f"{row['out_h']}×{row['out_w']}",
                units.si(row["params"]),
                units.si(row["macs"]),
                format_bytes(row["activation_bytes"]),
                format_bytes(row["activation_bytes_memory_efficient"]),
                row["op"],
            )
            for row in rows
        ],
        columns=list(DISPLAY_COLUMNS),
    )


def stage_colours(frame: pd.DataFrame) -> dict[str, str]:
    """A colour for each stage in ``frame`` (the plot's legend then lists exactly those)."""
    stages = list(dict.fromkeys(frame["stage"])) if len(frame) else []
    return {stage: _STAGE_COLOURS[i % len(_STAGE_COLOURS)] for i, stage in enumerate(stages)}


def _legend_for(plot: Any) -> dict[str, Any]:
    """The plot's colours for the stages it shows now: its legend forgets a previous model's (block 4 of
    DenseNet-121 under a 3-block CIFAR model). A step after the endpoint, whose answer stays the data itself."""
    if plot is None:
        return gr.skip()
    frame = pd.DataFrame(plot.data, columns=plot.columns)
    return gr.update(color_map=stage_colours(frame))


def growth_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Channels after each row, one series per stage, for the plot.

    Each stage also starts from the previous stage's last point, so the line is unbroken and a transition
    shows as the drop it is (the saw-tooth). The classifier is left out: its outputs are classes, not
    feature channels, and 1000 of them would squash the growth into the bottom of the plot.
    """
    rows = [row for row in rows if row["name"] != "classifier"]
    points = []
    for i, row in enumerate(rows):
        if i and row["stage"] != rows[i - 1]["stage"]:
            points.append({"layer": i - 1, "channels": rows[i - 1]["out_channels"], "stage": row["stage"]})
        points.append({"layer": i, "channels": row["out_channels"], "stage": row["stage"]})
    return pd.DataFrame(points)


def _same_architecture(a: DenseNetConfig, b: DenseNetConfig) -> bool:
    # Dropout and memory-efficiency change how a model trains, not its weights' shapes.
    neutral = {"drop_rate": 0.0, "memory_efficient": False}
    return a.replace(**neutral) == b.replace(**neutral)


def _feature_reuse_plot(
    preset: str, cfg: DenseNetConfig, reuse_weights: str, state: dict[str, Any] | None
) -> tuple[Figure | None, str]:
    """The heatmap of ``reuse_weights`` when they belong to ``cfg``'s architecture, else (None, why not)."""
    if reuse_weights == "none":
        return None, ""
    if reuse_weights.startswith("run:"):
        check_run(reuse_weights, state)  # the same rule as Predict: the session's own runs and the published
        run_id = reuse_weights.removeprefix("run:")
        with user_errors(ValueError, weights.CheckpointError):
            source = checkpoints.read_checkpoint_info(checkpoints.find_run(run_id)).config
        what, model, hint = f"fine-tuned run {run_id}", reuse_weights, "choose the run in the heatmap list again"
    elif reuse_weights != "imagenet":
        raise unknown_model(reuse_weights)
    else:
        try:
            model = pretrained.imagenet_preset_for(preset if preset in PRESETS else cfg)
        except ValueError:
            return None, (
                f"not drawn: there are no ImageNet weights for {'this custom config' if preset == CUSTOM else preset}; "
                f"they exist for {', '.join(IMAGENET_PRESETS)}. Choose one of those, a fine-tuned run, or 'none'."
            )
        source = PRESETS[model].config
        what, hint = f"the ImageNet weights of {model}", f"choose {model}"
    if not _same_architecture(cfg, source):
        return None, (
            f"not drawn: {what} are for another architecture ({source.variant}, k = {source.growth_rate}, "
            f"blocks {list(source.block_config)}, {source.num_classes} classes) than the one shown; "
            f"{hint} to see its architecture, or choose 'none'."
        )
    with user_errors(ValueError, weights.CheckpointError, OSError):
        predictor = predict.get_predictor(model, "imagenet" if reuse_weights == "imagenet" else weights.DEFAULT)
    if predictor.notice:  # the ImageNet weights could not be had: a heatmap of random weights would mislead
        return None, f"not drawn: {names_only(predictor.notice)}"
    reuse = architecture.feature_reuse(predictor.model, predictor.cfg)
    return plots.feature_reuse_figure(reuse, predictor.weights_label), ""
