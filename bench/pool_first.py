"""Transitions that pool before their 1x1 convolution against the model's own order, forward pass alone.

    python bench/pool_first.py [--rounds 25] [--size 224]

Prints one JSON object. DenseNet-121 (random weights: the time does not depend on them), batch 1: its ONNX graph
as written before (conv then pool) and as served now (``onnx_graph.pool_first``) in onnxruntime on 1 and 2
threads, and the ``torch`` backend's forward (``InferenceDenseNet``) with each order; the two of each pair
alternate every round, so the machine's drift hits both alike. For each pair: median ms, and the median and
quartiles of the per-round ratio (pool first / conv first). Also both graphs' multiply-adds
(``torch.utils.flop_counter``) and the largest difference between their logits.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from densenet_demo import inference  # noqa: E402
from densenet_demo.config import PRESETS  # noqa: E402
from densenet_demo.model import DenseNet  # noqa: E402
from densenet_demo.serving import graph_cache, onnx_graph  # noqa: E402


class _ConvFirst(inference.TransitionStep):
    """The ``torch`` backend's transition in the model's own order: convolution, then pool."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(self.norm.relu(x)), 2, 2)


def _pair(first, second, rounds: int) -> dict:
    """Both callables alternated ``rounds`` times after one warm-up call each; medians and per-round ratios."""
    first(), second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for fn, out in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            fn()
            out.append((time.perf_counter() - start) * 1000)
    ratios = [b / a for a, b in zip(*times, strict=True)]
    low, _, high = statistics.quantiles(ratios, n=4)
    return {
        "conv_first_ms": round(statistics.median(times[0]), 1),
        "pool_first_ms": round(statistics.median(times[1]), 1),
        "ratio_median": round(statistics.median(ratios), 3),
        "ratio_quartiles": [round(low, 3), round(high, 3)],
    }


def _gflop(net: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x)
    return round(counter.get_total_flops() / 1e9, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    torch.manual_seed(0)
    net = onnx_graph.cpu_copy(DenseNet(PRESETS["densenet121"].config))
    fast = onnx_graph.pool_first(net)
    x = torch.randn(1, 3, args.size, args.size)
    example = torch.randn(onnx_graph.CHECK_BATCH, 3, args.size, args.size)
    graphs = [onnx_graph._to_onnx_bytes(model, example, graph_cache.OPSET) for model in (net, fast)]
    feed = {onnx_graph.INPUT_NAME: x.numpy()}
    result: dict = {"benchmark": "transitions: pool first vs conv first", "size": args.size, "rounds": args.rounds}
    result["gflop"] = {"conv_first": _gflop(net, x), "pool_first": _gflop(fast, x)}
    for threads in (1, 2):
        slow_session, fast_session = (onnx_graph.onnxruntime_session(g, threads) for g in graphs)
        logits = [s.run(None, feed)[0] for s in (slow_session, fast_session)]
        result[f"onnxruntime_{threads}_threads"] = {
            **_pair(lambda s=slow_session: s.run(None, feed), lambda s=fast_session: s.run(None, feed), args.rounds),
            "max_abs_logit_diff": float(abs(logits[0] - logits[1]).max()),
        }
    torch.set_num_threads(2)
    pool_first = inference.InferenceDenseNet(net)
    conv_first = inference.InferenceDenseNet(net)
    conv_first._steps = [
        _ConvFirst(s.norm, s.conv) if isinstance(s, inference.TransitionStep) else s for s in conv_first._steps
    ]
    with torch.inference_mode():
        result["torch_backend_2_threads"] = {
            **_pair(lambda: conv_first(x), lambda: pool_first(x), args.rounds),
            "max_abs_logit_diff": float((conv_first(x) - pool_first(x)).abs().max()),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
