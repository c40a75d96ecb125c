"""ONNX downloads from the page: where an export's files go, and a finished run's export for the Fine-tune tab."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import gradio as gr

from ..serving import export
from ..weights import resolver as weights
from .common import names_only

__all__ = ["EXPORT_MAX_AGE_S", "export_folder", "export_run"]

logger = logging.getLogger(__name__)

EXPORT_MAX_AGE_S = 3600  # ONNX downloads older than this are removed when the next export starts


def export_folder() -> Path:
    """A new folder for one export, under a parent whose exports older than ``EXPORT_MAX_AGE_S`` are removed."""
    parent = Path(tempfile.gettempdir()) / "densenet_demo_exports"
    parent.mkdir(exist_ok=True)
    cutoff = time.time() - EXPORT_MAX_AGE_S
    for old in parent.iterdir():
        if old.is_dir() and not old.is_symlink() and old.stat().st_mtime < cutoff:
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=parent))


def export_run(state: dict[str, Any] | None) -> Any:
    """The session's latest run (its best checkpoint) as an ONNX bundle to download."""
    run_id = (state or {}).get("run_id")
    if not run_id:
        raise gr.Error("No run to export yet: train one (or stop one after it has saved a checkpoint) first.")
    try:
        result = export.export_onnx(f"run:{run_id}", out=export_folder() / f"{run_id}.onnx")
    except (ValueError, OSError, weights.CheckpointError, export.ExportError) as e:
        logger.debug("ONNX export of run %s refused, in full: %s", run_id, e)
        raise gr.Error(names_only(str(e))) from None
    return gr.update(value=str(result.bundle_path), visible=True)
