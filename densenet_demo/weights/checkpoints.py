"""This project's checkpoints: where they live, how they are written (atomically), read, listed and zipped.

A checkpoint is a folder holding ``model.safetensors`` (tensors, plus the metadata in the safetensors header)
and ``model.json`` (the same metadata, for people and tools to read). The safetensors file is the authority:
it is replaced in one atomic rename, so a crash mid-save leaves either the old checkpoint or the new one,
never half of one. Fine-tuned runs are checkpoints in ``runs_dir()``, one folder per run id.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import secrets
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..config import DenseNetConfig
from ..data.images import Preprocessing
from ..model import DenseNet

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_WEIGHTS",
    "CHECKPOINT_META",
    "CheckpointError",
    "CheckpointInfo",
    "weights_dir",
    "runs_dir",
    "published_dir",
    "find_run",
    "new_run_id",
    "validate_run_id",
    "run_path",
    "save_checkpoint",
    "load_checkpoint",
    "model_from_safetensors",
    "read_checkpoint_info",
    "list_runs",
    "atomic_write",
    "sweep_partial_files",
    "zip_checkpoint",
]

CHECKPOINT_WEIGHTS = "model.safetensors"
CHECKPOINT_META = "model.json"
_META_KEY = "densenet_demo"
FORMAT_VERSION = 1
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class CheckpointError(RuntimeError):
    """A checkpoint or weights file that cannot be written or read; the message says which and why."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What ``model.json`` records about a checkpoint."""

    path: Path
    config: DenseNetConfig
    class_names: tuple[str, ...]
    preprocessing: Preprocessing
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.path.name

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "class_names": list(self.class_names),
            "preprocessing": self.preprocessing.to_dict(),
            "metrics": self.metrics,
            "created_at": self.created_at,
            **({"extra": self.extra} if self.extra else {}),
        }

    @classmethod
    def from_dict(cls, path: Path, data: dict[str, Any]) -> CheckpointInfo:
        try:
            return cls(
                path=path,
                config=DenseNetConfig.from_dict(data["config"]),
                class_names=tuple(str(c) for c in data["class_names"]),
                preprocessing=Preprocessing.from_dict(data["preprocessing"]),
                metrics=dict(data.get("metrics") or {}),
                created_at=str(data.get("created_at", "")),
                extra=dict(data.get("extra") or {}),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: checkpoint metadata is incomplete or invalid ({e})") from None


def weights_dir() -> Path:
    """The cache folder: ``$DENSENET_DEMO_WEIGHTS`` or the project's ``weights/``."""
    env = os.environ.get("DENSENET_DEMO_WEIGHTS")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "weights"
    return path


def runs_dir() -> Path:
    return weights_dir() / "runs"


def published_dir() -> Path:
    """Runs the host publishes to every visitor: ``$DENSENET_DEMO_PUBLISHED`` or ``weights/published``."""
    env = os.environ.get("DENSENET_DEMO_PUBLISHED")
    return Path(env) if env else weights_dir() / "published"


def find_run(run_id: str) -> Path:
    """The folder of run ``run_id``: in the runs folder, else among the published runs, else (absent) the former."""
    path = run_path(run_id)
    if not path.is_dir():
        published = run_path(run_id, published_dir())
        if published.is_dir():
            return published
    return path


def new_run_id(model_name: str = "run") -> str:
    """A unique, filesystem-safe run id such as ``20261122-183000-densenet121-a1b2``."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", model_name).strip("-._")[:40] or "run"
    return f"{stamp}-{safe}-{secrets.token_hex(2)}"


def validate_run_id(run_id: str) -> str:
    """Reject ids that could name another folder (``..``, slashes, hidden names)."""
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id) or ".." in run_id:
        raise CheckpointError(
            f"run id {run_id!r} is not allowed: use letters, digits, '.', '_' and '-' (no '..', no slashes)"
        )
    return run_id


def run_path(run_id: str, root: Path | None = None) -> Path:
    """The folder of a run inside the runs folder; never anywhere else."""
    root = (root or runs_dir()).resolve()
    path = (root / validate_run_id(run_id)).resolve()
    if path.parent != root:
        raise CheckpointError(f"run id {run_id!r} points outside {root}; rejected")
    return path


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` via ``write(tmp)`` to a hidden temp file in the same folder, fsync, then rename.

    On any failure (disk full included) the temp file is removed and ``path`` keeps its old content.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def sweep_partial_files(root: str | os.PathLike | None = None, max_age_s: float = 3600) -> list[Path]:
    """Remove the hidden temporary files of writes that never finished (a process killed mid-save).

    Looks in the weights folder (downloads) and in each run folder, for ``atomic_write``'s ``.<name>.*.tmp``
    files older than ``max_age_s`` (a younger one may belong to a save still in progress in another
    process). Returns the files removed.
    """
    root = Path(root) if root else weights_dir()
    cutoff = time.time() - max_age_s
    removed = []
    for folder in [root, *(p for p in (root / "runs").glob("*") if p.is_dir() and not p.is_symlink())]:
        for tmp in folder.glob(".*.tmp"):
            try:
                if tmp.is_file() and not tmp.is_symlink() and tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
                    removed.append(tmp)
            except OSError:
                continue
    return removed


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # not supported on this platform; the rename itself is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; durability is best effort there
    finally:
        os.close(fd)


def save_checkpoint(
    directory: str | os.PathLike,
    model: DenseNet,
    *,
    class_names: list[str] | tuple[str, ...],
    preprocessing: Preprocessing,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> CheckpointInfo:
    """Save ``model`` as ``model.safetensors`` + ``model.json`` in ``directory``, each atomically."""
    directory = Path(directory)
    if len(class_names) != model.cfg.num_classes:
        raise CheckpointError(f"{len(class_names)} class names for a model with {model.cfg.num_classes} outputs")
    info = CheckpointInfo(
        path=directory,
        config=model.cfg,
        class_names=tuple(class_names),
        preprocessing=preprocessing,
        metrics=_jsonable(metrics or {}),
        created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        extra=_jsonable(extra or {}),
    )
    meta_text = json.dumps(info.to_dict(), indent=2)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    try:
        atomic_write(
            directory / CHECKPOINT_WEIGHTS,
            lambda tmp: save_file(tensors, str(tmp), metadata={_META_KEY: meta_text}),
        )
        atomic_write(directory / CHECKPOINT_META, lambda tmp: tmp.write_text(meta_text + "\n", encoding="utf-8"))
    except OSError as e:
        raise CheckpointError(
            f"could not save the checkpoint in {directory} ({e.strerror or e}); the previous checkpoint, "
            "if any, is unchanged. Free some disk space and try again."
        ) from e
    return info


def read_checkpoint_info(directory: str | os.PathLike) -> CheckpointInfo:
    """The metadata of a checkpoint folder, read from the safetensors header (the authority)."""
    directory = Path(directory)
    weights_file = directory / CHECKPOINT_WEIGHTS
    if not weights_file.is_file():
        raise CheckpointError(f"{directory}: no {CHECKPOINT_WEIGHTS} in this folder; not a checkpoint")
    try:
        from safetensors import safe_open

        with safe_open(str(weights_file), framework="pt") as f:
            meta_text = (f.metadata() or {}).get(_META_KEY)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights_file}: not a readable safetensors file ({e})") from None
    if meta_text is None:
        meta_file = directory / CHECKPOINT_META
        if not meta_file.is_file():
            raise CheckpointError(f"{directory}: no metadata (no {CHECKPOINT_META}); cannot tell the architecture")
        meta_text = meta_file.read_text(encoding="utf-8")
    try:
        data = json.loads(meta_text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{directory}: checkpoint metadata is not valid JSON ({e})") from None
    return CheckpointInfo.from_dict(directory, data)


def load_checkpoint(directory: str | os.PathLike, map_location: str = "cpu") -> tuple[DenseNet, CheckpointInfo]:
    """Rebuild the model of a checkpoint folder, in eval mode."""
    info = read_checkpoint_info(directory)
    return model_from_safetensors(Path(directory), info.config, map_location), info


def model_from_safetensors(directory: Path, config: DenseNetConfig, map_location: str = "cpu") -> DenseNet:
    """The model ``config`` describes with every tensor of ``directory/model.safetensors`` (strictly), in eval mode."""
    try:
        state = load_file(str(directory / CHECKPOINT_WEIGHTS), device=map_location)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{directory}: cannot read the weights ({e})") from None
    model = DenseNet(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{directory}: the weights do not match the recorded config ({e})") from None
    return model.eval()


def list_runs(root: str | os.PathLike | None = None) -> list[CheckpointInfo]:
    """Every readable checkpoint under the runs folder, newest first; unreadable ones are left out."""
    root = Path(root) if root else runs_dir()
    if not root.is_dir():
        return []
    runs = []
    for child in root.iterdir():
        if child.name.startswith(".") or not (child / CHECKPOINT_WEIGHTS).is_file():
            continue
        try:
            runs.append(read_checkpoint_info(child))
        except CheckpointError as e:
            # A broken run must not hide the others; load_checkpoint reports it when chosen.
            logger.warning("skipping an unreadable run: %s", e)
    return sorted(runs, key=lambda r: (r.created_at, r.run_id), reverse=True)


def _jsonable(value: Any) -> Any:
    """Metrics may hold tensors or numpy numbers; JSON needs plain Python."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if hasattr(value, "tolist") and callable(value.tolist):
        return value.tolist()
    return value


def zip_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """The checkpoint's two files in one zip ``out_dir/<run>.zip`` (entries under ``<run>/``), for a download."""
    checkpoint = Path(checkpoint)
    out = Path(out_dir) / f"{checkpoint.name}.zip"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in (CHECKPOINT_WEIGHTS, CHECKPOINT_META):
            zf.write(checkpoint / name, f"{checkpoint.name}/{name}")
    return out
