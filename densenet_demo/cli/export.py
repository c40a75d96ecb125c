"""``export``: a model or fine-tuned run to ONNX, checked against PyTorch, with a zip bundle beside it."""

from __future__ import annotations

import argparse
import sys

from ..units import mib
from .common import EXIT_OK, EXIT_PARTIAL, UsageError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model or fine-tuned run to ONNX, with a zip bundle beside it")
    p.add_argument("model", metavar="MODEL_OR_RUN", help="preset name, run:<run-id> or a checkpoint folder")
    p.add_argument("--weights", default=None, help="imagenet | random | PATH (presets only)")
    p.add_argument("--format", default="onnx", help="onnx (the only format so far)")
    p.add_argument("--out", required=True, metavar="FILE.onnx", help="also writes FILE.zip: model + JSON + README")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..serving.export import EXPORT_FORMATS, ExportError, export_onnx
    from ..weights.checkpoints import CheckpointError

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
