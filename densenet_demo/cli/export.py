"""``export``: a model or fine-tuned run to ONNX (checked against PyTorch, a zip bundle beside it), or a fine-tuned
run as a Hugging Face Hub folder (``--format hub``: what ``push`` uploads)."""

from __future__ import annotations

import argparse
import sys

from ..units import mib
from .common import EXIT_OK, EXIT_PARTIAL, UsageError

FORMATS = ("onnx", "hub")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a model or fine-tuned run to ONNX (a zip bundle beside it), or a run as a Hub folder"
    )
    p.add_argument("model", metavar="MODEL_OR_RUN", help="preset name, run:<run-id> or a checkpoint folder")
    p.add_argument("--weights", default=None, help="imagenet | random | PATH (presets only; onnx)")
    p.add_argument(
        "--format",
        default="onnx",
        help="onnx: FILE.onnx + FILE.zip; hub: a folder of model.safetensors, config.json, README.md (model card) "
        "and the confusion matrix, for a fine-tuned run",
    )
    p.add_argument("--out", required=True, metavar="FILE.onnx|DIR", help="onnx: also writes FILE.zip; hub: a folder")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--repo", default=None, metavar="USER/NAME", help="hub: the repository the card's snippets name")
    p.add_argument("--license", default=None, help="hub: the card's license (default: mit)")
    p.add_argument("--onnx", action="store_true", help="hub: add model.onnx to the folder")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..serving.export import ExportError
    from ..weights.checkpoints import CheckpointError

    if args.format not in FORMATS:
        raise UsageError(f"unknown export format {args.format!r}; choose one of: {', '.join(FORMATS)}")
    try:
        return _hub(args) if args.format == "hub" else _onnx(args)
    except (ValueError, CheckpointError, OSError) as e:
        raise UsageError(str(e)) from None
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_PARTIAL


def _onnx(args: argparse.Namespace) -> int:
    from ..serving.export import export_onnx

    result = export_onnx(args.model, args.weights, out=args.out, opset=args.opset)
    if result.notice:
        print(f"warning: {result.notice}", file=sys.stderr)
    print(f"{result.onnx_path}  ({mib(result.size_bytes)} MiB, opset {result.opset}, batch dimension dynamic)")
    print(f"{result.bundle_path}  ({mib(result.bundle_size_bytes)} MiB: model.onnx, model.json, README.md)")
    print(
        f"check: onnxruntime vs PyTorch max |Δlogit| {result.max_abs_diff:.2e} (allowed {result.tolerance:.1e}) "
        f"at batch {' and '.join(map(str, result.metadata['check']['batch_sizes']))}; {result.seconds:.1f} s"
    )
    return EXIT_OK


def _hub(args: argparse.Namespace) -> int:
    from ..serving.hub import export_hub
    from ..serving.model_card import DEFAULT_LICENSE
    from ..weights.hub import parse_hub_ref

    if args.weights:
        raise UsageError("--weights does not apply to --format hub: a fine-tuned run brings its own weights")
    repo = parse_hub_ref(args.repo).repo_id if args.repo else None
    folder = export_hub(args.model, args.out, repo_id=repo, license=args.license or DEFAULT_LICENSE, onnx=args.onnx)
    print(folder.folder)
    for name in folder.files:
        print(f"  {name}  ({_size((folder.folder / name).stat().st_size)})")
    print(f"predict with it: python -m densenet_demo predict IMAGE --model {folder.folder}", file=sys.stderr)
    return EXIT_OK


def _size(n_bytes: int) -> str:
    return f"{mib(n_bytes)} MiB" if n_bytes >= 2**20 else f"{n_bytes / 1024:.1f} KiB"
