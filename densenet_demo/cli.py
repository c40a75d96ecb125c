"""Command line: ``python -m densenet_demo presets|arch|predict|train ...``.

The same engine as the web app; this module parses arguments, calls the engine, and prints.
Exit codes: 0 success, 1 some inputs failed (e.g. one bad image among several), 2 bad arguments or data.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad arguments or data: one line on stderr, exit code 2."""


def _build_parser() -> argparse.ArgumentParser:
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
    p.add_argument("--model", required=True, help="preset name or a fine-tuned checkpoint folder")
    p.add_argument("--weights", default=None, help="imagenet | random | PATH")
    p.add_argument("--mode", choices=("linear", "finetune", "scratch"), default="linear")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--out", default=None, help="folder for the run's checkpoint (default: weights/runs/<run-id>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON event per line")
    p.set_defaults(handler=_cmd_train)
    return parser


def _cmd_presets(args: argparse.Namespace) -> int:
    raise NotImplementedError


def _cmd_arch(args: argparse.Namespace) -> int:
    raise NotImplementedError


def _cmd_predict(args: argparse.Namespace) -> int:
    raise NotImplementedError


def _cmd_train(args: argparse.Namespace) -> int:
    raise NotImplementedError


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
