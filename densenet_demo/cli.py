"""Command line: ``python -m densenet_demo presets|arch|predict|train|export ...``.

The same engine as the web app; this module parses arguments, calls the engine, and prints.
Exit codes: 0 success, 1 some inputs failed (e.g. one bad image among several, an export that failed its
check), 2 bad arguments or data.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from .units import mib, si

EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad arguments or data: one line on stderr, exit code 2."""


def _add_training_settings(p: argparse.ArgumentParser) -> None:
    """The training settings the Fine-tune tab has, under the same names (``train_settings``). A flag left out
    takes the shared default, which ``train_settings.config_from_settings`` fills in, as the page's handler does."""
    from .train_settings import CHOICES, DEFAULTS, SETTING_HELP

    types = {"epochs": int, "lr": float, "label_smoothing": float, "batch_size": int, "early_stopping": int}
    types["bn_recalibration"] = int
    types |= {"val_fraction": float, "image_size": int, "seed": int, "time_budget": str}
    for name, default in DEFAULTS.items():
        flag, line = "--" + name.replace("_", "-"), SETTING_HELP[name].replace("%", "%%")
        shown = "the recipe's" if default is None else default
        text = line if "default:" in line else f"{line} (default: {shown})"
        if isinstance(default, bool):
            p.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=line)
        elif name in CHOICES:
            p.add_argument(flag, choices=CHOICES[name], default=argparse.SUPPRESS, help=text)
        else:
            p.add_argument(flag, type=types.get(name, str), default=argparse.SUPPRESS, help=text)


