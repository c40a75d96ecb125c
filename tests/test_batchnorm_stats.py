"""BatchNorm statistics recomputed from recent training batches before a validation (training/batchnorm_stats.py)."""

from __future__ import annotations

import pytest
import torch

from densenet_demo.training.batchnorm_stats import RecentBatches, recalibrate_batchnorm


def _net() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.ReLU())


def test_the_statistics_become_the_average_over_the_batches_and_nothing_else_changes():
    net = _net().eval()
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    batches = [torch.randn(4, 1, 6, 6) + shift for shift in (0.0, 3.0)]
    assert recalibrate_batchnorm(net, batches)
    bn = net[1]
    with torch.no_grad():
        outs = [net[0](x) for x in batches]
    expected_mean = torch.stack([o.mean((0, 2, 3)) for o in outs]).mean(0)
    expected_var = torch.stack([o.var((0, 2, 3), unbiased=True) for o in outs]).mean(0)
    assert torch.allclose(bn.running_mean, expected_mean, atol=1e-5)
    assert torch.allclose(bn.running_var, expected_var, atol=1e-5)
    assert int(bn.num_batches_tracked) == 2 and bn.momentum == 0.1 and not net.training
    assert all(torch.equal(net.state_dict()[k], v) for k, v in weights.items())


def test_without_batches_the_running_statistics_stay():
    net = _net()
    before = net[1].running_var.clone()
    assert not recalibrate_batchnorm(net, [])
    assert torch.equal(net[1].running_var, before)


def test_a_stop_during_the_passes_puts_the_old_statistics_back():
    net = _net()
    net(torch.randn(4, 1, 6, 6))  # running statistics that differ from the initial ones
    before = {k: v.clone() for k, v in net[1].named_buffers()}
    calls = []

    def stop_on_second_call(*_):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    net[2].register_forward_hook(stop_on_second_call)
    with pytest.raises(KeyboardInterrupt):
        recalibrate_batchnorm(net, [torch.randn(4, 1, 6, 6) for _ in range(3)])
    assert all(torch.equal(getattr(net[1], k), v) for k, v in before.items()) and net[1].momentum == 0.1


def test_recent_batches_keep_the_last_few_and_zero_turns_them_off():
    recent = RecentBatches(2)
    for i in range(5):
        recent.add(torch.full((2, 1, 6, 6), float(i)))
    net, reference = _net(), _net()
    assert recent.recalibrate(net) and int(net[1].num_batches_tracked) == 2
    recalibrate_batchnorm(reference, [torch.full((2, 1, 6, 6), float(i)) for i in (3, 4)])
    assert torch.allclose(net[1].running_mean, reference[1].running_mean)
    off = RecentBatches(0)
    off.add(torch.randn(2, 1, 6, 6))
    assert not off.recalibrate(net) and int(net[1].num_batches_tracked) == 2
