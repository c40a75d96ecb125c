"""A user's session on the server: its folder (uploads, extracted zips, downloads), its runs, expiry, sweep at launch.

One ``Session`` per browser session. It makes its folder on first use (and again if something removed it),
keeps one extracted zip at a time so that loading again and again cannot fill the disk, never removes data
a run is still reading, and removes everything when the session expires, or when the session itself is dropped
without expiring (a copy of the page's state that a refused request never handed back). Its ``owner`` token marks
the runs it trains as its own (see ``runs``); on a shared server they go when the session does. A server that was
killed cannot expire its sessions; ``sweep_stale_sessions`` at the next launch removes what they left.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
import time
import weakref
from pathlib import Path

from . import runs

__all__ = ["Session", "sweep_stale_sessions", "SESSION_PREFIX", "STATE_TTL_S"]

logger = logging.getLogger(__name__)

STATE_TTL_S = 3 * 3600  # a session's dataset and run handles are dropped after this
SESSION_PREFIX = "densenet_demo_session_"  # per-session folders under the temp dir


class Session:
    """The folders of one user's session, and whether a run of that session is reading from them."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else None  # None: the temp dir at the time of use
        self.run_in_progress = False  # a run reads the current dataset: its extracted zip must stay
        self.owner = secrets.token_urlsafe(24)  # marks this session's runs; never leaves the server
        self._folder: Path | None = None
        self._extracted: Path | None = None

    def folder(self) -> Path:
        """The session's own folder, created on first use and again if it was removed meanwhile."""
        if self._folder is None or not self._folder.is_dir():
            self._folder = Path(tempfile.mkdtemp(prefix=SESSION_PREFIX, dir=self.root))
            # The folder lives as long as this object: a handler works on a copy of the page's state, and when it
            # refuses (a zip with '../' entries from a new page), the session it made is dropped, never to expire.
            # Only in this process (a forked GPU worker drops its copies), and not at exit (the next launch sweeps).
            weakref.finalize(self, _remove_folder, self._folder, os.getpid()).atexit = False
        return self._folder

    def extraction_folder(self) -> Path:
        """A new, empty folder to extract a zip into (see ``use_dataset``)."""
        return Path(tempfile.mkdtemp(prefix="zip_", dir=self.folder()))

    def use_dataset(self, extracted: Path | None) -> None:
        """The session's dataset is now ``extracted`` (a zip's folder) or lives elsewhere (None).

        The previous extraction goes, unless a run is still reading it (it then goes with the session).
        """
        previous, self._extracted = self._extracted, extracted
        if previous is not None and previous != extracted and not self.run_in_progress:
            shutil.rmtree(previous, ignore_errors=True)

    def close(self, *, remove_runs: bool = False) -> None:
        """Remove everything the session wrote; called when the session expires.

        ``remove_runs``: its runs too, but for those still in use (a shared server's rule; locally they stay).
        """
        if remove_runs:
            runs.expire_owner(self.owner)
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = self._extracted = None


def _remove_folder(folder: Path, owner_pid: int) -> None:
    if os.getpid() == owner_pid:
        shutil.rmtree(folder, ignore_errors=True)


def sweep_stale_sessions(root: str | os.PathLike | None = None, max_age_s: float = STATE_TTL_S) -> list[Path]:
    """Remove session folders older than the session's time to live, left by a server that was stopped.

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
    if removed:
        logger.info("removed %d session folder(s) left by a stopped server", len(removed))
    return removed
