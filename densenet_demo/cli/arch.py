"""``arch``: the per-layer channel-growth table of a preset or a config JSON file."""

from __future__ import annotations

import argparse
import json

from ..units import mib, si
from .common import EXIT_OK, UsageError, render


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("arch", help="per-layer channel-growth table of a preset or a config JSON file")
    p.add_argument("model", help="preset name or path to a config .json")
    p.add_argument("--image-size", type=int, default=None, help="input side in pixels (default: the model's own)")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--format", choices=("table", "json", "markdown"), default="table")
    p.set_defaults(handler=run)


def _load_config(spec: str):
    """A preset by name, or a ``DenseNetConfig`` JSON file by path; ``UsageError`` otherwise."""
    from pathlib import Path

    from ..config import PRESETS, DenseNetConfig

    if spec in PRESETS:
        return PRESETS[spec].config
    path = Path(spec)
    if not (spec.endswith(".json") or path.exists()):
        raise UsageError(f"unknown preset {spec!r}; choose one of {', '.join(PRESETS)}, or give a config .json file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read config file {spec}: {getattr(e, 'strerror', None) or e}") from None
    try:
        return DenseNetConfig.from_json(text)
    except ValueError as e:
        raise UsageError(f"{spec}: {e}") from None


def _arch_text(cfg, rows: list[dict], t: dict, fmt: str) -> str:
    headers = ["layer", "op", "in", "out", "HxW", "params", "MMACs", "naive MiB", "mem-eff MiB"]
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["stage"], []).append(r)

    def cells(r: dict) -> list[str]:
        out = f"+{r['new_channels']}={r['out_channels']}" if r["kind"] == "dense_layer" else str(r["out_channels"])
        numbers = [r["macs"] / 1e6, r["activation_bytes"] / 2**20, r["activation_bytes_memory_efficient"] / 2**20]
        short = r["name"].rsplit(".", 1)[-1]
        return [short, r["op"], str(r["in_channels"]), out, r["out_hw"], si(r["params"])] + [
            f"{x:.2f}" if x else "-" for x in numbers
        ]

    def title(stage: str, members: list[dict]) -> str:
        first, last = members[0], members[-1]
        if first["kind"] != "dense_layer":
            return stage
        return f"{stage}: {len(members)} layers, {first['in_channels']} -> {last['out_channels']} channels"

    titled = [(title(s, m) if fmt == "table" else s, [cells(r) for r in m]) for s, m in groups.items()]
    table = render(headers, titled, fmt, left={0, 1})
    size, naive, efficient = t["image_size"], t["activation_bytes_naive"], t["activation_bytes_memory_efficient"]
    heading = (
        f"{cfg.variant}, depth {cfg.depth}, {size}x{size}x{cfg.in_channels} input, k={cfg.growth_rate}, "
        f"bn_size {cfg.bn_size or 'none'}, compression {cfg.compression}, {cfg.num_classes} classes"
    )
    summary = [
        f"total: {si(t['params'])} params ({t['params']:,}), {t['macs'] / 1e9:.3f} GMACs",
        f"training activations per image (fp32): naive {mib(naive)} MiB, "
        f"memory-efficient {mib(efficient)} MiB ({efficient / naive:.0%} of naive)",
    ]
    if fmt == "markdown":
        return f"**{heading}**\n\n{table}\n\n" + "\n".join(f"- {line}" for line in summary)
    return f"{heading}\n\n{table}\n\n" + "\n".join(summary)


def run(args: argparse.Namespace) -> int:
    from ..architecture import channel_growth_table, totals

    cfg = _load_config(args.model)
    try:
        if args.num_classes is not None:
            cfg = cfg.replace(num_classes=args.num_classes)
        rows = channel_growth_table(cfg, args.image_size)
        t = totals(cfg, args.image_size)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.format == "json":
        print(json.dumps({"config": cfg.to_dict(), "rows": rows, "totals": t}, indent=2))
    else:
        print(_arch_text(cfg, rows, t, args.format))
    return EXIT_OK
