"""The ``train`` command: a new run (one process, or under torchrun each process's part) or ``--resume RUN``, which
continues a finished or stopped run for more epochs; its events printed as progress bars or JSON lines."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..data.datasets import DatasetError, DatasetReport, LabeledFiles, load_image_folder
from ..data.examples import example_dataset_folder
from ..training import runners
from ..training.advice import suggest_settings
from ..training.config import example_config
from ..training.distributed import DataParallel, data_parallel, is_main_process
from ..training.events import Failed, Finished
from ..training.loop import Trainer
from ..training.settings import config_from_settings
from ..weights.checkpoints import CheckpointError, find_run, runs_dir
from .common import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, UsageError, add_training_settings, training_settings

__all__ = ["DEFAULT_MORE_EPOCHS", "add_parser", "train_command"]

DEFAULT_MORE_EPOCHS = 5  # --resume without --epochs


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="fine-tune or train on a folder or zip of class subfolders")
    p.add_argument("data", help="folder or .zip of class subfolders (or train/ and val/), or 'example'")
    p.add_argument(
        "--model", help="preset name or a fine-tuned checkpoint folder (default: the model, mode, image size, batch "
        "size and time budget suggested for the data on this machine, printed before the run starts)",
    )  # fmt: skip
    p.add_argument(
        "--resume", metavar="RUN", help="continue a finished or stopped run (its id or folder) on the same data, "
        "with its own settings, for --epochs more epochs (default 5)",
    )  # fmt: skip
    add_training_settings(p)
    p.add_argument("--out", default=None, help="folder for the run's checkpoint (default: weights/runs/<run-id>)")
    p.add_argument("--json", action="store_true", help="print one JSON event per line")
    p.add_argument(
        "--sync-bn", action="store_true", help="under torchrun on GPUs: BatchNorm statistics over all processes"
    )
    p.set_defaults(handler=train_command)


def train_command(args: argparse.Namespace) -> int:
    """Under ``torchrun --nproc-per-node N -m densenet_demo train ...`` every process runs this; rank 0 prints."""
    try:
        with data_parallel(sync_batchnorm=args.sync_bn) as dp:
            if args.sync_bn and dp is None:
                print("warning: --sync-bn has no effect in a single process (start with torchrun)", file=sys.stderr)
            return _train(args, dp)
    except ValueError as e:
        if not is_main_process():  # every rank meets the same bad input: one message is enough
            return EXIT_USAGE
        raise UsageError(str(e)) from None
    except UsageError:
        if not is_main_process():
            return EXIT_USAGE
        raise


def _train(args: argparse.Namespace, dp: DataParallel | None) -> int:
    quiet = dp is not None and not dp.is_main
    with tempfile.TemporaryDirectory(prefix="densenet_demo_train_") as scratch:
        try:
            if args.data == "example":  # the same generated dataset as the app's, made once per machine
                files, report = load_image_folder(example_dataset_folder())
            else:
                files, report = load_image_folder(args.data, extract_to=os.path.join(scratch, "data"))
            run = _continued(args, files, report, dp) if args.resume else _new_run(args, files, report, dp)
        except (DatasetError, ValueError, FileNotFoundError, CheckpointError) as e:
            raise UsageError(str(e)) from None
        if not quiet and args.json:
            print(json.dumps({"event": "dataset", **report.to_dict()}), flush=True)
        elif not quiet:
            print(report.summary(), file=sys.stderr)
        return _print_training(run, as_json=args.json, quiet=quiet, several=dp is not None)


def _new_run(
    args: argparse.Namespace, files: LabeledFiles, report: DatasetReport, dp: DataParallel | None
) -> runners.TrainingRun:
    """A new run with the flags' settings over the data's own: the example brings its quick settings; other data
    without ``--model`` the settings suggested for it on this machine (``advice.suggest_settings``). Epochs or a
    time budget asked for replace the other one these bring (a time budget replaces epochs)."""
    given = training_settings(args)
    if args.data == "example":
        quick = example_config().to_dict()
        own = ("epochs", "lr", "optimizer", "schedule", "batch_size", "augment", "label_smoothing", "image_size")
        settings, model = {k: v for k, v in quick.items() if k in own}, args.model or quick["model"]
    elif args.model:
        settings, model = {}, args.model
    else:
        settings = _suggested(files, dp, as_json=args.json)
        model = settings.pop("model")
    for asked, other in (("epochs", "time_budget"), ("time_budget", "epochs")):
        if asked in given:
            settings.pop(other, None)
    config = config_from_settings(model, **(settings | given))
    if dp is not None:  # torchrun: this process's part in the run
        return runners.LocalRun(Trainer(config, files, report=report, out_dir=args.out, parallel=dp))
    # hosting/gpu.py decides: one loop here, or a chain of ZeroGPU calls
    return runners.start(config, files, report=report, out_dir=args.out)


def _suggested(files: LabeledFiles, dp: DataParallel | None, *, as_json: bool) -> dict[str, Any]:
    """The settings suggested for ``files`` here, announced in one line (a JSON record with ``--json``)."""
    if dp is not None:  # each process would time its own device: the processes must train the same settings
        raise ValueError("under torchrun give --model (and the other settings): the suggestion is for one process")

    suggestion = suggest_settings(files)
    if dp is None or dp.is_main:
        if as_json:
            print(json.dumps({"event": "suggestion", "settings": suggestion.settings(), "reason": suggestion.reason}))
        else:
            print(f"suggested: {suggestion.reason}", file=sys.stderr)
    return suggestion.settings()


def _continued(
    args: argparse.Namespace, files: LabeledFiles, report: DatasetReport, dp: DataParallel | None
) -> runners.TrainingRun:
    """``--resume RUN``: the run (its id in weights/runs/, or its folder) for ``--epochs`` more, on its own settings."""
    if dp is not None:
        raise ValueError("--resume continues a run in one process; run it without torchrun")
    others = sorted(set(training_settings(args)) - {"epochs"}) + (["model"] if args.model else [])
    others += ["out"] if args.out else []
    if others:
        flags = ", ".join("--" + name.replace("_", "-") for name in others)
        raise ValueError(f"--resume goes on with the run's own settings; leave out {flags} (--epochs: how many more)")
    folder = Path(args.resume)
    if not folder.is_dir():
        folder = find_run(args.resume.removeprefix("run:"))
        if folder.parent != runs_dir().resolve():
            raise ValueError(f"run {folder.name} is a published run; copy its folder into {runs_dir()} to continue it")
    more = getattr(args, "epochs", None) or DEFAULT_MORE_EPOCHS
    run = runners.continue_training(folder, files, more, report=report)
    print(f"continuing run {run.run_id}: epochs {run.config.epochs - more + 1} to {run.config.epochs}", file=sys.stderr)
    return run


def _print_training(run: runners.TrainingRun, *, as_json: bool, quiet: bool, several: bool) -> int:
    """Run it, printing its events; Ctrl-C stops it (the best checkpoint so far is kept).

    ``quiet``: print nothing (the processes of a torchrun run other than the main one); ``several``: one of them.
    """
    previous = signal.signal(signal.SIGINT, lambda *_: run.stop())
    # torchrun ends the other ranks with SIGTERM when one fails: finish the step and report, not die mid-write.
    previous_term = signal.signal(signal.SIGTERM, lambda *_: run.stop()) if several else None
    bar = None
    try:
        for event in run.events():
            kind, end = event.kind, event
            if quiet:
                continue
            if as_json:
                print(json.dumps(event.to_dict()), flush=True)
                continue
            if kind == "started":
                amp = f", mixed precision {event.amp}" if event.amp else ""
                procs = f" x {event.world_size} processes (global batch {event.global_batch_size})"
                print(
                    f"run {event.run_id}: {event.mode} on {event.device}{procs if event.world_size > 1 else ''}{amp}, "
                    f"weights: {event.weights}; {event.n_train} train / {event.n_val} val images",
                    file=sys.stderr,
                )
            elif kind == "preparing":
                print(f"{event.what}…", file=sys.stderr)
            elif kind == "evaluated":
                print(f"\nval acc {event.val_acc:.1%} after {event.epoch} of an epoch", file=sys.stderr)
            elif kind == "caching":
                bar = bar or tqdm(total=event.total, desc="features (once)", unit="img", leave=False)
                bar.n = event.done
                bar.refresh()
            elif kind == "step":
                if event.step == 1:
                    if bar is not None:
                        bar.close()
                    bar = tqdm(total=event.steps, desc=f"epoch {event.epoch}", unit="step")
                bar.set_postfix(
                    loss=f"{event.loss:.3f}", acc=f"{event.acc:.1%}", img_s=f"{event.images_per_s:.1f}", refresh=False
                )
                bar.update(1)
            elif kind == "validating" and bar is not None:
                bar.set_postfix_str(f"validating on {event.images} images…")
            elif kind == "epoch_end":
                if bar is not None:
                    bar.set_postfix(train_acc=f"{event.train_acc:.1%}", val_acc=f"{event.val_acc:.1%}")
                    bar.close()
                    bar = None
                for path, reason in event.skipped:
                    print(f"skipped {path}: {reason}", file=sys.stderr)
    finally:
        signal.signal(signal.SIGINT, previous)
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
        if bar is not None:
            bar.close()
    code = EXIT_OK if isinstance(end, Finished) else (EXIT_PARTIAL if isinstance(end, Failed) else 130)
    if quiet:
        return code
    if isinstance(end, Finished) and not as_json:
        why = ", the time budget ran out" if end.out_of_time else ""
        print(
            f"best val acc {end.best_val_acc:.1%} (epoch {end.best_epoch}) in {end.seconds:.1f} s{why}", file=sys.stderr
        )
    elif isinstance(end, Failed):
        print(f"error: {end.message}", file=sys.stderr)
    elif not as_json:
        print("stopped; the best checkpoint so far is kept", file=sys.stderr)
    if end.checkpoint_dir:
        print(end.checkpoint_dir)
    return code
