"""Gradio's upload cache, kept to the sessions' life.

Gradio's ``delete_cache`` removes the cached files it tracks once they are older than its age. Two kinds escape
it (Gradio 6.31): files a handler returns through a component whose value the session has changed (Gradio then
tracks them on the session's copy of the component, which its sweep never visits: a run's download zip, an ONNX
export), and the empty placeholder file ``gr.File`` leaves in the cache for every file it hands a handler. Over
a busy day both pile up. ``sweep`` removes every file of the cache folder older than the age, except the files
the components keep (examples, default values), and the folders that leaves empty; ``start`` runs it on a
schedule beside Gradio's own.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["start", "sweep"]

logger = logging.getLogger(__name__)


def sweep(folder: Path, age_s: float, keep: Iterable[str] = (), now: float | None = None) -> int:
    """Remove the files under ``folder`` changed more than ``age_s`` seconds ago (``keep`` excepted), then the
    folders left empty that are as old; returns how many files went. Files removed meanwhile are skipped."""
    now = time.time() if now is None else now
    kept = {os.path.abspath(p) for p in keep}
    removed = 0
    folders = []
    for root, dirs, files in os.walk(folder):
        folders += [os.path.join(root, d) for d in dirs]
        for name in files:
            path = os.path.join(root, name)
            try:
                if path not in kept and now - os.lstat(path).st_ctime > age_s:
                    os.remove(path)
                    removed += 1
            except FileNotFoundError:
                continue
    for path in sorted(folders, key=len, reverse=True):  # the deepest first
        try:
            if now - os.lstat(path).st_mtime > age_s:
                os.rmdir(path)  # only if empty
        except OSError:  # not empty, or gone
            continue
    return removed


def start(folder: Path, frequency_s: float, age_s: float, keep: Callable[[], Iterable[str]]) -> threading.Thread:
    """Sweep ``folder`` every ``frequency_s`` seconds in a daemon thread; ``keep()`` names the files to keep."""

    def loop() -> None:
        while True:
            time.sleep(frequency_s)
            try:
                removed = sweep(folder, age_s, keep())
            except Exception:  # the sweep must never stop: the next one tries again
                logger.exception("sweeping the upload cache %s failed", folder)
                continue
            if removed:
                logger.info("upload cache: %d files older than %.0f s removed", removed, age_s)

    thread = threading.Thread(target=loop, name="upload-cache-sweeper", daemon=True)
    thread.start()
    return thread
