"""The Architecture tab: its display helpers, its /architecture endpoint, and the page in headless Chromium.

The browser tests drive Debian's chromium through Playwright, as a person would use the tab on a desktop
and on a 400-px phone screen.
"""

from __future__ import annotations

import re

import pytest
from helpers import pick
from playwright.sync_api import expect

from densenet_demo import architecture
from densenet_demo.config import PRESETS, DenseNetConfig
from densenet_demo.data.images import default_preprocessing
from densenet_demo.hosting import runs
from densenet_demo.model import DenseNet
from densenet_demo.ui.architecture_tab import (
    DISPLAY_COLUMNS,
    display_table,
    format_bytes,
    growth_frame,
    show_architecture,
)
from densenet_demo.weights import checkpoints

RUN_CONFIG = DenseNetConfig(
    growth_rate=4, block_config=(2, 3), num_init_features=8, bn_size=2, compression=0.5, stem="cifar", num_classes=3
)
RUN_ID = "arch-tiny"

# The positional inputs of /architecture for a custom config with 10 classes: DenseNet-BC L=100 k=12's own.
BC100_K12_CUSTOM = ("custom", 12, "16,16,16", 24, 4, 0.5, 0.0, "cifar", "3", None, "none", 10)


# --- the page's view of the rows (no server) ---------------------------------------------------------


def test_bytes_are_shown_in_powers_of_1024():
    assert format_bytes(3211264) == "3.06 MiB"
    assert format_bytes(1536) == "1.50 KiB"
    assert format_bytes(512) == "512 B"
    assert format_bytes(3 * 2**30) == "3.00 GiB"


def test_display_table_reads_first_columns_first_with_units():
    rows = architecture.channel_growth_table(PRESETS["densenet121"].config)
    table = display_table(rows)
    assert list(table.columns) == list(DISPLAY_COLUMNS)
    assert list(table.columns[:5]) == ["Layer", "Channels in → out", "Output size", "Params", "MACs"]
    assert table.iloc[4]["Layer"] == "block1.layer1" and table.iloc[10]["Layer"] == "transition1"
    assert not any("_" in column for column in table.columns)
    first = table.iloc[0]  # conv0: 3 → 64 channels at 112×112, 9,408 params, 118,013,952 MACs, 3,211,264 bytes
    assert (first["Layer"], first["Channels in → out"], first["Output size"]) == ("conv0", "3 → 64", "112×112")
    assert (first["Params"], first["MACs"], first["Activations (naive)"]) == ("9.41K", "118.01M", "3.06 MiB")
    assert table.iloc[-1]["Operation"] == "Linear(1000)"
    assert len(table) == len(rows)


def test_channel_plot_leaves_out_the_classifier_outputs():
    rows = architecture.channel_growth_table(PRESETS["densenet_bc100_k12"].config.replace(num_classes=1000))
    points = growth_frame(rows)
    assert points["channels"].max() == 342  # the last block's width, not the 1000 classes
    stages = len({row["stage"] for row in rows})  # stem, 3 blocks, 2 transitions, head
    assert len(points) == len(rows) - 1 + stages - 1  # every row but the classifier, plus a joint per later stage


def test_the_plot_legend_names_only_the_stages_the_model_has():
    from densenet_demo.ui.architecture_tab import stage_colours

    *_, frame, _ = show_architecture("densenet40_k12", 12, "12,12,12", 16, 0, 1.0, 0.0, "cifar", "3")
    colours = stage_colours(frame)
    assert list(colours) == ["stem", "block 1", "transition 1", "block 2", "transition 2", "block 3", "head"]
    wide = growth_frame(architecture.channel_growth_table(PRESETS["densenet121"].config))
    assert stage_colours(wide)["block 1"] == colours["block 1"]  # a stage keeps its colour across models


def test_custom_config_with_the_presets_classes_has_the_presets_params():
    summary, table, _, heatmap = show_architecture(*BC100_K12_CUSTOM)
    assert "769,162" in summary and "10 classes" in summary
    assert table.iloc[-1]["Operation"] == "Linear(10)"
    assert heatmap is None


# --- the running app ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(app_server) -> str:
    """A fine-tuned run of a small custom architecture, in the app's runs folder."""
    checkpoints.save_checkpoint(
        app_server.weights_dir / "runs" / RUN_ID,
        DenseNet(RUN_CONFIG),
        class_names=["a", "b", "c"],
        preprocessing=default_preprocessing(RUN_CONFIG),
    )
    return RUN_ID


def _open_tab(browser, url: str, width: int = 1400):
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.set_default_timeout(30_000)
    page.goto(url)
    page.get_by_role("tab", name="Architecture").click()
    return page


@pytest.mark.e2e
def test_api_custom_config_with_classes_matches_the_preset(client):
    summary, table, _, _ = client.predict(*BC100_K12_CUSTOM, api_name="/architecture")
    assert "769,162" in summary
    assert table["headers"][:5] == ["Layer", "Channels in → out", "Output size", "Params", "MACs"]
    assert table["data"][0][3:7] == ["648", "663.55K", "0 B", "96.00 KiB"]


