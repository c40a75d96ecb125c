"""The DenseNet module and its config: torchvision as the oracle, memory-efficient mode, validation."""

from __future__ import annotations

import pytest
import torch
import torchvision

from densenet_demo.config import PRESETS, DenseNetConfig, get_preset
from densenet_demo.model import DenseNet


# densenet121 keeps the oracle in the fast loop; the three larger presets (same code path, 20-29M parameters to
# initialise twice) run with the end-to-end tests.
@pytest.mark.parametrize(
    "name",
    [
        "densenet121",
        *(pytest.param(name, marks=pytest.mark.e2e) for name in ("densenet161", "densenet169", "densenet201")),
    ],
)
def test_imagenet_presets_compute_what_torchvision_computes(name):
    torch.manual_seed(1234)
    reference = getattr(torchvision.models, name)(weights=None).eval()
    ours = DenseNet(PRESETS[name].config).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert got.shape == (2, 1000)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def _twins(cfg: DenseNetConfig) -> tuple[DenseNet, DenseNet]:
    naive = DenseNet(cfg.replace(memory_efficient=False)).train()
    efficient = DenseNet(cfg.replace(memory_efficient=True)).train()
    efficient.load_state_dict(naive.state_dict())
    return naive, efficient


def _output_and_grads(model: DenseNet, x: torch.Tensor) -> tuple[torch.Tensor, dict, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    out = model(x)
    (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
    return out.detach(), {n: p.grad for n, p in model.named_parameters()}, x.grad


@pytest.mark.parametrize("bn_size", [2, 0], ids=["bottleneck", "plain"])
def test_memory_efficient_mode_gives_the_same_outputs_and_gradients(tiny_config, bn_size):
    naive, efficient = _twins(tiny_config.replace(bn_size=bn_size))
    x = torch.randn(3, 3, 16, 16)
    out_a, grads_a, xgrad_a = _output_and_grads(naive, x)
    out_b, grads_b, xgrad_b = _output_and_grads(efficient, x)
    torch.testing.assert_close(out_b, out_a, rtol=0, atol=1e-6)
    torch.testing.assert_close(xgrad_b, xgrad_a, rtol=0, atol=1e-6)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-5, atol=1e-5, msg=name)


def test_memory_efficient_mode_recomputes_in_backward(tiny_config):
    naive, efficient = _twins(tiny_config)
    x = torch.randn(2, 3, 16, 16)
    calls = {"naive": 0, "efficient": 0}
    for key, model in (("naive", naive), ("efficient", efficient)):
        layer = model.features.denseblock1.denselayer2
        layer.norm1.register_forward_hook(lambda *_, key=key: calls.__setitem__(key, calls[key] + 1))
        model(x).sum().backward()
    assert calls == {"naive": 1, "efficient": 2}


def test_memory_efficient_mode_does_not_recompute_without_grad(tiny_config):
    _, efficient = _twins(tiny_config)
    calls = []
    efficient.features.denseblock1.denselayer1.norm1.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        efficient(torch.randn(1, 3, 16, 16))
    assert calls == [1]


def test_set_grad_checkpointing_switches_every_layer_and_the_config(tiny_config):
    model = DenseNet(tiny_config)
    model.set_grad_checkpointing(True)
    layers = [m for m in model.modules() if hasattr(m, "memory_efficient")]
    assert len(layers) == sum(tiny_config.block_config)
    assert all(m.memory_efficient for m in layers)
    assert model.cfg.memory_efficient is True


def test_reset_classifier_gives_a_fresh_head_of_the_new_width(tiny_config):
    model = DenseNet(tiny_config).eval()
    model.reset_classifier(7)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 7)
    assert model.get_classifier().out_features == 7
    assert model.cfg.num_classes == 7
    assert torch.count_nonzero(model.classifier.bias) == 0


def test_forward_features_and_head_compose_to_forward(tiny_config):
    model = DenseNet(tiny_config).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, model.num_features, 8, 8)
        assert features.min() >= 0  # after the head's ReLU
        torch.testing.assert_close(model.forward_head(features), model(x))
        assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features)


def test_grayscale_preset_takes_one_channel_images():
    model = DenseNet(PRESETS["densenet_fashion"].config).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 64, 64)).shape == (1, 10)


# --- config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"growth_rate": 0}, r"growth_rate must be an integer from 1 to \d+, got 0"),
        ({"block_config": (6, -1)}, r"block_config\[1\] must be an integer from 1 to \d+, got -1"),
        ({"block_config": (6, 10**6)}, r"block_config\[1\] must be an integer from 1 to \d+, got 1000000"),
        ({"block_config": ()}, r"block_config must be a list of 1 to \d+ layer counts, got \(\)"),
        ({"compression": 0.0}, r"compression must be a number with 0.0 < compression <= 1.0, got 0.0"),
        ({"compression": 1.5}, r"compression must be a number with 0.0 < compression <= 1.0, got 1.5"),
        ({"stem": "foo"}, r"stem must be one of imagenet, cifar, got 'foo'"),
        ({"in_channels": 2}, r"in_channels must be 1 \(grayscale\) or 3 \(RGB\), got 2"),
        ({"num_classes": 0}, r"num_classes must be an integer from 1 to \d+, got 0"),
        ({"drop_rate": 1.0}, r"drop_rate must be a number with 0.0 <= drop_rate < 1.0, got 1.0"),
        ({"bn_size": -1}, r"bn_size must be an integer from 0 to \d+, got -1"),
    ],
)
def test_invalid_config_names_the_field_and_its_allowed_range(changes, message):
    with pytest.raises(ValueError, match=message):
        DenseNetConfig(**changes)


def test_unknown_json_field_is_named():
    with pytest.raises(ValueError, match="colour"):
        DenseNetConfig.from_json('{"growth_rate": 12, "colour": "red"}')


def test_malformed_json_is_a_value_error():
    with pytest.raises(ValueError, match="not valid JSON"):
        DenseNetConfig.from_json('{"growth_rate": ')


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_survive_a_json_round_trip(name):
    cfg = PRESETS[name].config
    again = DenseNetConfig.from_json(cfg.to_json())
    assert again == cfg
    assert hash(again) == hash(cfg)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="densenet121"):
        get_preset("densenet122")


def test_an_absurd_value_is_not_repeated_back_in_full():
    with pytest.raises(ValueError, match=r"block_config must be a list of 1 to \d+ layer counts") as err:
        DenseNetConfig(block_config=tuple([1] * 1_000_000))
    assert len(str(err.value)) < 200 and "characters)" in str(err.value)
