"""The Gradio app: Predict, Fine-tune (live) and Architecture tabs over the engine.

The ONLY module that imports gradio. Handlers are small: they call the engine and turn its results
(and its errors) into component updates. Nothing is built at import time; per-user data lives in
``gr.State``; the only thing shared between users is the predictor cache of read-only models.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd

from . import architecture, data, predict, train, weights
from .config import IMAGENET_PRESETS, PRESET_SUMMARIES, PRESETS, DenseNetConfig, default_image_size

__all__ = ["build_app", "launch", "LAUNCH_SETTINGS"]

# Server settings that Gradio's defaults leave open (see the README's reliability section).
MAX_FILE_SIZE = "200mb"  # one upload; a zip of a few thousand photos fits
QUEUE_MAX_SIZE = 64  # a flood gets "queue full" instead of growing memory without bound
# Prediction requests served at once (the model cache is shared, read-only). bench/serve.py on 2 CPU cores:
# 2 serves 24% more requests/s than 1, and 4 no more than 2 while holding twice the activations in memory.
PREDICT_CONCURRENCY = 2
STATE_TTL_S = 3 * 3600  # a session's dataset and run handles are dropped after this
SESSION_PREFIX = "densenet_demo_session_"  # per-session upload folders under the temp dir
DELETE_CACHE = (3600, 6 * 3600)  # every hour, delete uploads older than six hours

WEIGHTS_CHOICES = ("ImageNet", "Random init", "Checkpoint file")
SOURCE_CHOICES = ("Example dataset", "Zip file", "Folder", "Classes by hand")

# Gradio's directory upload hands the server each file with only its bare name, which loses the
# class folders. This script copies each file's webkitRelativePath into a hidden textbox before the
# upload event fires, so the server can pair names back with their folders.
_FOLDER_UPLOAD_JS = """
() => {
  document.addEventListener('change', (event) => {
    const input = event.target;
    if (!(input instanceof HTMLInputElement) || input.type !== 'file' || !input.webkitdirectory) return;
    const box = document.querySelector('#folder-relpaths textarea');
    if (!box) return;
    box.value = JSON.stringify(Array.from(input.files).map(
      (f) => ({path: f.webkitRelativePath || f.name, size: f.size})));
    box.dispatchEvent(new Event('input', {bubbles: true}));
  }, true);
}
"""

_CSS = """
.progress-outer {background: var(--neutral-200); border-radius: 6px; height: 14px; overflow: hidden;}
.progress-inner {background: var(--color-accent); height: 14px; transition: width 0.3s;}
"""

LAUNCH_SETTINGS: dict[str, Any] = {
    "max_file_size": MAX_FILE_SIZE,
    "show_error": False,  # user-facing messages go through gr.Error; tracebacks stay in the log
    "js": _FOLDER_UPLOAD_JS,
    "css": _CSS,
    "ssr_mode": False,
}


# ---------------------------------------------------------------------------------------------
# Predict


def _model_choices() -> list[tuple[str, str]]:
    choices = [(f"{name} — {PRESET_SUMMARIES[name]}", name) for name in PRESETS]
    for run in weights.list_runs():
        acc = run.metrics.get("best_val_acc")
        label = f"Fine-tuned: {run.run_id}" + (f" (val acc {acc:.0%})" if isinstance(acc, (int, float)) else "")
        choices.insert(0, (label, f"run:{run.run_id}"))
    return choices


def _weights_arg(model: str, choice: str, file: str | None) -> str | None:
    if model.startswith("run:"):
        return None
    if choice == "Checkpoint file":
        if not file:
            raise gr.Error("Choose a .safetensors or .pth file, or pick ImageNet / Random init weights.")
        return file
    # Only the four ImageNet presets have pretrained weights; the others start from random init.
    return "imagenet" if choice == "ImageNet" and model in IMAGENET_PRESETS else "random"


def _generated_once(name: str, **kwargs: Any) -> Path:
    """A deterministic example dataset, generated once per machine and shared read-only by all sessions.

    The folder's name carries the generator's version and arguments, so a copy left by an older version
    is never taken for this one's; a folder of that name that is not this user's own is not trusted.
    """
    key = hashlib.sha256(json.dumps([data.EXAMPLE_VERSION, sorted(kwargs.items())]).encode()).hexdigest()[:12]
    folder = Path(tempfile.gettempdir()) / f"{name}_{key}"
    known = _generated.get(folder)
    if known is None or not known.is_dir():
        _generated[folder] = known = folder if _ours(folder) else _generate(folder, kwargs)
    return known


def _generate(folder: Path, kwargs: dict[str, Any]) -> Path:
    # Made aside and renamed into place, so two app processes starting together never see half of it.
    scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}_", dir=folder.parent))
    data.make_example_dataset(scratch, **kwargs)
    try:
        scratch.rename(folder)
        return folder
    except OSError:  # another process got there first (its copy is the same), or someone else holds the name
        if not _ours(folder):
            return scratch
        shutil.rmtree(scratch, ignore_errors=True)
        return folder


def _ours(folder: Path) -> bool:
    return folder.is_dir() and not folder.is_symlink() and folder.stat().st_uid == os.getuid()


_generated: dict[Path, Path] = {}  # example folders this process has made or checked


def _example_images() -> list[Path]:
    """One generated picture per class of the example dataset, for the Predict tab."""
    return sorted(_generated_once("densenet_demo_examples", n_per_class=1, image_size=160, seed=7).glob("*/*.png"))


def _weights_for_model(model: str, choice: str):
    if model in PRESETS and model not in IMAGENET_PRESETS and choice == "ImageNet":
        gr.Info(f"{model} has no ImageNet weights: it starts from random init (fine-tune it first).", duration=8)
        return "Random init"
    return choice


def _get_predictor(model: str, weights_choice: str, weights_file: str | None) -> predict.Predictor:
    if not model:
        raise gr.Error("Pick a model first.")
    # The engine also takes checkpoint folders by path (for the CLI); a web request may only name a preset or a
    # run in weights/runs/, so it can neither load nor probe folders elsewhere on the server.
    if model not in PRESETS and not model.startswith("run:"):
        raise gr.Error(f"Unknown model {model[:100]!r}: choose a preset or a fine-tuned run (run:<run-id>).")
    try:
        return predict.get_predictor(model, _weights_arg(model, weights_choice, weights_file))
    except (ValueError, weights.CheckpointError, OSError) as e:
        raise gr.Error(str(e)) from None


def predict_images(
    files: list[str] | str | None,
    model: str,
    weights_choice: str,
    weights_file: str | None,
    top_k: float,
    show_cam: bool,
) -> tuple[dict[str, float], list[tuple[Any, str]], pd.DataFrame, str]:
    """Classify one or more uploaded images: top-k of the first, Grad-CAM overlays, a table of all."""
    paths = [files] if isinstance(files, str) else list(files or [])
    if not paths:
        raise gr.Error("Upload an image first.")
    predictor = _get_predictor(model, weights_choice, weights_file)
    results = predictor.predict_images(paths, top_k=int(top_k), names=[Path(p).name for p in paths])
    good = [r for r in results if isinstance(r, predict.Prediction)]
    errors = [str(r) for r in results if not isinstance(r, predict.Prediction)]
    if not good:
        raise gr.Error("; ".join(errors))
    gallery: list[tuple[Any, str]] = []
    if show_cam:
        for path, result in zip(paths, results, strict=True):
            if isinstance(result, predict.Prediction):
                cam = predictor.gradcam(path)
                gallery.append((cam.overlay, f"{result.name}: Grad-CAM for '{cam.class_name}'"))
    table = pd.DataFrame(
        [
            {
                "image": r.name,
                "top-1": r.labels[0][0],
                "p": round(r.labels[0][1], 4),
                "top-k": ", ".join(f"{lbl} ({p:.1%})" for lbl, p in r.labels),
                "latency ms": round(r.latency_ms, 1),
            }
            for r in good
        ]
    )
    lines = [
        f"**{len(good)} image(s)** classified with **{model}** ({predictor.weights_label}); "
        f"latency {good[0].latency_ms:.0f} ms for the first."
    ]
    if predictor.notice:
        lines.append(f"⚠️ {predictor.notice}")
    lines += [f"❌ {e}" for e in errors]
    return dict(good[0].labels), gallery, table, "\n\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Fine-tune


def _pair_folder_upload(files: list[str], relpaths_json: str) -> list[tuple[str, str]]:
    """Pair each uploaded temp file with the relative path the browser reported for it."""
    try:
        entries = json.loads(relpaths_json or "[]")
    except json.JSONDecodeError:
        entries = []
    pool: dict[tuple[str, int], list[str]] = {}
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("path"), str) and isinstance(entry.get("size", -1), int):
            key = (Path(entry["path"]).name, entry.get("size", -1))
            pool.setdefault(key, []).append(entry["path"])
    pairs = []
    for file in files:
        key = (Path(file).name, os.path.getsize(file))
        rel = pool.get(key, []).pop(0) if pool.get(key) else None
        if rel is None:
            raise gr.Error(
                "The browser did not report the folders of the uploaded files, so the classes are unknown. "
                "Upload a zip of class subfolders instead."
            )
        pairs.append((rel, file))
    return pairs


def _session_dir(state: dict[str, Any]) -> Path:
    if not state.get("workdir") or not Path(state["workdir"]).is_dir():
        state["workdir"] = tempfile.mkdtemp(prefix=SESSION_PREFIX)
    return Path(state["workdir"])


def _cleanup_session(state: dict[str, Any] | None) -> None:
    if state and state.get("workdir"):
        shutil.rmtree(state["workdir"], ignore_errors=True)


def sweep_stale_sessions(root: str | Path | None = None, max_age_s: float = STATE_TTL_S) -> list[Path]:
    """Remove session folders older than the state's time to live, left by a server that was stopped.

    A session's own expiry removes its folder while the server runs; a killed or restarted server
    cannot, so the next launch does. Returns the folders removed.
    """
    root = Path(root or tempfile.gettempdir())
    cutoff = time.time() - max_age_s
    removed = []
    for folder in root.glob(f"{SESSION_PREFIX}*"):
        try:
            if folder.is_symlink() or not folder.is_dir() or folder.stat().st_mtime > cutoff:
                continue
        except OSError:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def load_dataset(
    source: str,
    zip_file: str | None,
    folder_files: list[str] | None,
    relpaths: str,
    by_hand: dict[str, list[str]] | None,
    state: dict[str, Any] | None,
) -> tuple[str, dict[str, Any]]:
    """Validate the chosen data and show its report (classes, counts, skipped files)."""
    state = dict(state or {})
    workdir = _session_dir(state)
    try:
        if source == "Example dataset":
            dataset, report = data.load_image_folder(_generated_once("densenet_demo_example_dataset"))
            report.source = "the built-in example dataset (shapes and stripes, generated)"
        elif source == "Zip file":
            if not zip_file:
                raise gr.Error("Choose a .zip of class subfolders first.")
            target = Path(tempfile.mkdtemp(prefix="zip_", dir=workdir))
            dataset, report = data.load_image_folder(zip_file, extract_to=target)  # refused: target removed
        elif source == "Folder":
            if not folder_files:
                raise gr.Error("Choose a folder of class subfolders first.")
            dataset, report = data.from_uploaded_files(_pair_folder_upload(folder_files, relpaths))
        else:
            dataset, report = data.from_class_lists(by_hand or {})
    except (data.DatasetError, zipfile.BadZipFile, OSError) as e:
        raise gr.Error(str(e)) from None
    # One extracted zip per session, so that loading again and again cannot fill the disk; a run of this
    # session still reading the previous one keeps it (the session folder goes when the session expires).
    previous = state.pop("extracted", None)
    if previous and not state.get("cancel"):
        shutil.rmtree(previous, ignore_errors=True)
    if source == "Zip file":
        state["extracted"] = str(target)
    state["dataset"] = (dataset, report)
    return f"```text\n{report.summary()}\n```", state


# The built-in example trains to >90% val accuracy in well under a minute on a laptop CPU with these.
_EXAMPLE_SETTINGS = train.example_config()


def _source_defaults(source: str):
    visible = (gr.update(visible=source == "Zip file"), gr.update(visible=source == "Folder"))
    if source != "Example dataset":
        return (*_no_change(7), *visible)
    ex = _EXAMPLE_SETTINGS
    return (ex.model, "Random init", ex.mode, ex.epochs, ex.lr, ex.optimizer, ex.schedule, *visible)


def add_class(name: str, files: list[str] | None, by_hand: dict[str, list[str]] | None):
    by_hand = dict(by_hand or {})
    name = (name or "").strip()
    if not name:
        raise gr.Error("Name the class first.")
    if not files:
        raise gr.Error(f"Add some images for '{name}'.")
    by_hand[name] = list(by_hand.get(name, [])) + list(files)
    text = "\n".join(f"- **{c}**: {len(v)} image(s)" for c, v in by_hand.items())
    return by_hand, text, "", None


def _curve_frame(history: list[dict[str, Any]], metric: str) -> pd.DataFrame:
    rows = [
        {"epoch": h["epoch"], "value": h[key], "series": f"{split} {metric}"}
        for h in history
        for split, key in (("train", f"train_{metric}"), ("val", f"val_{metric}"))
        if h.get(key) is not None
    ]
    return pd.DataFrame(rows, columns=["epoch", "value", "series"])


def _progress_html(fraction: float, text: str) -> str:
    pct = max(0.0, min(1.0, fraction)) * 100
    return (
        f'<div class="progress-outer"><div class="progress-inner" style="width:{pct:.1f}%"></div></div>'
        f'<p id="train-status">{text}</p>'
    )


def _train_config(
    model, weights_choice, mode, epochs, lr, batch_size, image_size, memory_efficient, amp, optimizer, schedule
) -> tuple[train.TrainConfig, str | None]:
    note = None
    weights_arg = "random" if weights_choice == "Random init" or mode == "scratch" else "imagenet"
    if weights_arg == "imagenet" and model not in IMAGENET_PRESETS:
        weights_arg = "random"
        note = f"{model} has no ImageNet weights; starting from random init."
    try:
        return train.TrainConfig(
            model=model,
            weights=weights_arg,
            mode=mode,
            epochs=int(epochs),
            lr=float(lr) if lr else None,
            batch_size=int(batch_size),
            image_size=int(image_size) if image_size else None,
            memory_efficient=bool(memory_efficient),
            amp="auto" if amp == "Auto" else "off",
            optimizer=None if optimizer == "default" else optimizer,
            schedule=None if schedule == "default" else schedule,
        ), note
    except ValueError as e:
        raise gr.Error(str(e)) from None


def _no_change(n: int) -> tuple[Any, ...]:
    return tuple(gr.skip() for _ in range(n))


def start_training(
    state: dict[str, Any] | None,
    model: str,
    weights_choice: str,
    mode: str,
    epochs: float,
    lr: float | None,
    batch_size: float,
    image_size: float | None,
    memory_efficient: bool,
    amp: str,
    optimizer: str,
    schedule: str,
) -> Iterator[tuple[Any, ...]]:
    """Train on the loaded dataset, yielding live updates: curves, progress, log, then the results."""
    state = dict(state or {})
    if state.get("dataset") is None:
        raise gr.Error("Check a dataset first (step 1), then press Start.")
    if not model or model not in PRESETS:
        raise gr.Error("Pick a preset to train.")
    config, note = _train_config(
        model, weights_choice, mode, epochs, lr, batch_size, image_size, memory_efficient, amp, optimizer, schedule
    )
    files, report = state["dataset"]
    try:
        trainer = train.Trainer(config, files, report=report)
    except (ValueError, weights.CheckpointError) as e:
        raise gr.Error(str(e)) from None
    cancel = train.CancelToken()
    state["cancel"] = cancel
    history: list[dict[str, Any]] = []
    log = [note] if note else []
    plots: tuple[Any, Any] = (gr.skip(), gr.skip())
    last_update = 0.0
    total_epochs = 1
    for event in trainer.run(cancel):
        if isinstance(event, train.Started):
            total_epochs = event.epochs
            amp_text = f", mixed precision {event.amp}" if event.amp else ""
            log.append(
                f"Started run {event.run_id}: {len(event.classes)} classes, {event.n_train} train / "
                f"{event.n_val} val images, {event.steps_per_epoch} steps per epoch, {event.mode} mode "
                f"on {event.device}{amp_text}; weights: {event.weights}."
            )
            progress = _progress_html(0, log[-1])
        elif isinstance(event, (train.Caching, train.Step)):
            now = time.monotonic()
            if now - last_update < 0.5:  # a browser needs no more than two updates a second
                continue
            last_update = now
            if isinstance(event, train.Caching):
                progress = _progress_html(
                    event.done / max(1, event.total), f"Computing features once: {event.done}/{event.total} images"
                )
            else:
                done = (event.epoch - 1 + event.step / event.steps) / total_epochs
                gpu = f" · GPU {event.gpu_memory_mb:.0f} MB" if event.gpu_memory_mb else ""
                text = (
                    f"epoch {event.epoch}/{total_epochs}, step {event.step}/{event.steps} · "
                    f"loss {event.loss:.3f} · acc {event.acc:.1%} · {event.images_per_s:.1f} img/s{gpu} · "
                    f"ETA {event.eta_s:.0f} s"
                )
                progress = _progress_html(done, text)
            yield (state, *plots, progress, "\n".join(log), *_no_change(5))
            continue
        elif isinstance(event, train.EpochEnd):
            history.append(event.to_dict())
            plots = (_curve_frame(history, "loss"), _curve_frame(history, "acc"))
            log.append(
                f"Epoch {event.epoch}/{event.epochs}: train loss {event.train_loss:.3f} acc {event.train_acc:.1%} · "
                f"val loss {event.val_loss:.3f} acc {event.val_acc:.1%} · {event.seconds:.1f} s"
                + (" · best so far, saved" if event.improved else "")
            )
            log += [f"  skipped {path}: {reason}" for path, reason in event.skipped]
            progress = _progress_html(event.epoch / event.epochs, log[-1])
        else:  # Finished, Cancelled or Failed: the last event
            state.pop("cancel", None)
            yield (state, *_finish(event, history, log, state))
            return
        yield (state, *plots, progress, "\n".join(log), *_no_change(5))


def _finish(event: train.Event, history: list[dict[str, Any]], log: list[str], state: dict[str, Any]) -> tuple:
    checkpoint = getattr(event, "checkpoint_dir", None)
    if isinstance(event, train.Finished):
        headline = f"Finished: best val acc {event.best_val_acc:.1%} (epoch {event.best_epoch})."
        # Every image dropped during the run, less those an epoch's report has listed already.
        log += [line for path, reason in event.skipped if (line := f"  skipped {path}: {reason}") not in log]
    elif isinstance(event, train.Cancelled):
        headline = "Stopped: " + ("the best checkpoint so far is kept." if checkpoint else "no checkpoint was written.")
    else:
        headline = f"Failed: {event.message}" + (" The best checkpoint so far is kept." if checkpoint else "")
    log.append(headline + (f" Checkpoint: {checkpoint}" if checkpoint else ""))
    confusion = None
    if isinstance(event, (train.Finished, train.Cancelled)) and event.confusion_matrix:
        confusion = _confusion_plot(event.confusion_matrix, event.class_names)
    per_class = None
    if history:
        per_class = pd.DataFrame(
            [
                {"class": c, "val acc": None if a is None else round(a, 4)}
                for c, a in history[-1]["per_class_val_acc"].items()
            ]
        )
    download = _zip_checkpoint(Path(checkpoint), _session_dir(state)) if checkpoint else None
    epochs = history[-1]["epochs"] if history else 1
    fraction = 1.0 if isinstance(event, train.Finished) else len(history) / max(1, epochs)
    choices = _model_choices()
    run_value = f"run:{Path(checkpoint).name}" if checkpoint else gr.skip()
    return (
        _curve_frame(history, "loss"),
        _curve_frame(history, "acc"),
        _progress_html(fraction, headline),
        "\n".join(log),
        confusion,
        per_class,
        download,
        gr.update(choices=choices, value=run_value),
        gr.update(choices=_reuse_choices()),
    )


def stop_training(state: dict[str, Any] | None) -> str:
    cancel = (state or {}).get("cancel")
    if cancel is None:
        return "Nothing is training."
    cancel.cancel()
    return "Stopping after the current step…"


def _zip_checkpoint(checkpoint: Path, workdir: Path) -> str:
    """The run's two files in one zip, for the download button."""
    out = workdir / f"{checkpoint.name}.zip"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in (weights.CHECKPOINT_WEIGHTS, weights.CHECKPOINT_META):
            zf.write(checkpoint / name, f"{checkpoint.name}/{name}")
    return str(out)


