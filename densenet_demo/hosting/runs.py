"""Who may see and use which fine-tuned run, how long runs are kept, and how they are listed.

Locally (a laptop, the command line) every run is everyone's, as it always was. On a shared server (a
Hugging Face Space, or a server bound to a non-loopback address; ``DENSENET_DEMO_SHARED=1/0`` overrides) a
run belongs to the browser session that trained it: the session's owner token is recorded in the run's
``owner.json`` before training starts, and a session sees only its own runs plus the ones the host
publishes (folders placed in ``checkpoints.published_dir()``). Runs that belong to nobody (the command line's,
older ones) are the host's: hidden from visitors on a shared server, never expired, but counted by the cap.

Retention: a session's runs are deleted when the session expires (shared server), the host may cap the
runs per session (``DENSENET_DEMO_RUNS_PER_SESSION``) and the runs folder's disk use
(``DENSENET_DEMO_RUNS_MAX_MB``); over a cap the oldest go first. Published runs are never deleted, and
neither is a run that is training or being zipped for a download (``in_use``).

The one piece of process-wide mutable state is the set of runs in use (a locked counter per run id): it is
what keeps one user's retention from deleting what another user's request is reading.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..weights import checkpoints
from ..weights import resolver as weights

__all__ = [
    "OWNER_FILE",
    "RunError",
    "RunSettings",
    "settings",
    "note_launch",
    "is_loopback",
    "claim",
    "owner_of",
    "is_published",
    "visible_runs",
    "can_use",
    "run_label",
    "run_labels",
    "in_use",
    "begin_run",
    "end_run",
    "is_busy",
    "delete_run",
    "expire_owner",
    "enforce_limits",
    "sweep_orphaned_runs",
    "discard_if_empty",
]

logger = logging.getLogger(__name__)

OWNER_FILE = "owner.json"  # beside model.json; never part of a download (weights.zip_checkpoint takes two files)
SHARED_DEFAULT_MAX_MB = 2048.0  # a Space's runs folder, unless the host sets DENSENET_DEMO_RUNS_MAX_MB
SHARED_DEFAULT_PER_SESSION = 5  # runs one visitor keeps at once on a shared server
_LOOPBACK = {"localhost", "::1", "ip6-localhost", "ip6-loopback"}

_busy: dict[str, int] = {}  # run id -> requests reading or writing it (training, zipping)
_busy_lock = threading.Lock()
_launch: dict[str, object] = {}  # what launch() was told (server_name, share) beyond the environment


class RunError(RuntimeError):
    """A run that cannot be used or deleted by this session; the message says why, for people."""


@dataclass(frozen=True)
class RunSettings:
    """The sharing rule and the caps in force; 0 means no cap."""

    shared: bool
    max_mb: float
    per_session: int


def is_loopback(host: str | None) -> bool:
    """True for an address only this machine can reach (``127.x``, ``::1``, ``localhost``)."""
    host = (host or "").strip().strip("[]").lower()
    return host in _LOOPBACK or host.startswith("127.")


def note_launch(*, server_name: str | None = None, share: bool = False) -> None:
    """Record what the app was launched with where it differs from the environment (``launch(server_name=...)``)."""
    if server_name is not None:
        _launch["server_name"] = server_name
    if share:
        _launch["share"] = True


def settings() -> RunSettings:
    """The rule in force, from the environment (and ``note_launch``); read on each use, so it is never stale.

    Shared when ``DENSENET_DEMO_SHARED`` says so (``1``/``0``), else when running on a Space (``SPACE_ID``),
    with a public share link, or bound to a non-loopback address (``GRADIO_SERVER_NAME`` or
    ``launch(server_name=...)``; Gradio's default, 127.0.0.1, is local).
    """
    override = os.environ.get("DENSENET_DEMO_SHARED", "").strip().lower()
    if override in ("1", "true", "yes", "on"):
        shared = True
    elif override in ("0", "false", "no", "off"):
        shared = False
    else:
        server_name = _launch.get("server_name") or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
        shared = bool(os.environ.get("SPACE_ID") or _launch.get("share") or not is_loopback(str(server_name)))
    max_mb = _number("DENSENET_DEMO_RUNS_MAX_MB", SHARED_DEFAULT_MAX_MB if shared else 0.0)
    per_session = int(_number("DENSENET_DEMO_RUNS_PER_SESSION", SHARED_DEFAULT_PER_SESSION if shared else 0))
    return RunSettings(shared, max_mb, per_session)


def _number(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        logger.warning("%s=%r is not a number; using %s", name, text, default)
        return default
    return max(value, 0.0)


# -- Ownership ---------------------------------------------------------------------------------


def claim(run_id: str, owner: str) -> Path:
    """Record ``owner`` as the owner of run ``run_id`` (before its first checkpoint), atomically.

    Raises ``weights.CheckpointError`` with a plain message when it cannot be written (a full disk).
    """
    folder = weights.run_path(run_id)
    record = {"owner": owner, "claimed_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    try:
        checkpoints.atomic_write(
            folder / OWNER_FILE, lambda tmp: tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
        )
    except OSError as e:
        raise weights.CheckpointError(
            f"could not start the run: there is no room to save it ({e.strerror or e}). Free some disk space "
            "(or delete a run you no longer need) and try again."
        ) from None
    return folder


def owner_of(run_id: str) -> str | None:
    """The owner token recorded for a run in the runs folder; None for a run nobody claimed (or unreadable)."""
    try:
        record = json.loads((weights.run_path(run_id) / OWNER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, weights.CheckpointError):
        return None
    owner = record.get("owner") if isinstance(record, dict) else None
    return owner if isinstance(owner, str) and owner else None


def is_published(run_id: str) -> bool:
    """True when ``run_id`` names a published run (and no run of the runs folder shadows it)."""
    try:
        return checkpoints.find_run(run_id).parent == checkpoints.published_dir().resolve()
    except weights.CheckpointError:
        return False


def _owned_by(run_id: str, owner: str | None) -> bool:
    recorded = owner_of(run_id)
    return bool(owner and recorded) and secrets.compare_digest(recorded, owner)


def visible_runs(owner: str | None, shared: bool) -> list[checkpoints.CheckpointInfo]:
    """The runs a session may list and use, newest first: locally all; shared, its own plus the published."""
    own = checkpoints.list_runs()
    if shared:
        own = [r for r in own if _owned_by(r.run_id, owner)]
    ids = {r.run_id for r in own}
    published = [r for r in checkpoints.list_runs(checkpoints.published_dir()) if r.run_id not in ids]
    return sorted(own + published, key=lambda r: (r.created_at, r.run_id), reverse=True)


def can_use(run_id: str, owner: str | None, shared: bool) -> bool:
    """Whether a session may use run ``run_id``; False alike for an unknown run and another session's."""
    try:
        folder = checkpoints.find_run(run_id)
    except weights.CheckpointError:
        return False
    if not (folder / weights.CHECKPOINT_WEIGHTS).is_file():
        return False
    return not shared or folder.parent == checkpoints.published_dir().resolve() or _owned_by(run_id, owner)


# -- Labels ------------------------------------------------------------------------------------


def run_label(info: checkpoints.CheckpointInfo) -> str:
    """What a run is, for people: ``digits · densenet121 scratch · 99.2% · 14:05``."""
    train_config = info.extra.get("train_config") or {}
    model = train_config.get("model") if isinstance(train_config.get("model"), str) else info.config.variant
    mode = train_config.get("mode") or ""
    acc = info.metrics.get("val_acc")
    accuracy = f"{acc:.1%}" if isinstance(acc, (int, float)) else "not validated"  # stopped before a validation
    parts = [_dataset_name(info), f"{model} {mode}".strip(), accuracy, _when(info.created_at)]
    return " · ".join(p for p in parts if p)


def run_labels(runs: list[checkpoints.CheckpointInfo]) -> list[tuple[str, str]]:
    """(label, ``run:<id>``) per run, in the given order; runs that would read alike get their id's tail."""
    labels = [run_label(r) for r in runs]
    out = []
    for label, run in zip(labels, runs, strict=True):
        if labels.count(label) > 1:
            label += f" · {run.run_id.rsplit('-', 1)[-1]}"
        if is_published(run.run_id):
            label = f"published: {label}"
        out.append((label, f"run:{run.run_id}"))
    return out


def _dataset_name(info: checkpoints.CheckpointInfo) -> str:
    source = str((info.extra.get("dataset") or {}).get("source") or "")
    if not source:
        return ""
    if source.startswith("the built-in example"):
        return "example"
    name = Path(source.rstrip("/\\")).name
    return name.removesuffix(".zip") or name


def _when(created_at: str) -> str:
    """Local time of day for today's runs, with the date for older ones."""
    try:
        moment = _dt.datetime.fromisoformat(created_at).astimezone()
    except ValueError:
        return ""
    if moment.date() == _dt.datetime.now().astimezone().date():
        return moment.strftime("%H:%M")
    return moment.strftime("%Y-%m-%d %H:%M")


# -- Runs in use, deletion and retention -------------------------------------------------------


@contextmanager
def in_use(run_id: str) -> Iterator[None]:
    """Keep run ``run_id`` from being deleted while the block runs (zipping it for a download, say)."""
    _pin(run_id)
    try:
        yield
    finally:
        _unpin(run_id)


def begin_run(run_id: str, owner: str) -> None:
    """A training run starts: it is in use until ``end_run``, and ``owner``'s from its first file on."""
    _pin(run_id)
    try:
        claim(run_id, owner)
    except BaseException:
        end_run(run_id)
        raise


def end_run(run_id: str) -> None:
    """A training run is over: retention may delete it from now on; a run that saved nothing leaves no folder."""
    _unpin(run_id)
    discard_if_empty(run_id)


def _pin(run_id: str) -> None:
    with _busy_lock:
        _busy[run_id] = _busy.get(run_id, 0) + 1


def _unpin(run_id: str) -> None:
    with _busy_lock:
        _busy[run_id] -= 1
        if not _busy[run_id]:
            del _busy[run_id]


def is_busy(run_id: str) -> bool:
    with _busy_lock:
        return run_id in _busy


def delete_run(run_id: str, owner: str | None, shared: bool) -> None:
    """Delete a run the session may use; published and busy runs are refused, with the reason."""
    if not can_use(run_id, owner, shared):
        raise RunError(f"Unknown model 'run:{run_id}': choose one of your fine-tuned runs.")
    if is_published(run_id):
        raise RunError("This run is published by the host for everyone; it cannot be deleted from the page.")
    if not _remove(run_id):
        raise RunError("This run is training or being downloaded; delete it once that is done.")


def _remove(run_id: str) -> bool:
    """Remove a run of the runs folder unless it is in use; True when it is gone."""
    with _busy_lock:
        if run_id in _busy:
            return False
        shutil.rmtree(weights.run_path(run_id), ignore_errors=True)
    return True


def expire_owner(owner: str | None) -> list[str]:
    """Delete every run of an expired session (published ones live elsewhere; runs in use stay). Returns the ids."""
    if not owner or not weights.runs_dir().is_dir():
        return []
    removed = [p.name for p in _run_folders() if _owned_by(p.name, owner) and _remove(p.name)]
    if removed:
        logger.info("removed %d run(s) of an expired session", len(removed))
    return removed


def discard_if_empty(run_id: str) -> None:
    """Remove a claimed run folder that never got a checkpoint (a run that failed or stopped before saving)."""
    folder = weights.run_path(run_id)
    if folder.is_dir() and not (folder / weights.CHECKPOINT_WEIGHTS).exists():
        _remove(run_id)


def enforce_limits(owner: str | None = None, limits: RunSettings | None = None, keep: str | None = None) -> list[str]:
    """Apply the caps: ``owner``'s runs beyond the per-session cap, then any runs beyond the disk cap.

    Oldest first; never a published run, a run in use, or ``keep`` (the run just saved). Returns the ids removed.
    """
    limits = limits or settings()
    removed: list[str] = []
    folders = sorted(_run_folders(), key=_saved_at)  # oldest first
    if limits.per_session and owner:
        mine = [p for p in folders if _owned_by(p.name, owner)]
        for folder in mine[: max(0, len(mine) - limits.per_session)]:
            if folder.name != keep and _remove(folder.name):
                removed.append(folder.name)
    if limits.max_mb:
        remaining = [p for p in folders if p.name not in removed]
        sizes = {p.name: _size(p) for p in remaining}
        total, cap = sum(sizes.values()), limits.max_mb * 2**20
        for folder in remaining:
            if total <= cap:
                break
            if folder.name != keep and _remove(folder.name):
                removed.append(folder.name)
                total -= sizes[folder.name]
    if removed:
        logger.info("run limits %s: removed %s", limits, ", ".join(removed))
    return removed


def sweep_orphaned_runs(max_age_s: float) -> list[str]:
    """At launch on a shared server: remove claimed runs older than a session's lifetime.

    A server that stopped could not expire its sessions; no session outlives it, so their runs can be
    neither seen nor expired any more. Younger ones may belong to another server on the same folder.
    """
    cutoff = time.time() - max_age_s
    removed = []
    for folder in _run_folders():
        if owner_of(folder.name) is not None and _saved_at(folder) < cutoff and _remove(folder.name):
            removed.append(folder.name)
    if removed:
        logger.info("removed %d run(s) of sessions that ended with a stopped server", len(removed))
    return removed


def _run_folders() -> list[Path]:
    root = weights.runs_dir()
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")]


def _saved_at(folder: Path) -> float:
    """When the run last saved (its weights' mtime), else when it was claimed or made."""
    for path in (folder / weights.CHECKPOINT_WEIGHTS, folder / OWNER_FILE, folder):
        try:
            return path.stat().st_mtime
        except OSError:
            continue
    return 0.0


def _size(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
        except OSError:
            continue
    return total