@pytest.mark.e2e
def test_editing_a_field_while_a_preset_is_chosen_shows_the_custom_config(browser, app_server):
    page = _open_tab(browser, app_server.url)
    pick(page, "arch-preset", "densenet_bc100_k12", type_it=False)
    page.get_by_text("Config (the chosen model's").click()
    # Choosing the preset filled the fields with its config, so editing starts from it.
    expect(page.locator("#arch-blocks textarea")).to_have_value("16,16,16")
    expect(page.locator("#arch-classes input")).to_have_value("10")
    blocks = page.locator("#arch-blocks textarea")
    blocks.fill("")
    blocks.press_sequentially("4,4")  # typed, as a person does (a programmatic fill is no user input)
    expect(page.locator("#arch-preset input")).to_have_value("custom")
    page.locator("#arch-button").click()
    summary = page.locator("#arch-summary")
    expect(summary).to_contain_text("Custom config", timeout=20_000)
    expect(summary).to_contain_text("blocks [4, 4]")
    expect(summary).to_contain_text("10 classes")
    page.close()


@pytest.mark.e2e
def test_table_has_plain_headers_and_units_with_params_on_screen(browser, app_server):
    page = _open_tab(browser, app_server.url)
    page.locator("#arch-button").click()  # densenet121, the default
    table = page.locator("#arch-table")
    expect(table).to_contain_text("118.01M", timeout=20_000)
    expect(table).to_contain_text("3.06 MiB")
    expect(table).not_to_contain_text("activation_bytes")
    for header in ("Params", "MACs"):
        box = table.get_by_role("columnheader", name=header, exact=True).first.bounding_box()
        assert box is not None and box["x"] + box["width"] <= 1400, (header, box)
    page.close()


@pytest.mark.e2e
def test_the_tab_opens_with_the_default_models_figures_and_a_phone_sees_layer_and_channels(browser, app_server):
    page = _open_tab(browser, app_server.url, width=390)  # no Show pressed
    expect(page.locator("#arch-summary")).to_contain_text("7,978,856")
    table = page.locator("#arch-table")
    expect(table).to_contain_text("block1.layer1")
    for header in ("Layer", "Channels in → out"):
        box = table.get_by_role("columnheader", name=header, exact=True).first.bounding_box()
        assert box is not None and box["x"] + box["width"] <= 390, (header, box)
    expect(table.locator("thead")).not_to_contain_text("Stage")
    expect(page.locator("#arch-memory-note")).to_contain_text("recomputation")
    page.close()


@pytest.mark.e2e
def test_summary_on_a_phone_breaks_no_word_across_lines(browser, app_server):
    page = _open_tab(browser, app_server.url, width=400)
    page.locator("#arch-button").click()
    summary = page.locator("#arch-summary")
    expect(summary).to_contain_text("7,978,856", timeout=20_000)
    # Every word of the summary's text lies on one line: its glyphs' boxes share one top.
    broken = summary.evaluate(
        """(el) => {
            const broken = [];
            const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
            while (walker.nextNode()) {
                const node = walker.currentNode;
                for (const m of node.data.matchAll(/\\S+/g)) {
                    const range = document.createRange();
                    range.setStart(node, m.index);
                    range.setEnd(node, m.index + m[0].length);
                    const tops = new Set(Array.from(range.getClientRects())
                        .filter((r) => r.width > 0).map((r) => Math.round(r.top)));
                    if (tops.size > 1) broken.push(m[0]);
                }
            }
            return broken;
        }"""
    )
    assert broken == []
    box = summary.bounding_box()
    assert box is not None and box["x"] + box["width"] <= 400
    page.close()


@pytest.mark.e2e
def test_heatmap_of_a_run_shows_that_runs_architecture_and_never_another(browser, app_server, tiny_run):
    page = _open_tab(browser, app_server.url)  # opened after the run exists, so the list offers it
    label = runs.run_label(checkpoints.read_checkpoint_info(app_server.weights_dir / "runs" / tiny_run))
    pick(page, "arch-reuse", label, type_it=False)
    expect(page.locator("#arch-preset input")).to_have_value(label)  # the model shown is the run, by its label
    page.locator("#arch-button").click()
    summary = page.locator("#arch-summary")
    params = architecture.totals(RUN_CONFIG)["params"]
    expect(summary).to_contain_text(f"{params:,}", timeout=20_000)
    expect(summary).to_contain_text("blocks [2, 3]")
    expect(summary).to_contain_text("3 classes")
    expect(summary).to_contain_text(f"Run {tiny_run}")
    expect(page.locator("#arch-heatmap img").first).to_be_visible(timeout=20_000)
    # Another model with the run's heatmap: the table shows the model, and the heatmap is not drawn.
    pick(page, "arch-preset", "densenet_bc100_k12", type_it=False)
    page.locator("#arch-button").click()
    expect(summary).to_contain_text("769,162", timeout=20_000)
    expect(summary).to_contain_text(re.compile(r"Heatmap:.*not drawn.*another architecture"))
    expect(page.locator("#arch-heatmap img")).to_have_count(0)
    page.close()