def _confusion_plot(matrix: Any, class_names: Any):
    if matrix is None or class_names is None:
        return None
    import matplotlib

    matrix = np.asarray(matrix, dtype=float)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(class_names), 1 + 0.6 * len(class_names)))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, f"{int(v)}", ha="center", va="center", color="black")
    ax.set_title("Validation confusion matrix")
    fig.tight_layout()
    plt.close(fig)
    return fig


# ---------------------------------------------------------------------------------------------
# Architecture


def _custom_config(growth_rate, blocks_text, init_features, bn_size, compression, drop_rate, stem, in_channels):
    try:
        block_config = tuple(int(b) for b in str(blocks_text).replace(" ", "").split(",") if b)
    except ValueError:
        raise gr.Error(
            f"Layers per block must be comma-separated counts such as 6,12,24,16; got {blocks_text!r}"
        ) from None
    try:
        return DenseNetConfig(
            growth_rate=int(growth_rate),
            block_config=block_config,
            num_init_features=int(init_features),
            bn_size=int(bn_size),
            compression=float(compression),
            drop_rate=float(drop_rate),
            stem=stem,
            in_channels=int(in_channels),
        )
    except ValueError as e:
        raise gr.Error(str(e)) from None


def show_architecture(
    preset: str,
    growth_rate: float,
    blocks_text: str,
    init_features: float,
    bn_size: float,
    compression: float,
    drop_rate: float,
    stem: str,
    in_channels: str,
    image_size: float,
    reuse_weights: str,
):
    """Channel-growth table, plot, totals and feature-reuse heatmap for a preset or a custom config."""
    if preset == "custom":
        cfg = _custom_config(
            growth_rate, blocks_text, init_features, bn_size, compression, drop_rate, stem, in_channels
        )
    else:
        cfg = PRESETS.get(preset) or _raise(f"Unknown preset {preset!r}.")
    size = int(image_size) if image_size else default_image_size(cfg)
    try:
        rows = architecture.channel_growth_table(cfg, size)
        totals = architecture.totals(cfg, size)
    except ValueError as e:
        raise gr.Error(str(e)) from None
    table = pd.DataFrame(rows)
    growth = _growth_frame(rows)
    mib = 1024 * 1024
    summary = (
        f"**{cfg.variant}**, L = {cfg.depth}, k = {cfg.growth_rate}, blocks {list(cfg.block_config)}, "
        f"θ = {cfg.compression}, input {size}×{size}×{cfg.in_channels}\n\n"
        f"| params | MACs | training activations / image (naive) | (memory-efficient) |\n|---|---|---|---|\n"
        f"| {totals['params']:,} | {_si(totals['macs'])} | {totals['activation_bytes_naive'] / mib:.1f} MiB | "
        f"{totals['activation_bytes_memory_efficient'] / mib:.1f} MiB |"
    )
    heatmap = _feature_reuse_plot(preset, reuse_weights)
    return summary, table, growth, heatmap


