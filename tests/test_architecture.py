"""The analytic channel-growth table, checked against the module, torchvision's figures and the paper."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from densenet_demo.architecture import MAX_IMAGE_SIZE, channel_growth_table, check_against_module, feature_reuse, totals
from densenet_demo.config import PRESETS, DenseNetConfig, min_image_size
from densenet_demo.model import DenseNet

ROW_FIELDS = {
    "kind", "name", "stage", "block", "layer", "op", "in_channels", "bottleneck_channels", "new_channels",
    "out_channels", "out_h", "out_w", "out_hw", "params", "macs", "activation_bytes",
    "activation_bytes_memory_efficient",
}  # fmt: skip


# One preset per family stays in the fast loop (ImageNet stem, plain and BC CIFAR, grayscale); the deeper and wider
# presets go through the same code and run with the end-to-end tests.
FAST_PRESETS = {"densenet121", "densenet40_k12", "densenet_bc100_k12", "densenet_fashion"}
EVERY_PRESET = [pytest.param(name, marks=[] if name in FAST_PRESETS else [pytest.mark.e2e]) for name in PRESETS]


@pytest.mark.parametrize("name", EVERY_PRESET)
def test_table_agrees_with_the_module_for_every_preset(name):
    assert check_against_module(PRESETS[name].config) == []


@pytest.mark.parametrize("name", EVERY_PRESET)
def test_analytic_params_equal_the_modules_parameter_count(name):
    cfg = PRESETS[name].config
    with torch.device("meta"):
        model = DenseNet(cfg)
    assert totals(cfg)["params"] == sum(p.numel() for p in model.parameters())


def test_table_agrees_with_real_kernels_at_an_odd_size(tiny_config):
    cfg = tiny_config.replace(stem="imagenet", bn_size=0, compression=0.3)
    assert check_against_module(cfg, image_size=37, device="cpu") == []
    assert check_against_module(PRESETS["densenet_fashion"].config, device="cpu") == []


def test_check_reports_a_table_that_does_not_fit_the_module(tiny_config, monkeypatch):
    import densenet_demo.architecture as architecture

    real = architecture.channel_growth_table

    def off_by_one(cfg, image_size=None):
        rows = real(cfg, image_size)
        rows[1]["out_channels"] += 1
        rows[1]["params"] += 1
        return rows

    monkeypatch.setattr(architecture, "channel_growth_table", off_by_one)
    problems = check_against_module(tiny_config)
    layer = "features.denseblock1.denselayer1"
    assert f"{layer}: 12 channels after concatenation but the table says 13" in problems
    assert f"{layer}: 384 parameters but the table says 385" in problems
    assert len(problems) == 2


@pytest.mark.parametrize(
    ("name", "params", "gmacs"),
    [
        ("densenet121", 7_978_856, 2.834),
        ("densenet161", 28_681_000, 7.728),
        ("densenet169", 14_149_480, 3.360),
        ("densenet201", 20_013_928, 4.291),
    ],
)
def test_torchvision_published_params_and_macs(name, params, gmacs):
    t = totals(PRESETS[name].config, 224)
    assert t["params"] == params
    assert t["macs"] / 1e9 == pytest.approx(gmacs, rel=1e-3)


@pytest.mark.parametrize(
    ("name", "millions"),
    [
        ("densenet40_k12", 1.0),
        ("densenet100_k12", 7.0),
        ("densenet100_k24", 27.2),
        ("densenet_bc100_k12", 0.8),
        ("densenet_bc250_k24", 15.3),
        ("densenet_bc190_k40", 25.6),
    ],
)
def test_paper_cifar_model_sizes_and_depths(name, millions):
    cfg = PRESETS[name].config
    assert totals(cfg)["params"] / 1e6 == pytest.approx(millions, abs=0.05)
    depth = int(name.split("_")[-2].removeprefix("densenet").removeprefix("bc"))
    assert cfg.depth == depth
    assert totals(cfg)["depth"] == depth


@pytest.mark.parametrize("name", ["densenet121", "densenet40_k12", "densenet_bc100_k12"])
def test_channel_growth_follows_the_formulas(name):
    cfg = PRESETS[name].config
    rows = channel_growth_table(cfg)
    k = cfg.growth_rate
    k0 = cfg.num_init_features
    for row in rows:
        if row["kind"] == "dense_layer":
            if row["layer"] == 1:
                k0 = row["in_channels"]
            assert row["in_channels"] == k0 + k * (row["layer"] - 1)
            assert row["out_channels"] == k0 + k * row["layer"]
            assert row["new_channels"] == k
            assert row["bottleneck_channels"] == (cfg.bn_size * k if cfg.bn_size else None)
        elif row["kind"] == "transition":
            assert row["out_channels"] == math.floor(cfg.compression * row["in_channels"])
    assert sum(r["kind"] == "dense_layer" for r in rows) == sum(cfg.block_config)
    assert sum(r["kind"] == "transition" for r in rows) == len(cfg.block_config) - 1


def test_transition_rounds_down_a_fractional_width():
    cfg = DenseNetConfig(growth_rate=5, block_config=(3, 2), num_init_features=6, compression=0.3, stem="cifar")
    transition = next(r for r in channel_growth_table(cfg) if r["kind"] == "transition")
    assert transition["in_channels"] == 21
    assert transition["out_channels"] == 6  # floor(0.3 * 21) = floor(6.3)


def test_densenet121_spatial_sizes_at_224():
    rows = channel_growth_table(PRESETS["densenet121"].config, 224)
    first_of_block = {r["block"]: r["out_hw"] for r in rows if r["kind"] == "dense_layer" and r["layer"] == 1}
    assert first_of_block == {1: "56x56", 2: "28x28", 3: "14x14", 4: "7x7"}
    assert rows[0]["name"] == "features.conv0" and rows[0]["out_hw"] == "112x112"
    assert [r["name"] for r in rows[-3:]] == ["features.norm5", "global_pool", "classifier"]


def test_rows_have_the_documented_fields_and_are_json():
    rows = channel_growth_table(PRESETS["densenet_bc100_k12"].config)
    assert all(set(r) == ROW_FIELDS for r in rows)
    assert {r["kind"] for r in rows} == {"stem", "dense_layer", "transition", "head"}
    assert json.loads(json.dumps(rows)) == rows
    assert json.loads(json.dumps(totals(PRESETS["densenet_bc100_k12"].config)))["params"] == 769_162


def test_totals_sum_the_rows():
    cfg = PRESETS["densenet169"].config
    rows, t = channel_growth_table(cfg, 96), totals(cfg, 96)
    assert t["image_size"] == 96
    assert t["num_layers"] == 82 and t["num_blocks"] == 4 and t["num_features"] == 1664
    assert t["macs"] == sum(r["macs"] for r in rows)
    assert t["activation_bytes_naive"] == sum(r["activation_bytes"] for r in rows)
    assert t["activation_bytes_memory_efficient"] == sum(r["activation_bytes_memory_efficient"] for r in rows)


def test_default_image_size_is_the_configs_own():
    assert totals(PRESETS["densenet121"].config)["image_size"] == 224
    assert totals(PRESETS["densenet40_k12"].config)["image_size"] == 32
    assert totals(PRESETS["densenet_fashion"].config)["image_size"] == 64


@pytest.mark.parametrize("size", [0, 28, MAX_IMAGE_SIZE + 1, 2.5, "224"])
def test_image_size_out_of_range_is_refused(size):
    cfg = PRESETS["densenet121"].config
    assert min_image_size(cfg) > 28
    with pytest.raises(ValueError, match="image size"):
        channel_growth_table(cfg, size)


def test_smallest_accepted_image_size_works():
    cfg = PRESETS["densenet121"].config
    assert check_against_module(cfg, min_image_size(cfg)) == []


# --- activation memory ----------------------------------------------------------------------------


def _saved_tensor_bytes(cfg: DenseNetConfig, size: int, batch: int = 2) -> float:
    """What autograd really saves for backward in a naive training step, per image."""
    model = DenseNet(cfg).train()
    x = torch.randn(batch, cfg.in_channels, size, size)
    excluded = {p.untyped_storage().data_ptr() for p in model.parameters()} | {x.untyped_storage().data_ptr()}
    storages = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in excluded and t.dim() > 1:  # 1-d: BatchNorm's per-channel statistics
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(storages.values()) / batch


@pytest.mark.parametrize(
    ("cfg", "size"),
    [
        (PRESETS["densenet_fashion"].config, 64),
        (PRESETS["densenet40_k12"].config, 32),
        (PRESETS["densenet_bc100_k12"].config, 32),
        (PRESETS["densenet121"].config, 32),
    ],
    ids=["fashion", "plain-cifar", "bc-cifar", "densenet121"],
)
def test_naive_activation_bytes_are_what_autograd_saves(cfg, size):
    assert totals(cfg, size)["activation_bytes_naive"] == _saved_tensor_bytes(cfg, size)


def test_naive_memory_grows_quadratically_and_memory_efficient_linearly():
    def dense_bytes(layers: int) -> dict:
        cfg = DenseNetConfig(growth_rate=12, block_config=(layers,), num_init_features=12, bn_size=0, stem="cifar")
        return totals(cfg, 32)

    short, long = dense_bytes(16), dense_bytes(32)
    naive = long["dense_activation_bytes_naive"] / short["dense_activation_bytes_naive"]
    efficient = long["dense_activation_bytes_memory_efficient"] / short["dense_activation_bytes_memory_efficient"]
    assert 3.7 < naive < 4.1
    assert 2.2 > efficient > 1.9


@pytest.mark.parametrize("name", list(PRESETS))
def test_memory_efficient_needs_less_than_naive(name):
    t = totals(PRESETS[name].config)
    assert 0 < t["activation_bytes_memory_efficient"] < t["activation_bytes_naive"]
    assert t["dense_activation_bytes_memory_efficient"] < t["dense_activation_bytes_naive"] / 2


def test_dropout_adds_its_mask_to_both_estimates(tiny_config):
    plain, dropped = totals(tiny_config), totals(tiny_config.replace(drop_rate=0.2))
    extra = dropped["activation_bytes_naive"] - plain["activation_bytes_naive"]
    assert extra > 0
    assert dropped["activation_bytes_memory_efficient"] - plain["activation_bytes_memory_efficient"] == extra


# --- feature reuse --------------------------------------------------------------------------------


def test_feature_reuse_matrices_are_lower_triangular_and_row_normalised(tiny_config):
    cfg = tiny_config.replace(block_config=(3, 4))
    result = feature_reuse(DenseNet(cfg))
    assert [b["block"] for b in result["blocks"]] == [1, 2]
    for block, layers in zip(result["blocks"], cfg.block_config, strict=True):
        matrix = block["matrix"]
        assert isinstance(matrix, np.ndarray) and matrix.shape == (layers + 1, layers + 1)
        connected = np.tril(np.ones_like(matrix, dtype=bool))
        assert np.isnan(matrix[~connected]).all()
        assert np.isfinite(matrix[connected]).all()
        np.testing.assert_allclose(np.nanmax(matrix, axis=1), 1.0)
        assert len(block["targets"]) == len(block["sources"]) == layers + 1
    assert result["blocks"][0]["targets"][-1] == "transition 1"
    assert result["blocks"][1]["targets"][-1] == "classifier"
    assert result["blocks"][1]["sources"][0] == "block input"


def test_feature_reuse_shows_a_strong_connection_where_we_put_one(tiny_config):
    cfg = tiny_config.replace(block_config=(4, 3))
    model = DenseNet(cfg)
    k, k0 = cfg.growth_rate, cfg.num_init_features
    with torch.no_grad():
        # Layer 4 of block 1 reads the block input, then k channels each from layers 1, 2, 3.
        model.features.denseblock1.denselayer4.conv1.weight[:, k0 + k : k0 + 2 * k] = 100.0
        # The classifier reads the last block's output; make it lean on the block input.
        model.classifier.weight[:, : model.features.transition1.conv.out_channels] = 100.0
    blocks = feature_reuse(model.state_dict(), cfg)["blocks"]
    row = blocks[0]["matrix"][3]
    assert row[2] == 1.0 and np.all(row[[0, 1, 3]] < 0.1) and np.isnan(row[4])
    classifier_row = blocks[1]["matrix"][-1]
    assert classifier_row[0] == 1.0 and np.all(classifier_row[1:] < 0.1)


def test_feature_reuse_from_a_state_dict_matches_the_module(tiny_config):
    model = DenseNet(tiny_config)
    from_module = feature_reuse(model)["blocks"]
    from_state = feature_reuse(model.state_dict(), tiny_config)["blocks"]
    for a, b in zip(from_module, from_state, strict=True):
        np.testing.assert_array_equal(a["matrix"], b["matrix"])


def test_feature_reuse_refuses_weights_of_another_architecture(tiny_config):
    state = DenseNet(tiny_config).state_dict()
    with pytest.raises(ValueError, match="input channels"):
        feature_reuse(state, tiny_config.replace(growth_rate=5))
    with pytest.raises(ValueError, match="denselayer3"):
        feature_reuse(state, tiny_config.replace(block_config=(3, 2)))
    with pytest.raises(ValueError, match="DenseNetConfig"):
        feature_reuse(state)
