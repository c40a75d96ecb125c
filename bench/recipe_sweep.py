"""Time-to-accuracy of training recipes on real data, each against a plain PyTorch loop in the same process.

    python bench/recipe_sweep.py [--datasets digits,textures,example] [--sweep all|none|a,b] [--runs ...]

Datasets (``bench/quick_datasets.py``, written into a temporary folder): scikit-learn's handwritten digits
(1,797 scans, 10 classes, 32 px), crops of five texture photos shipped with scikit-image (5 classes, 64 px,
validation crops from a separate region of each photo) and the project's example dataset (64 px).

Per dataset, in this order, all DenseNet-121 from random weights at the dataset's image size, all on the same
files and the same train/val split (``LabeledFiles.split(0.2, seed=0)``, or the dataset's own ``val/``):

1. ``plain``: the classic loop (torchvision ``densenet121(num_classes=N)``, Adam 1e-3, batch 16, no
   augmentation, the Trainer's eval preprocessing) for ``--epochs`` epochs. Its epoch-1 accuracy and the
   time it was known (launch to the end of epoch 1's validation) are the target; its best accuracy the bar.
2. ``sweep``: the prototype loop (AdamW, warm-up then cosine, label smoothing, augmentation none / light / flip)
   under a time budget of ``--budget-fraction`` x the plain loop's epoch-1 time: the lr follows the clock and
   reaches 0 when the budget (less a reserve for the final validation) runs out. One recipe per entry of
   ``SWEEP``, each a change of one setting from ``BASE``.
3. ``runs``: whole runs through ``training.settings.config_from_settings`` (the path of ``train`` and the app):
   ``defaults_epochs`` (``train DATA --model densenet121 --mode scratch --image-size N``: the quick recipe,
   5 epochs, a validation at half of epoch 1 too), ``defaults_budget`` (the same with ``--time-budget`` of
   ``--budget-fraction`` x the plain loop's epoch-1 time), ``paper_epochs`` (``--recipe paper``) and the
   prototype loop with ``BASE`` by epochs (``base_epochs``).

4. ``--interleave N`` (after the above): N rounds of the default run stopped at its first validation that reaches
   the plain loop's epoch-1 accuracy, each followed by the plain loop's epoch 1 again. Each default run is
   compared with the mean of the plain epochs just before and after it, so that a load that changes during
   the bench (shared cores) weighs on both sides alike.

Every time is measured from the run's launch inside this process (before its model is built) to the end of
the validation that gave the accuracy. Prints one JSON object; the cores may be shared, so compare ratios
within one run rather than seconds across runs.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quick_datasets import DATASETS, write_dataset  # noqa: E402

from densenet_demo.data import datasets as data  # noqa: E402
from densenet_demo.data.images import Preprocessing  # noqa: E402
from densenet_demo.training.build import build_model  # noqa: E402
from densenet_demo.training.config import TrainConfig  # noqa: E402
from densenet_demo.training.events import CancelToken, EpochEnd, Evaluated, Failed, Finished  # noqa: E402
from densenet_demo.training.loop import Trainer  # noqa: E402
from densenet_demo.training.settings import config_from_settings  # noqa: E402

# The prototype quick recipe; each SWEEP entry changes one setting of it.
BASE: dict[str, Any] = {
    "optimizer": "adamw",
    "lr": 2e-3,
    "weight_decay": 1e-4,
    "warmup": 0.1,  # fraction of the run (steps, or seconds under a budget) spent ramping the lr up from 0
    "schedule": "cosine",  # cosine (to 0) | step (/10 at 50% and 75%) | constant
    "label_smoothing": 0.1,
    "batch_size": 32,
    "augment": "none",  # none | light (random resized crop, scale 0.8-1) | flip (light + horizontal flip)
}
SWEEP: dict[str, dict[str, Any]] = {
    "base": {},
    "lr_1e-3": {"lr": 1e-3},
    "lr_4e-3": {"lr": 4e-3},
    "no_warmup": {"warmup": 0.0},
    "no_label_smoothing": {"label_smoothing": 0.0},
    "batch_16": {"batch_size": 16},
    "batch_64": {"batch_size": 64},
    "augment_light": {"augment": "light"},
    "augment_flip": {"augment": "flip"},
    "sgd_0.1_step": {"optimizer": "sgd", "lr": 0.1, "warmup": 0.0, "schedule": "step", "label_smoothing": 0.0},
}
RUNS = ("defaults_epochs", "defaults_budget", "paper_epochs", "base_epochs")


def _scratch_config(image_size: int, epochs: int, **fields: Any) -> TrainConfig:
    return TrainConfig(
        model="densenet121", weights="random", mode="scratch", image_size=image_size, epochs=epochs, **fields
    )


def _preprocessing(image_size: int, class_names: list[str]) -> Preprocessing:
    """The Trainer's preprocessing for DenseNet-121 at ``image_size``: every loop here sees the same pixels."""
    _, preprocessing, _ = build_model(_scratch_config(image_size, 1).resolved(), class_names)
    return preprocessing


