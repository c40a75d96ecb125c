"""The suggested quick path against the seeded plain loop, both timed from process launch, on real data.

    python bench/quick_finetune.py [--datasets digits,digits_rgb,textures] [--rounds 3] [--threads 2]

What a newcomer does on the command line is ``python -m densenet_demo train DATA.zip`` with no other flag: the
settings suggested for the data on this machine (``training/advice.py``), printed before the run. The reference
is the plain PyTorch loop a newcomer would write (``bench/plain_loop.py``: torchvision DenseNet-121, Adam 1e-3,
batch 16, seeded), run for two epochs. Both run as their own processes with the same threads; every JSON line
either prints is timed here from that process's launch (before Python starts), so both sides pay their own
start-up, imports and data loading.

Rounds alternate: plain, suggested, plain, suggested, ..., plain. Each suggested run is compared with the mean of
the plain runs just before and after it, so that a load that changes during the bench weighs on both alike; the
plain loop is seeded, so its accuracies are the same every round and only its times vary. The timing cache of the
suggestion is cleared before every suggested run, so each pays for its measurement as a first run does.

Datasets (``bench/quick_datasets.py``, zipped as a user uploads them; the plain loop reads the folder):
scikit-learn's handwritten digits (grey PNGs, and ``digits_rgb``: the same scans saved as RGB) and crops of
scikit-image's texture photos. Prints one JSON object; progress on stderr.

Per dataset: the plain loop's epoch-1 accuracy (the target) and its best over two epochs (the bar); per round,
the time from launch to the suggested run's first validation at or above the target and its ratio to the plain
loop's launch-to-epoch-1 time; the median and spread of the ratios; the suggested run's best accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from quick_datasets import write_dataset  # noqa: E402

BENCH_DATASETS = ("digits", "digits_rgb", "textures")


def timed_lines(command: list[str], env: dict[str, str], cwd: Path) -> tuple[list[tuple[float, dict]], float, int]:
    """Run ``command``; each JSON object line it prints with the seconds since its launch; the total; the exit code."""
    launched = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    lines = []
    for line in process.stdout:
        seconds = time.monotonic() - launched
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            lines.append((round(seconds, 2), record))
    stderr = process.stderr.read()
    code = process.wait()
    if code != 0:
        print(stderr[-2000:], file=sys.stderr)
    return lines, round(time.monotonic() - launched, 2), code


def plain_run(folder: Path, image_size: int, env: dict[str, str], threads: int, epochs: int) -> dict[str, Any]:
    command = [sys.executable, str(HERE / "plain_loop.py"), str(folder), "--image-size", str(image_size)]
    command += ["--epochs", str(epochs), "--threads", str(threads)]
    lines, total, code = timed_lines(command, env, folder.parent)
    epochs_seen = [{"epoch": r["epoch"], "s": s, "val_acc": r["val_acc"]} for s, r in lines if "epoch" in r]
    return {"epochs": epochs_seen, "s": total, "exit": code}


def suggested_run(archive: Path, env: dict[str, str], out: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "densenet_demo", "train", str(archive), "--json", "--out", str(out)]
    lines, total, code = timed_lines(command, env, HERE.parent)
    run: dict[str, Any] = {"validations": [], "s": total, "exit": code}
    for seconds, record in lines:
        kind = record.get("event")
        if kind == "suggestion":
            run["suggestion"] = {"settings": record["settings"], "reason": record["reason"], "s": seconds}
        elif kind == "started":
            run["started_s"] = seconds
        elif kind in ("evaluated", "epoch_end"):
            run["validations"].append({"epoch": record["epoch"], "s": seconds, "val_acc": round(record["val_acc"], 4)})
        elif kind == "finished":
            run["best_acc"], run["epochs_run"] = round(record["best_val_acc"], 4), record["epochs_run"]
        elif kind == "failed":
            run["failed"] = record["message"]
    return run


def _zip(folder: Path) -> Path:
    archive = folder.with_suffix(".zip")
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                z.write(path, path.relative_to(folder))
    return archive


def bench_dataset(name: str, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    folder, image_size = write_dataset(name, workdir)
    archive = _zip(folder)
    weights = workdir / f"weights_{name}"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "DENSENET_DEMO_WEIGHTS": str(weights)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE.parent), env.get("PYTHONPATH")) if p)
    plains, ours = [plain_run(folder, image_size, env, args.threads, args.plain_epochs)], []
    for i in range(args.rounds):
        shutil.rmtree(weights / "cache", ignore_errors=True)  # every suggested run measures, as a first run does
        ours.append(suggested_run(archive, env, workdir / f"{name}_run_{i}"))
        plains.append(plain_run(folder, image_size, env, args.threads, args.plain_epochs))
        print(
            f"[{name}] round {i + 1}: plain {plains[-1]['epochs']} suggested {ours[-1]['validations']}", file=sys.stderr
        )
    target_acc = plains[0]["epochs"][0]["val_acc"]
    bar = max(e["val_acc"] for e in plains[0]["epochs"])
    if any(p["epochs"][0]["val_acc"] != target_acc for p in plains):
        print(f"[{name}] warning: the seeded plain loop's accuracy changed between rounds", file=sys.stderr)
    rounds = []
    for i, run in enumerate(ours):
        plain_s = statistics.mean(p["epochs"][0]["s"] for p in plains[i : i + 2])
        reached = next((v for v in run["validations"] if v["val_acc"] >= target_acc), None)
        rounds.append(
            {
                **run,
                "plain_epoch1_s": round(plain_s, 2),
                "reached": reached,
                "ratio": round(reached["s"] / plain_s, 3) if reached else None,
            }
        )
    ratios = [r["ratio"] for r in rounds if r["ratio"] is not None]
    return {
        "image_size": image_size,
        "plain": {"epoch1_acc": target_acc, "best_acc": bar, "runs": plains},
        "suggested": rounds,
        "ratio": {
            "median": statistics.median(ratios) if ratios else None,
            "min": min(ratios, default=None),
            "max": max(ratios, default=None),
            "reached_in": f"{len(ratios)} of {len(rounds)} rounds",
        },
        "meets_half": len(ratios) == len(rounds) and max(ratios) <= 0.5,
        "meets_best": all(r.get("best_acc", 0) >= bar for r in rounds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(BENCH_DATASETS), help=f"from {', '.join(BENCH_DATASETS)}")
    parser.add_argument("--rounds", type=int, default=3, help="suggested runs, each between two plain runs")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of both sides (default 2: the reference's)")
    parser.add_argument("--plain-epochs", type=int, default=2, help="epochs of the plain loop (its best is the bar)")
    args = parser.parse_args()
    names = [n for n in args.datasets.split(",") if n]
    unknown = [n for n in names if n not in BENCH_DATASETS]
    if unknown:
        parser.error(f"unknown datasets {', '.join(unknown)}; choose from {', '.join(BENCH_DATASETS)}")
    started = time.monotonic()
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "threads": args.threads, "python": platform.python_version()},
        "load_before": os.getloadavg()[0],
        "datasets": {},
    }
    with tempfile.TemporaryDirectory(prefix="quick_finetune_") as tmp:
        for name in names:
            result["datasets"][name] = bench_dataset(name, Path(tmp), args)
    result["load_after"] = os.getloadavg()[0]
    result["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
