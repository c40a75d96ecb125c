"""``review``: what a run's best model gets wrong on its data: confusions with their files, likely mislabels."""

from __future__ import annotations

import argparse
import json
import sys

from .common import EXIT_OK, UsageError

__all__ = ["add_parser", "review_command"]

SHOWN = 10  # suspects and files per confusion in the text output (--json lists them all)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("review", help="a run's mistakes on its data and the images that look mislabelled")
    p.add_argument("run", metavar="RUN", help="run id (weights/runs/<id>, or run:<id>) or a checkpoint folder")
    p.add_argument(
        "data", metavar="DATA", nargs="?", default=None,
        help="folder or .zip of class subfolders (default: the images the run was trained on, when still there)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object: confusions and suspected mislabels")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: a GPU when there is one)")
    p.set_defaults(handler=review_command)


def review_command(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..data.datasets import DatasetError
    from ..training.review import ReviewError, review_run
    from ..weights.checkpoints import CheckpointError

    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if args.json:
            return
        bar = bar or tqdm(total=total, desc="predicting", unit="img", leave=False, file=sys.stderr)
        bar.n = done
        bar.refresh()

    try:
        review = review_run(args.run, args.data, device=args.device, progress=progress)
    except (ReviewError, DatasetError, CheckpointError, ValueError, OSError) as e:
        raise UsageError(str(e)) from None
    finally:
        if bar is not None:
            bar.close()
    for file, reason in review.skipped:
        print(f"skipped {file}: {reason}", file=sys.stderr)
    if review.missing:
        print(
            f"warning: {review.missing} of the run's images are no longer on disk; reviewed the rest", file=sys.stderr
        )
    if args.json:
        print(json.dumps(review.to_dict()))
        return EXIT_OK
    print(_text(review))
    return EXIT_OK


def _text(review) -> str:
    """The review for a terminal: accuracy on the held-out images, the confusions, the suspects."""
    held_out = int((~review.trained_on).sum())
    matrix = review.confusion_matrix()
    right = int(matrix.trace())
    lines = [f"run {review.run_id}: {right} of {held_out} validation images right ({right / max(held_out, 1):.1%})"]
    confusions = review.confusions()
    lines.append("confusions (true -> predicted: count, files most confidently wrong first):" if confusions else "")
    for c in confusions:
        more = f" and {c.count - SHOWN} more" if c.count > SHOWN else ""
        lines.append(f"  {c.true} -> {c.predicted}: {c.count}  {', '.join(c.files[:SHOWN])}{more}")
    suspects = review.suspected_mislabels()
    lines.append(
        f"{len(suspects)} suspected mislabels of {len(review.files)} images (training images: {review.method}):"
    )
    for s in suspects[:SHOWN]:
        lines.append(f"  {s.file}  {s.caption()}, p(given) {s.p_label:.2f}")
    if len(suspects) > SHOWN:
        lines.append(f"  ... and {len(suspects) - SHOWN} more (--json lists them all)")
    return "\n".join(line for line in lines if line)