def _loader(items: list, transform: Callable, p: Preprocessing, batch: int, shuffle: bool, seed: int = 0):
    dataset = data.ImageFileDataset(items, transform, mode=p.mode, draft_size=p.resize_size)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch, shuffle=shuffle, generator=torch.Generator().manual_seed(seed),
        collate_fn=data.collate_skipping_failures,
    )  # fmt: skip


def _batches(loader) -> Any:
    for x, y, _failed in loader:
        if x is not None:
            yield x, y


def _accuracy(model: torch.nn.Module, loader) -> float:
    model.eval()
    correct = total = 0
    with torch.inference_mode():
        for x, y in _batches(loader):
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    model.train()
    return correct / max(total, 1)


def _epoch_record(epoch: int, launched: float, acc: float) -> dict[str, Any]:
    return {"epoch": epoch, "s": round(time.monotonic() - launched, 2), "val_acc": round(acc, 4)}


def plain_loop(train_items: list, val_items: list, n_classes: int, p: Preprocessing, epochs: int) -> dict:
    """The classic loop of the issue: torchvision DenseNet-121, Adam 1e-3, batch 16, no augmentation."""
    launched = time.monotonic()
    torch.manual_seed(0)
    model = torchvision.models.densenet121(num_classes=n_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train_loader = _loader(train_items, p.to_tensor, p, 16, shuffle=True)
    val_loader = _loader(val_items, p.to_tensor, p, 16, shuffle=False)
    model.train()
    history = []
    for epoch in range(1, epochs + 1):
        for x, y in _batches(train_loader):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        history.append(_epoch_record(epoch, launched, _accuracy(model, val_loader)))
    return {"epochs": history, "best_acc": max(h["val_acc"] for h in history)}


def _train_transform(p: Preprocessing, augment: str) -> Callable:
    if augment == "none":
        return p.to_tensor
    steps: list = [v2.RandomResizedCrop(p.image_size, scale=(0.8, 1.0), ratio=(0.9, 1.1), antialias=True)]
    if augment == "flip":
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(p.mean), list(p.std))]
    return v2.Compose(steps)


def _lr_factor(recipe: dict[str, Any], progress: float) -> float:
    """The lr multiplier at ``progress`` (0 -> 1) of the run: linear warm-up, then the schedule."""
    warmup = recipe["warmup"]
    if progress < warmup:
        return max(progress / warmup, 0.01)
    if recipe["schedule"] == "step":
        return 1.0 if progress < 0.5 else 0.1 if progress < 0.75 else 0.01
    if recipe["schedule"] == "constant":
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (progress - warmup) / max(1e-9, 1.0 - warmup))))


