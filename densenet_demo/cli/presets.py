"""``presets``: the named DenseNets with their params and MACs."""

from __future__ import annotations

import argparse
import json

from ..units import si
from .common import EXIT_OK, render


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("presets", help="list the named DenseNets with params and MACs")
    p.add_argument("--format", choices=("table", "json", "markdown"), default="table")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..architecture import totals
    from ..config import PRESETS

    records = []
    for name, preset in PRESETS.items():
        cfg = preset.config
        t = totals(cfg)
        records.append(
            {
                "name": name,
                "variant": cfg.variant,
                "depth": cfg.depth,
                "params": t["params"],
                "macs": t["macs"],
                "image_size": t["image_size"],
                "summary": preset.summary,
                "config": cfg.to_dict(),
            }
        )
    if args.format == "json":
        print(json.dumps(records, indent=2))
        return EXIT_OK
    headers = ["name", "variant", "depth", "params", "GMACs", "size", "summary"]
    rows = [
        [r["name"], r["variant"], str(r["depth"]), si(r["params"]), f"{r['macs'] / 1e9:.3f}"]
        + [str(r["image_size"]), r["summary"]]
        for r in records
    ]
    print(render(headers, [("", rows)], args.format, left={0, 1, 6}))
    return EXIT_OK