def _growth_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Channels after each row, one series per stage; each stage also starts from the previous stage's last
    point, so the line is unbroken and a transition shows as the drop it is (the saw-tooth)."""
    points = []
    for i, row in enumerate(rows):
        if i and row["stage"] != rows[i - 1]["stage"]:
            points.append({"layer": i - 1, "channels": rows[i - 1]["out_channels"], "stage": row["stage"]})
        points.append({"layer": i, "channels": row["out_channels"], "stage": row["stage"]})
    return pd.DataFrame(points)


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.3f} {unit}"
    return f"{value:.0f}"


def _raise(message: str):
    raise gr.Error(message)


def _feature_reuse_plot(preset: str, reuse_weights: str):
    if reuse_weights == "none":
        return None
    if reuse_weights == "imagenet" and preset not in IMAGENET_PRESETS:
        raise gr.Error(f"ImageNet weights exist only for {', '.join(IMAGENET_PRESETS)}; pick one, or a fine-tuned run.")
    try:
        predictor = (
            predict.get_predictor(reuse_weights)
            if reuse_weights.startswith("run:")
            else (predict.get_predictor(preset, "imagenet"))
        )
    except (ValueError, weights.CheckpointError, OSError) as e:
        raise gr.Error(str(e)) from None
    reuse = architecture.feature_reuse(predictor.model, predictor.cfg)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = reuse["blocks"]
    fig, axes = plt.subplots(
        1, len(blocks), figsize=(3.4 * len(blocks) + 0.8, 4.2), squeeze=False, layout="constrained"
    )
    for ax, block in zip(axes[0], blocks, strict=True):
        image = ax.imshow(np.ma.masked_invalid(block["matrix"]), cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"block {block['block']}")
        n = len(block["sources"])
        # Short tick labels: "in" is the block's input, numbers are its layers, the last row the layer after it.
        ticks = sorted({*range(0, n, max(1, n // 8)), n - 1})
        ax.set_xticks(ticks, ["in" if i == 0 else str(i) for i in ticks])
        targets = [str(i) for i in range(1, n)] + ["T" if block["targets"][-1].startswith("transition") else "C"]
        ax.set_yticks(ticks, [targets[i] for i in ticks])
        ax.set_xlabel("source layer")
        ax.set_ylabel("target layer")
    fig.colorbar(image, ax=list(axes[0]), shrink=0.8)
    fig.suptitle(
        f"Feature reuse (the paper's Fig. 5), {predictor.weights_label}\n"
        "mean |w| of each target's first convolution per source layer, normalised per target; "
        "T: transition, C: classifier"
    )
    plt.close(fig)
    return fig


# ---------------------------------------------------------------------------------------------
# Layout


def build_app() -> gr.Blocks:
    """The page: three tabs, each wired to the engine. No model is built here."""
    models = _model_choices()
    ex = _EXAMPLE_SETTINGS
    with gr.Blocks(title="DenseNet demo", delete_cache=DELETE_CACHE) as app:
        gr.Markdown(
            "# DenseNet, hands on\n"
            "Classify images, fine-tune on your own, and read how a DenseNet's channels grow "
            "([Huang et al., CVPR 2017](https://arxiv.org/abs/1608.06993))."
        )
        session = gr.State({}, time_to_live=STATE_TTL_S, delete_callback=_cleanup_session)
        # Rendered in the Architecture tab; created first so that training can refresh its run list.
        a_reuse = gr.Dropdown(
            _reuse_choices(), value="none", label="Feature-reuse heatmap from", render=False, elem_id="arch-reuse"
        )
        with gr.Tab("Predict", id="predict"):
            with gr.Row():
                with gr.Column():
                    p_model = gr.Dropdown(
                        models,
                        value="densenet121",
                        label="Model",
                        elem_id="predict-model",
                        allow_custom_value=True,  # API clients may name runs made after this page was built
                    )
                    p_weights = gr.Radio(
                        list(WEIGHTS_CHOICES),
                        value="ImageNet",
                        label="Weights",
                        info="ImageNet weights for the four ImageNet presets; fine-tuned runs carry their own.",
                    )
                    p_weights_file = gr.File(
                        label="Checkpoint file (.safetensors / .pth)",
                        file_types=[".safetensors", ".pth", ".pt"],
                        visible=False,
                    )
                    p_images = gr.File(
                        label="Images", file_count="multiple", file_types=["image"], elem_id="predict-images"
                    )
                    with gr.Row():
                        p_top_k = gr.Slider(1, 10, value=5, step=1, label="Top-k")
                        p_cam = gr.Checkbox(value=True, label="Grad-CAM")
                    p_button = gr.Button("Classify", variant="primary", elem_id="predict-button")
                    gr.Examples(
                        [[[str(path)]] for path in _example_images()],
                        inputs=p_images,
                        label="Generated examples (shapes and stripes, as in the example dataset)",
                    )
                with gr.Column():
                    p_label = gr.Label(label="Top classes (first image)", elem_id="predict-label")
                    p_info = gr.Markdown(elem_id="predict-info")
                    p_gallery = gr.Gallery(label="Grad-CAM: where the model looked", columns=3, height=300)
                    p_table = gr.Dataframe(label="All images", interactive=False, elem_id="predict-table")
            p_model.change(_weights_for_model, [p_model, p_weights], p_weights, api_visibility="private")
            p_weights.change(
                lambda c: gr.update(visible=c == "Checkpoint file"), p_weights, p_weights_file, api_visibility="private"
            )
            p_button.click(
                predict_images,
                [p_images, p_model, p_weights, p_weights_file, p_top_k, p_cam],
                [p_label, p_gallery, p_table, p_info],
                api_name="predict",
                concurrency_limit=PREDICT_CONCURRENCY,
                concurrency_id="predict",
            )

        with gr.Tab("Fine-tune", id="finetune"):
            gr.Markdown(
                "**1. Data**: a zip or folder of class subfolders (or `train/` + `val/`), the built-in "
                "example, or classes you build by hand. **2. Settings. 3. Start** and watch it learn."
            )
            with gr.Row():
                with gr.Column():
                    t_source = gr.Radio(list(SOURCE_CHOICES), value="Example dataset", label="Data")
                    t_zip = gr.File(
                        label="Zip of class subfolders", file_types=[".zip"], elem_id="train-zip", visible=False
                    )
                    t_folder = gr.File(
                        label="Folder of class subfolders",
                        file_count="directory",
                        elem_id="train-folder",
                        visible=False,
                    )
                    t_relpaths = gr.Textbox(visible="hidden", elem_id="folder-relpaths")
                    by_hand = gr.State({})
                    with gr.Accordion("Classes by hand", open=False):
                        with gr.Row():
                            t_class_name = gr.Textbox(label="Class name")
                            t_class_files = gr.File(label="Its images", file_count="multiple", file_types=["image"])
                        t_add_class = gr.Button("Add class")
                        t_classes = gr.Markdown()
                    t_load = gr.Button("Check dataset", elem_id="train-load")
                    t_report = gr.Markdown(elem_id="train-report")
                with gr.Column():
                    t_model = gr.Dropdown(
                        [m for m in models if not m[1].startswith("run:")],
                        value=ex.model,
                        label="Model",
                        elem_id="train-model",
                    )
                    t_weights = gr.Radio(["ImageNet", "Random init"], value="Random init", label="Start from")
                    t_mode = gr.Radio(
                        ["linear", "finetune", "scratch"],
                        value=ex.mode,
                        label="Mode",
                        info="linear: frozen backbone, features cached once (seconds on a CPU); "
                        "finetune: all layers, lower lr for the backbone; scratch: random init.",
                    )
                    with gr.Row():
                        t_epochs = gr.Slider(1, 100, value=ex.epochs, step=1, label="Epochs")
                        t_lr = gr.Number(value=ex.lr, label="Learning rate (empty: the mode's default)")
                    with gr.Row():
                        t_batch = gr.Slider(1, 256, value=32, step=1, label="Batch size")
                        t_size = gr.Number(value=None, label="Image size (0: the model's own)", precision=0)
                    with gr.Row():
                        t_optimizer = gr.Dropdown(
                            ["default", "adamw", "sgd"],
                            value=ex.optimizer,
                            label="Optimizer",
                            info="sgd: Nesterov momentum 0.9, weight decay 1e-4 (the paper)",
                        )
                        t_schedule = gr.Dropdown(
                            ["default", "cosine", "step", "onecycle"],
                            value=ex.schedule,
                            label="LR schedule",
                            info="step: ÷10 at 50% and 75% of the epochs",
                        )
                    with gr.Row():
                        t_memeff = gr.Checkbox(value=False, label="Memory-efficient (recompute concatenations)")
                        t_amp = gr.Radio(["Auto", "Off"], value="Auto", label="Mixed precision (GPU only)")
                    with gr.Row():
                        t_start = gr.Button("Start", variant="primary", elem_id="train-start")
                        t_stop = gr.Button("Stop", variant="stop", elem_id="train-stop")
            t_progress = gr.HTML(_progress_html(0, "Not started."), elem_id="train-progress")
            with gr.Row():
                t_loss = gr.LinePlot(x="epoch", y="value", color="series", title="Loss", elem_id="train-loss")
                t_acc = gr.LinePlot(x="epoch", y="value", color="series", title="Accuracy", elem_id="train-acc")
            t_log = gr.Textbox(label="Log", lines=6, elem_id="train-log")
            with gr.Row():
                t_confusion = gr.Plot(label="Confusion matrix", elem_id="train-confusion")
                t_per_class = gr.Dataframe(label="Per-class validation accuracy", interactive=False)
            t_download = gr.File(label="Best checkpoint (model.safetensors + model.json)", elem_id="train-download")

            t_source.change(
                _source_defaults,
                t_source,
                [t_model, t_weights, t_mode, t_epochs, t_lr, t_optimizer, t_schedule, t_zip, t_folder],
                api_visibility="private",
            )
            t_add_class.click(
                add_class,
                [t_class_name, t_class_files, by_hand],
                [by_hand, t_classes, t_class_name, t_class_files],
                api_visibility="private",
            )
            t_load.click(
                load_dataset,
                [t_source, t_zip, t_folder, t_relpaths, by_hand, session],
                [t_report, session],
                api_name="load_dataset",
            )
            t_start.click(
                start_training,
                [
                    session,
                    t_model,
                    t_weights,
                    t_mode,
                    t_epochs,
                    t_lr,
                    t_batch,
                    t_size,
                    t_memeff,
                    t_amp,
                    t_optimizer,
                    t_schedule,
                ],
                [session, t_loss, t_acc, t_progress, t_log, t_confusion, t_per_class, t_download, p_model, a_reuse],
                api_name="train",
                concurrency_limit=1,
                concurrency_id="train",
            )
            t_stop.click(stop_training, session, t_log, api_name="stop", queue=False)

        with gr.Tab("Architecture", id="architecture"):
            with gr.Row():
                with gr.Column(scale=1):
                    a_preset = gr.Dropdown(
                        [(f"{n} — {PRESET_SUMMARIES[n]}", n) for n in PRESETS] + [("custom", "custom")],
                        value="densenet121",
                        label="Model",
                        elem_id="arch-preset",
                    )
                    a_size = gr.Number(value=None, label="Image size (0: the model's own)", precision=0)
                    with gr.Accordion("Custom config (choose 'custom' above)", open=False):
                        a_k = gr.Slider(1, 64, value=12, step=1, label="Growth rate k")
                        a_blocks = gr.Textbox(value="16,16,16", label="Layers per block")
                        a_init = gr.Number(value=24, label="Stem channels", precision=0)
                        a_bn = gr.Slider(0, 8, value=4, step=1, label="Bottleneck size (0 = none)")
                        a_theta = gr.Slider(0.1, 1.0, value=0.5, step=0.05, label="Compression θ")
                        a_drop = gr.Slider(0.0, 0.5, value=0.0, step=0.05, label="Dropout")
                        a_stem = gr.Radio(["cifar", "imagenet"], value="cifar", label="Stem")
                        a_in = gr.Radio(["3", "1"], value="3", label="Input channels")
                    a_reuse.render()
                    a_button = gr.Button("Show", variant="primary", elem_id="arch-button")
                with gr.Column(scale=3):
                    a_summary = gr.Markdown(elem_id="arch-summary")
                    a_plot = gr.LinePlot(
                        x="layer", y="channels", color="stage", title="Channels after each layer", elem_id="arch-plot"
                    )
                    a_heatmap = gr.Plot(label="Feature reuse (paper, Fig. 5)", show_label=False, elem_id="arch-heatmap")
            a_table = gr.Dataframe(label="Per-layer channel growth", interactive=False, elem_id="arch-table")
            a_button.click(
                show_architecture,
                [a_preset, a_k, a_blocks, a_init, a_bn, a_theta, a_drop, a_stem, a_in, a_size, a_reuse],
                [a_summary, a_table, a_plot, a_heatmap],
                api_name="architecture",
            )
        # A page opened later sees the runs trained since the app started.
        app.load(
            lambda: (gr.update(choices=_model_choices()), gr.update(choices=_reuse_choices())),
            None,
            [p_model, a_reuse],
            api_visibility="private",
        )
    return app


def _reuse_choices() -> list[tuple[str, str]]:
    runs = [(f"fine-tuned run {r.run_id}", f"run:{r.run_id}") for r in weights.list_runs()]
    return [("none", "none"), ("ImageNet weights (when available)", "imagenet")] + runs


def launch(app: gr.Blocks, **overrides: Any) -> None:
    """Launch with the server settings the README documents; GRADIO_SERVER_NAME/PORT are honoured."""
    sweep_stale_sessions()
    weights.sweep_partial_files()
    app.queue(max_size=QUEUE_MAX_SIZE, default_concurrency_limit=1)
    app.launch(**{**LAUNCH_SETTINGS, **overrides})