def recipe_loop(
    train_items: list, val_items: list, class_names: list[str], p: Preprocessing, recipe: dict[str, Any],
    *, epochs: int | None = None, budget_s: float | None = None,
) -> dict:  # fmt: skip
    """The prototype loop: our DenseNet-121 with ``recipe``, for ``epochs`` (validated after each) or ``budget_s``.

    Under a budget the lr follows the clock: progress is the share of the training time spent, where the
    training time is the budget less an estimate of the final validation (a forward pass of the validation
    images, taken as a third of a training step per image); there is one validation, at the end.
    """
    launched = time.monotonic()
    torch.manual_seed(0)
    model, _, _ = build_model(_scratch_config(p.image_size, 1).resolved(), class_names)
    model.train()
    batch = recipe["batch_size"]
    if recipe["optimizer"] == "sgd":
        optimizer = torch.optim.SGD(
            model.parameters(), lr=recipe["lr"], momentum=0.9, nesterov=True, weight_decay=recipe["weight_decay"]
        )
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    train_loader = _loader(train_items, _train_transform(p, recipe["augment"]), p, batch, shuffle=True)
    val_loader = _loader(val_items, p.to_tensor, p, 128, shuffle=False)
    total_steps = math.ceil(len(train_items) / batch) * (epochs or 1)
    history: list[dict[str, Any]] = []
    step, images, train_start, out_of_time = 0, 0, time.monotonic(), False
    for epoch in range(1, (epochs or 10_000) + 1):
        for x, y in _batches(train_loader):
            if budget_s is None:
                progress = step / total_steps
            else:
                now = time.monotonic()
                per_image = (now - train_start) / images if images else 0.0
                train_end = launched + budget_s - per_image * len(val_items) / 3
                progress = (now - train_start) / max(train_end - train_start, 1e-9)
                if progress >= 1.0:
                    out_of_time = True
                    break
            for group in optimizer.param_groups:
                group["lr"] = recipe["lr"] * _lr_factor(recipe, progress)
            loss = F.cross_entropy(model(x), y, label_smoothing=recipe["label_smoothing"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step, images = step + 1, images + len(y)
        if budget_s is None:
            history.append(_epoch_record(epoch, launched, _accuracy(model, val_loader)))
        elif out_of_time:
            record = _epoch_record(epoch, launched, _accuracy(model, val_loader))
            history.append({**record, "epoch": round(images / len(train_items), 2)})
            break
    result = {"epochs": history, "best_acc": max(h["val_acc"] for h in history), "steps": step}
    if budget_s is not None:
        result["budget_s"] = round(budget_s, 2)
    return result


def trainer_run(files: data.LabeledFiles, image_size: int, out_dir: Path, **settings: Any) -> dict:
    """The Trainer as ``train`` runs it: ``training.settings.config_from_settings`` (the CLI's and the app's path) with
    ``settings`` over the defaults; the time of each validation (mid-epoch or epoch end) as its event arrives."""
    launched = time.monotonic()
    config = config_from_settings("densenet121", mode="scratch", image_size=image_size, **settings)
    history = []
    for event in Trainer(config, files, out_dir=out_dir).run():
        if isinstance(event, (EpochEnd, Evaluated)):
            history.append(_epoch_record(event.epoch, launched, event.val_acc))
        elif isinstance(event, Finished):
            finished_s = round(time.monotonic() - launched, 2)
        elif isinstance(event, Failed):
            raise RuntimeError(f"trainer failed: {event.message}")
    resolved = config.resolved()
    keys = ("recipe", "optimizer", "lr", "schedule", "warmup", "label_smoothing", "bn_recalibration", "batch_size")
    keys += ("augment", "epochs")
    recipe = {k: getattr(resolved, k) for k in keys}
    return {"recipe": recipe, "epochs": history, "best_acc": max(h["val_acc"] for h in history), "s": finished_s}


def time_to_target(files: data.LabeledFiles, image_size: int, out_dir: Path, target_acc: float) -> dict:
    """A default run (``train DATA --model densenet121 --mode scratch``) stopped at its first validation that
    reaches ``target_acc``: its validations until then, and the seconds from its launch to that one (or None)."""
    launched, cancel, run = time.monotonic(), CancelToken(), {"s": None, "validations": []}
    config = config_from_settings("densenet121", mode="scratch", image_size=image_size)
    for event in Trainer(config, files, out_dir=out_dir).run(cancel):
        if isinstance(event, (EpochEnd, Evaluated)) and run["s"] is None:
            run["validations"].append(_epoch_record(event.epoch, launched, event.val_acc))
            if event.val_acc >= target_acc:
                run["s"] = run["validations"][-1]["s"]
                cancel.cancel()
        elif isinstance(event, Failed):
            raise RuntimeError(f"trainer failed: {event.message}")
    return run


def interleaved(
    files: data.LabeledFiles, split: tuple[list, list], p: Preprocessing, target: dict, rounds: int, workdir: Path
) -> dict:  # fmt: skip
    """``rounds`` x (the default run to the target, then the plain loop's epoch 1): ratios against the mean of the
    plain epoch-1 times around each default run (the first is the bench's own plain run)."""
    plain_s, default_runs = [target["s"]], []
    for i in range(rounds):
        default_runs.append(time_to_target(files, p.image_size, workdir / f"interleaved_{i}", target["val_acc"]))
        plain_s.append(plain_loop(*split, len(files.class_names), p, 1)["epochs"][0]["s"])
    ratios = [
        None if run["s"] is None else round(run["s"] / ((plain_s[i] + plain_s[i + 1]) / 2), 3)
        for i, run in enumerate(default_runs)
    ]
    return {"plain_epoch1_s": plain_s, "default_runs": default_runs, "ratios": ratios}


def _score(run: dict, target_acc: float, target_s: float, plain_best: float) -> dict:
    """Add time to the target accuracy, its ratio to the plain loop's, and whether the bars are met."""
    reached = next((h["s"] for h in run["epochs"] if h["val_acc"] >= target_acc), None)
    run["s_to_target"] = reached
    run["ratio_to_plain"] = round(reached / target_s, 2) if reached is not None else None
    run["meets_time"] = reached is not None and reached <= 0.5 * target_s
    run["meets_best"] = run["best_acc"] >= plain_best
    return run


def bench_dataset(name: str, workdir: Path, args: argparse.Namespace) -> dict:
    folder, image_size = write_dataset(name, workdir)
    files, report = data.load_image_folder(folder)
    train_items, val_items = files.split(0.2, 0)
    class_names = list(files.class_names)
    p = _preprocessing(image_size, class_names)
    log = _logger(name)

    plain = plain_loop(train_items, val_items, len(class_names), p, args.epochs)
    target_s, target_acc = plain["epochs"][0]["s"], plain["epochs"][0]["val_acc"]
    log("plain", plain)
    result: dict[str, Any] = {
        "images": {"train": len(train_items), "val": len(val_items)},
        "classes": len(class_names),
        "image_size": image_size,
        "target": {"val_acc": target_acc, "s": target_s, "plain_best_acc": plain["best_acc"]},
        "plain": plain,
        "sweep": {},
        "runs": {},
    }
    budget = args.budget_fraction * target_s
    for key in args.sweep:
        run = recipe_loop(train_items, val_items, class_names, p, {**BASE, **SWEEP[key]}, budget_s=budget)
        result["sweep"][key] = _score(run, target_acc, target_s, plain["best_acc"])
        log(f"sweep {key}", run)
    for key in args.runs:
        out = workdir / f"{name}_{key}"
        if key == "defaults_epochs":  # train DATA --model densenet121 --mode scratch --image-size N (5 epochs)
            run = trainer_run(files, image_size, out)
        elif key == "defaults_budget":  # the same with --time-budget of half the plain loop's epoch-1 time
            run = trainer_run(files, image_size, out, time_budget=budget)
            run["budget_s"] = round(budget, 2)
        elif key == "paper_epochs":
            run = trainer_run(files, image_size, out, recipe="paper", epochs=args.epochs)
        else:
            run = recipe_loop(train_items, val_items, class_names, p, BASE, epochs=args.epochs)
        result["runs"][key] = _score(run, target_acc, target_s, plain["best_acc"])
        log(key, run)
    if args.interleave:
        target = {"val_acc": target_acc, "s": target_s}
        result["interleaved"] = interleaved(files, (train_items, val_items), p, target, args.interleave, workdir)
        print(f"[{name}] interleaved: {result['interleaved']}", file=sys.stderr, flush=True)
    return result


def _logger(dataset: str) -> Callable[[str, dict], None]:
    def log(what: str, run: dict) -> None:  # progress on stderr; stdout carries only the JSON
        accs = " ".join(f"{h['val_acc']:.3f}@{h['s']:.0f}s" for h in run["epochs"])
        print(f"[{dataset}] {what}: {accs}", file=sys.stderr, flush=True)

    return log


def _names(value: str, allowed: tuple[str, ...] | list[str]) -> list[str]:
    if value == "all":
        return list(allowed)
    if value == "none":
        return []
    names = [v for v in value.split(",") if v]
    unknown = [v for v in names if v not in allowed]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown)}; choose from {', '.join(allowed)}")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="all", help=f"comma-separated from {', '.join(DATASETS)}, or all")
    parser.add_argument("--sweep", default="none", help=f"all, none, or from {', '.join(SWEEP)}")
    parser.add_argument("--runs", default="all", help=f"all, none, or from {', '.join(RUNS)}")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of the plain loop and of the whole runs")
    parser.add_argument("--interleave", type=int, default=0, help="rounds of default run to target + plain epoch 1")
    parser.add_argument("--budget-fraction", type=float, default=0.5, help="sweep budget / plain epoch-1 time")
    # One thread by default: on cores other processes share, two OpenMP threads measured 5-10x slower than one
    # (each waits for the other at every layer), which would swamp the differences between recipes.
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        datasets = _names(args.datasets, DATASETS)
        args.sweep, args.runs = _names(args.sweep, list(SWEEP)), _names(args.runs, RUNS)
    except argparse.ArgumentTypeError as e:
        parser.error(str(e))
    started = time.monotonic()
    results: dict[str, Any] = {
        "machine": {"threads": torch.get_num_threads(), "torch": torch.__version__, "py": platform.python_version()},
        "base_recipe": BASE,
        "budget_fraction": args.budget_fraction,
        "datasets": {},
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="quick_finetune_") as tmp:
        for name in datasets:
            results["datasets"][name] = bench_dataset(name, Path(tmp), args)
    results["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
