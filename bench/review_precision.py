"""How well the review finds mislabelled images: scikit-learn's digit scans with a share of the labels swapped on
purpose, the quick run, then ``review``.

    python bench/review_precision.py [--seeds 0,1,2] [--fraction 0.05] [--train-args "..."]

Per seed: the 1,797 digits (``bench/quick_datasets.py``, 32 px) with ``--fraction`` of them moved into another
class's folder (``swap_labels``, seeded), then exactly these two commands as subprocesses:

    python -m densenet_demo train DIGITS --model densenet_fashion --mode scratch --image-size 32 --out RUN --json
    python -m densenet_demo review RUN --json

(``--train-args`` replaces the flags after DIGITS; ``review`` gets no DATA: it reads the data the run recorded).
The figure is the precision at k, k being the number of files swapped: the share of swapped files among the first k
suspected mislabels (a shorter list counts its missing places as misses). Beside it, in this process and on the same
run's predictions, what other ways of scoring the training images get: in-sample (the best model's own
probabilities) and other cross-fit settings; and a random ranking's expected precision (the fraction itself).

Prints one JSON object; times are wall-clock seconds on whatever else the machine is doing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quick_datasets import swap_labels, write_digits  # noqa: E402

from densenet_demo.training.mislabels import CrossFit  # noqa: E402
from densenet_demo.training.review import predict_run, review  # noqa: E402

DEFAULT_TRAIN_ARGS = "--model densenet_fashion --mode scratch --image-size 32"
VARIANTS: dict[str, CrossFit | None] = {
    "in_sample": None,
    "cross_fit_5_folds_25_epochs": CrossFit(epochs=25),
    "cross_fit_5_folds_50_epochs (default)": CrossFit(),
    "cross_fit_5_folds_100_epochs": CrossFit(epochs=100),
    "cross_fit_5_folds_200_epochs": CrossFit(epochs=200),
    "cross_fit_10_folds_50_epochs": CrossFit(folds=10),
}
ROOT = Path(__file__).resolve().parent.parent


def precision_at_k(files: list[str], swapped: set[str]) -> float:
    """Share of swapped files among the first k of ``files`` (k = how many were swapped)."""
    k = len(swapped)
    return sum(f in swapped for f in files[:k]) / k


def _command(*args: str) -> tuple[list[str], float]:
    """Run ``python -m densenet_demo ...``; its stdout lines and its wall-clock seconds."""
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "densenet_demo", *args], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return done.stdout.strip().splitlines(), time.perf_counter() - began


def one_seed(seed: int, fraction: float, train_args: list[str], scratch: Path) -> dict[str, Any]:
    digits = write_digits(scratch / f"digits-{seed}", 32)
    swapped = swap_labels(digits, fraction, seed)
    run = scratch / f"run-{seed}"
    lines, train_s = _command("train", str(digits), *train_args, "--out", str(run), "--json")
    finished = next(e for line in lines[:-1] if (e := json.loads(line))["event"] == "finished")
    lines, review_s = _command("review", str(run), "--json")
    result = json.loads(lines[-1])
    suspects = [s["file"] for s in result["suspected_mislabels"]]
    by_cli = precision_at_k(suspects, set(swapped))
    predictions = predict_run(run, device="cpu")
    held_out = {f for f, t in zip(predictions.files, predictions.trained_on, strict=True) if not t}
    variants = {}
    for name, cross_fit in VARIANTS.items():
        ranked = [s.file for s in review(predictions, cross_fit).suspected_mislabels()]
        variants[name] = round(precision_at_k(ranked, set(swapped)), 4)
    return {
        "seed": seed,
        "images": len(predictions.files),
        "swapped": len(swapped),
        "swapped_in_validation": len(held_out & set(swapped)),
        "best_val_acc": round(finished["best_val_acc"], 4),
        "train_s": round(train_s, 1),
        "review_s": round(review_s, 1),
        "suspects": len(suspects),
        "precision_at_k": round(by_cli, 4),
        "recall_all_suspects": round(len(set(suspects) & set(swapped)) / len(swapped), 4),
        "variants_precision_at_k": variants,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0", help="comma-separated seeds of the swap (the run's own seed stays 0)")
    parser.add_argument("--fraction", type=float, default=0.05, help="share of the labels swapped")
    parser.add_argument("--train-args", default=DEFAULT_TRAIN_ARGS, help="train's flags after DIGITS")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    train_args = shlex.split(args.train_args)
    with tempfile.TemporaryDirectory(prefix="densenet_demo_bench_review_") as scratch:
        runs = [one_seed(seed, args.fraction, train_args, Path(scratch)) for seed in seeds]
    summary = {
        "precision_at_k_mean": round(statistics.mean(r["precision_at_k"] for r in runs), 4),
        "precision_at_k_min": min(r["precision_at_k"] for r in runs),
        "random_ranking_expected": args.fraction,
        "variants_mean": {
            name: round(statistics.mean(r["variants_precision_at_k"][name] for r in runs), 4) for name in VARIANTS
        },
    }
    commands = {
        "train": f"python -m densenet_demo train DIGITS {args.train_args} --out RUN --json",
        "review": "python -m densenet_demo review RUN --json",
    }
    machine = {"python": platform.python_version(), "cpus": os.cpu_count()}
    print(json.dumps({"commands": commands, "fraction": args.fraction, **summary, "runs": runs, "machine": machine}))


if __name__ == "__main__":
    main()