def training_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The training settings given as flags, by name (for ``train_settings.config_from_settings``)."""
    from .train_settings import DEFAULTS

    return {name: getattr(args, name) for name in DEFAULTS if hasattr(args, name)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m densenet_demo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("presets", help="list the named DenseNets with params and MACs")
    p.add_argument("--format", choices=("table", "json", "markdown"), default="table")
    p.set_defaults(handler=_cmd_presets)

    p = sub.add_parser("arch", help="per-layer channel-growth table of a preset or a config JSON file")
    p.add_argument("model", help="preset name or path to a config .json")
    p.add_argument("--image-size", type=int, default=None, help="input side in pixels (default: the model's own)")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--format", choices=("table", "json", "markdown"), default="table")
    p.set_defaults(handler=_cmd_arch)

    p = sub.add_parser("predict", help="classify images")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model", required=True, help="preset name or a fine-tuned checkpoint folder")
    p.add_argument("--weights", default=None, help="imagenet | random | PATH (.safetensors/.pth)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print one JSON object per image")
    p.add_argument("--cam", metavar="OUT.png", default=None, help="write a Grad-CAM overlay (first image)")
    p.set_defaults(handler=_cmd_predict)

    p = sub.add_parser("train", help="fine-tune or train on a folder or zip of class subfolders")
    p.add_argument("data", help="folder or .zip of class subfolders (or train/ and val/), or 'example'")
    p.add_argument("--model", help="preset name or a fine-tuned checkpoint folder (a new run needs it)")
    p.add_argument(
        "--resume", metavar="RUN", help="continue a finished or stopped run (its id or folder) on the same data, "
        "with its own settings, for --epochs more epochs (default 5)",
    )  # fmt: skip
    _add_training_settings(p)
    p.add_argument("--out", default=None, help="folder for the run's checkpoint (default: weights/runs/<run-id>)")
    p.add_argument("--json", action="store_true", help="print one JSON event per line")
    p.add_argument(
        "--sync-bn", action="store_true", help="under torchrun on GPUs: BatchNorm statistics over all processes"
    )
    p.set_defaults(handler=_cmd_train)

    p = sub.add_parser("export", help="export a model or fine-tuned run to ONNX, with a zip bundle beside it")
    p.add_argument("model", metavar="MODEL_OR_RUN", help="preset name, run:<run-id> or a checkpoint folder")
    p.add_argument("--weights", default=None, help="imagenet | random | PATH (presets only)")
    p.add_argument("--format", default="onnx", help="onnx (the only format so far)")
    p.add_argument("--out", required=True, metavar="FILE.onnx", help="also writes FILE.zip: model + JSON + README")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.set_defaults(handler=_cmd_export)
    return parser


def _render(headers: list[str], groups: list[tuple[str, list[list[str]]]], fmt: str, left: set[int]) -> str:
    """Rows grouped under titles, as fixed-width text or one markdown table; ``left``: text columns."""
    titled = any(title for title, _ in groups)
    if fmt == "markdown":
        stage = ["stage"] if titled else []
        lines = ["| " + " | ".join([*stage, *headers]) + " |", "|" + "---|" * (len(stage) + len(headers))]
        lines += ["| " + " | ".join([title, *row][1 - titled :]) + " |" for title, rows in groups for row in rows]
        return "\n".join(lines)
    all_rows = [headers] + [row for _, rows in groups for row in rows]
    widths = [max(len(row[i]) for row in all_rows) for i in range(len(headers))]
    indent = "  " if titled else ""

    def line(row: list[str]) -> str:
        cells = [c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        return indent + "  ".join(cells).rstrip()

    out = [line(headers)]
    for title, rows in groups:
        out += [title] if title else []
        out += [line(row) for row in rows]
    return "\n".join(out)


def _cmd_presets(args: argparse.Namespace) -> int:
    import json

    from .architecture import totals
    from .config import PRESETS

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
    print(_render(headers, [("", rows)], args.format, left={0, 1, 6}))
    return EXIT_OK


def _load_config(spec: str):
    """A preset by name, or a ``DenseNetConfig`` JSON file by path; ``UsageError`` otherwise."""
    from pathlib import Path

    from .config import PRESETS, DenseNetConfig

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
    table = _render(headers, titled, fmt, left={0, 1})
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


def _cmd_arch(args: argparse.Namespace) -> int:
    import json

    from .architecture import channel_growth_table, totals

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


def _cmd_predict(args: argparse.Namespace) -> int:
    import json

    from .checkpoints import CheckpointError
    from .images import ImageError
    from .predict import get_predictor

    if args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {args.top_k}")
    try:
        predictor = get_predictor(args.model, args.weights)
    except (ValueError, CheckpointError, OSError) as e:
        raise UsageError(str(e)) from None
    if predictor.notice:
        print(f"warning: {predictor.notice}", file=sys.stderr)
    results = predictor.predict_images(args.images, top_k=args.top_k, names=args.images)
    classified = []
    for path, result in zip(args.images, results, strict=True):
        if isinstance(result, ImageError):
            print(f"error: {result}", file=sys.stderr)
            if args.json:
                print(json.dumps({"image": path, "error": str(result)}))
            continue
        classified.append(path)
        if args.json:
            top = [{"label": label, "probability": round(p, 6)} for label, p in result.labels]
            record = {"image": path, "model": args.model, "weights": predictor.weights_label, "top_k": top}
            print(json.dumps({**record, "latency_ms": round(result.latency_ms, 2)}))
        else:
            print(f"{path}  ({result.latency_ms:.1f} ms, {args.model}, {predictor.weights_label})")
            for label, p in result.labels:
                print(f"  {p:7.2%}  {label}")
    cam_failed = False
    if args.cam and classified:
        try:
            cam = predictor.gradcam(classified[0])
            cam.overlay.save(args.cam, format="PNG")
            print(f"Grad-CAM of {classified[0]} for '{cam.class_name}' written to {args.cam}", file=sys.stderr)
        except (OSError, ValueError) as e:
            print(f"error: cannot write the Grad-CAM overlay to {args.cam} ({e})", file=sys.stderr)
            cam_failed = True
    return EXIT_PARTIAL if len(classified) < len(args.images) or cam_failed else EXIT_OK


def _cmd_train(args: argparse.Namespace) -> int:
    from .cli_train import train_command  # the train command's own module (it imports this one)

    return train_command(args)


def _cmd_export(args: argparse.Namespace) -> int:
    from .checkpoints import CheckpointError
    from .export import EXPORT_FORMATS, ExportError, export_onnx

    if args.format not in EXPORT_FORMATS:
        raise UsageError(f"unknown export format {args.format!r}; choose one of: {', '.join(EXPORT_FORMATS)}")
    try:
        result = export_onnx(args.model, args.weights, out=args.out, opset=args.opset)
    except (ValueError, CheckpointError, OSError) as e:
        raise UsageError(str(e)) from None
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_PARTIAL
    if result.notice:
        print(f"warning: {result.notice}", file=sys.stderr)
    print(f"{result.onnx_path}  ({mib(result.size_bytes)} MiB, opset {result.opset}, batch dimension dynamic)")
    print(f"{result.bundle_path}  ({mib(result.bundle_size_bytes)} MiB: model.onnx, model.json, README.md)")
    print(
        f"check: onnxruntime vs PyTorch max |Δlogit| {result.max_abs_diff:.2e} (allowed {result.tolerance:.1e}) "
        f"at batch {' and '.join(map(str, result.metadata['check']['batch_sizes']))}; {result.seconds:.1f} s"
    )
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # The command line prints what the engine reports (notices, errors) itself; the engine's log records are
    # for servers, so here they must not reach the terminal a second time through logging's last resort.
    package_logger = logging.getLogger("densenet_demo")
    if not package_logger.handlers:
        package_logger.addHandler(logging.NullHandler())
    try:
        return args.handler(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`... | head`): stop quietly, and keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
