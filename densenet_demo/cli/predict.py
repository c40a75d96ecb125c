"""``predict``: classify images with a preset or a fine-tuned run; top-k per image, a Grad-CAM overlay; the backend
(PyTorch, onnxruntime, int8) chosen by flag, graphs cached on disk for the next run."""

from __future__ import annotations

import argparse
import json
import sys

from .common import EXIT_OK, EXIT_PARTIAL, UsageError

BACKENDS = ("auto", "torch", "onnxruntime", "int8")  # serving.backends.BACKENDS, without importing torch for --help
BACKEND_HELP = (
    "what computes the predictions (default: auto). auto: onnxruntime when the model's checked ONNX graph is "
    "already in the cache (made by an earlier --backend onnxruntime here, or by the app on this machine), else "
    "PyTorch: a one-shot command never exports for auto. onnxruntime: the first run exports the model and checks "
    "it against PyTorch (densenet121: ~30 s on 2 cores), later runs load the cached graph. int8: the same, "
    "statically quantized and kept only if its top-1 agrees with fp32 on >= 99%% of held-out images (a run: its "
    "validation images); otherwise fp32 answers and a warning says why. torch: PyTorch always"
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify images")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model", required=True, help="preset name or a fine-tuned checkpoint folder")
    p.add_argument("--weights", default=None, help="imagenet | random | PATH (.safetensors/.pth)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print one JSON object per image")
    p.add_argument("--cam", metavar="OUT.png", default=None, help="write a Grad-CAM overlay (first image)")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help=BACKEND_HELP)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..data.images import ImageError
    from ..serving.predict import get_predictor
    from ..weights.checkpoints import CheckpointError

    if args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {args.top_k}")
    try:
        predictor = get_predictor(args.model, args.weights)
    except (ValueError, CheckpointError, OSError) as e:
        raise UsageError(str(e)) from None
    if predictor.notice:
        print(f"warning: {predictor.notice}", file=sys.stderr)
    engine = _engine(predictor, args.backend)
    results = predictor.predict_with(engine, args.images, top_k=args.top_k, names=args.images)
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
            print(json.dumps({**record, "latency_ms": round(result.latency_ms, 2), "backend": result.backend}))
        else:
            where = f"{args.model}, {predictor.weights_label}, {result.backend}"
            print(f"{path}  ({result.latency_ms:.1f} ms, {where})")
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


def _engine(predictor, backend: str):
    """The engine for ``backend``: a graph asked for is prepared now (once: later runs load it from the cache);
    ``auto`` takes a cached graph only. Progress and fallbacks go to stderr."""
    if backend in ("onnxruntime", "int8") and not predictor.graphs.cached(backend):
        print(
            f"preparing {backend} for {predictor.model_key} (once; later runs load it from the cache)", file=sys.stderr
        )
    engine, note = predictor.engine(backend, how="cached" if backend == "auto" else "wait")
    if note:
        print(f"warning: {note}", file=sys.stderr)
    return engine
