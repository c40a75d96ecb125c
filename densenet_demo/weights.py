"""Where weights come from and go to: torchvision's ImageNet weights, local files, this project's checkpoints.

- ImageNet weights for the four ImageNet presets come from torchvision's weight enums, downloaded once
  into ``weights_dir()``; offline, ``WeightsUnavailable`` names the file to place there by hand.
- Local files: ``.safetensors``, or ``.pth``/``.pt`` read with ``torch.load(weights_only=True)`` (tensors
  only; a pickle that would run code is refused). Legacy torchvision keys and ``module.`` prefixes are
  renamed, and a mismatch is reported key by key with both shapes.

A checkpoint of this project is a folder holding ``model.safetensors`` (tensors, plus the metadata
in the safetensors header) and ``model.json`` (the same metadata, for people and tools to read).
The safetensors file is the authority: it is replaced in one atomic rename, so a crash mid-save
leaves either the old checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import pickle
import re
import secrets
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import IMAGENET_PRESETS, PRESETS, DenseNetConfig, get_preset
from .images import Preprocessing, default_preprocessing
from .model import DenseNet

logger = logging.getLogger(__name__)

if tuple(int(p) for p in re.findall(r"\d+", torch.__version__)[:2]) < (2, 10):
    # torch.load(weights_only=True) is the only thing standing between a .pth upload and arbitrary code.
    raise ImportError(f"densenet_demo needs torch >= 2.10 (weights_only unpickler fixes); found {torch.__version__}")

__all__ = [
    "CHECKPOINT_WEIGHTS",
    "CHECKPOINT_META",
    "CheckpointError",
    "CheckpointInfo",
    "WeightsUnavailable",
    "LoadedModel",
    "WeightsSpec",
    "default_weights",
    "imagenet_preset_for",
    "resolve",
    "load_model",
    "imagenet_weights",
    "imagenet_file",
    "imagenet_categories",
    "load_imagenet_state_dict",
    "load_state_dict_file",
    "remap_legacy_keys",
    "load_weights_into",
    "weights_dir",
    "runs_dir",
    "published_dir",
    "find_run",
    "new_run_id",
    "validate_run_id",
    "run_path",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint_info",
    "list_runs",
    "atomic_write",
    "zip_checkpoint",
]

CHECKPOINT_WEIGHTS = "model.safetensors"
CHECKPOINT_META = "model.json"
_META_KEY = "densenet_demo"
FORMAT_VERSION = 1
RANDOM_LABEL = "random init"  # the weights label of a model with random weights
DOWNLOAD_TIMEOUT_S = 60.0  # connecting, and each wait for data, when downloading ImageNet weights
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class CheckpointError(RuntimeError):
    """A checkpoint or weights file that cannot be written or read; the message says which and why."""


class WeightsUnavailable(CheckpointError):
    """Pretrained weights that cannot be had (offline, failed download, broken cached file).

    The message names the file to place in ``weights_dir()`` and the URL it comes from.
    """


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
    path = Path(env) if env else Path(__file__).resolve().parent.parent / "weights"
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
    try:
        state = load_file(str(Path(directory) / CHECKPOINT_WEIGHTS), device=map_location)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{directory}: cannot read the weights ({e})") from None
    model = DenseNet(info.config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{directory}: the weights do not match the recorded config ({e})") from None
    return model.eval(), info


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


# ---------------------------------------------------------------------------------------------
# Weights from elsewhere: torchvision's ImageNet files and any local state dict

WEIGHT_FILE_SUFFIXES = (".safetensors", ".pth", ".pt")
# Old torchvision checkpoints (the ImageNet files among them) name dense-layer modules 'norm.1', 'conv.2';
# '.' is no longer allowed in module names, so today they are 'norm1', 'conv2' (torchvision _load_state_dict).
_LEGACY_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def imagenet_weights(model_name: str):
    """torchvision's weight enum value (``DenseNet121_Weights.IMAGENET1K_V1``, ...) for an ImageNet preset."""
    from torchvision.models import get_model_weights

    return get_model_weights(imagenet_preset_for(model_name)).IMAGENET1K_V1


def imagenet_file(model_name: str) -> Path:
    """Where the ImageNet weights of a preset are cached, e.g. ``weights/densenet121-a639ec97.pth``."""
    return weights_dir() / Path(imagenet_weights(model_name).url).name


def imagenet_categories(model_name: str) -> list[str]:
    """The 1000 ImageNet class names; part of the torchvision package, so available offline."""
    return list(imagenet_weights(model_name).meta["categories"])


def load_imagenet_state_dict(model_name: str) -> dict[str, torch.Tensor]:
    """The ImageNet state dict of a preset, downloaded into ``weights_dir()`` on first use.

    A file already in the cache (downloaded earlier or placed there by hand) is used as is: its keys and
    shapes are checked when it is loaded into the model. Raises ``WeightsUnavailable`` naming the file.
    """
    from torch.hub import HASH_REGEX

    url = imagenet_weights(model_name).url
    path = imagenet_file(model_name)
    if not path.is_file():
        match = HASH_REGEX.search(path.name)
        try:
            download_file(url, path, match.group(1) if match else None)
        except (OSError, RuntimeError) as e:  # URLError, timeouts, HTTP errors, a wrong checksum
            raise WeightsUnavailable(
                f"could not download the ImageNet weights for {model_name} ({e}). {_how_to_place(model_name)}"
            ) from None
    try:
        return load_state_dict_file(path)
    except CheckpointError as e:
        raise WeightsUnavailable(
            f"the cached ImageNet weights are unreadable ({e}). {_how_to_place(model_name)}"
        ) from None


def download_file(url: str, path: Path, sha256_prefix: str | None = None, timeout_s: float | None = None) -> None:
    """Download ``url`` to ``path`` atomically; with ``sha256_prefix``, keep it only when its hash starts so.

    ``timeout_s`` bounds the connection and every wait for data (a network that drops packets fails within
    it instead of hanging a request for minutes). Raises ``OSError`` (``URLError``, timeouts, HTTP errors)
    or ``RuntimeError`` (a wrong checksum); ``path`` is then untouched and no temporary file is left.
    """

    def write(tmp: Path) -> None:
        digest = hashlib.sha256()
        request = urllib.request.Request(url, headers={"User-Agent": "densenet_demo"})
        with urllib.request.urlopen(request, timeout=timeout_s or DOWNLOAD_TIMEOUT_S) as response:
            with open(tmp, "wb") as f:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    f.write(chunk)
        if sha256_prefix and not digest.hexdigest().startswith(sha256_prefix):
            raise RuntimeError(
                f"the download's SHA-256 {digest.hexdigest()[:12]}… does not start with {sha256_prefix} "
                "(a corrupt or different file)"
            )

    atomic_write(Path(path), write)


def _how_to_place(model_name: str) -> str:
    path = imagenet_file(model_name)
    return f"To use them, place {path.name} from {imagenet_weights(model_name).url} in {path.parent}"


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors from a ``.safetensors`` or ``.pth``/``.pt`` file, never unpickling arbitrary objects.

    Accepts a bare state dict or one nested under ``state_dict`` or ``model``.
    """
    path = Path(path)
    name = path.name
    if path.suffix.lower() not in WEIGHT_FILE_SUFFIXES:
        raise CheckpointError(f"{name}: weights must be a {', '.join(WEIGHT_FILE_SUFFIXES)} file")
    if not path.is_file():
        raise CheckpointError(f"{name}: no such file")
    try:
        if path.suffix.lower() == ".safetensors":
            data: Any = load_file(str(path), device="cpu")
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = _unpickler_reason(e)
        if "global" in reason.lower():  # a class or function to import and call: what a code payload needs
            raise CheckpointError(
                f"{name}: refused, it holds Python objects other than tensors and loading them could run code "
                f"({reason}); save model.state_dict() or use .safetensors"
            ) from None
        raise CheckpointError(f"{name}: not a readable weights file ({reason})") from None
    except Exception as e:  # a parser fed arbitrary bytes fails in many ways (KeyError, struct.error, ...)
        raise CheckpointError(f"{name}: not a readable weights file ({type(e).__name__}: {e})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(data, Mapping) and isinstance(data.get(wrapper), Mapping):
            data = data[wrapper]
    if not isinstance(data, Mapping) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{name}: not a state dict (a mapping of parameter names to tensors)")
    return dict(data)


def _unpickler_reason(error: pickle.UnpicklingError) -> str:
    """The line that says why torch's weights-only unpickler stopped, without its advice to turn it off."""
    text = str(error)
    tail = text.split("WeightsUnpickler error:", 1)[-1]
    return next((line.strip() for line in tail.splitlines() if line.strip()), text.splitlines()[0])


def remap_legacy_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Today's key names for a state dict: legacy ``denselayerN.norm.1`` -> ``norm1``, no ``module.`` prefix.

    ``module.`` is what ``nn.DataParallel`` adds in front of every key of the model it wraps.
    """
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        out[_LEGACY_KEY.sub(r"\1\2", key)] = value
    return out


def load_weights_into(
    model: DenseNet, state_dict: Mapping[str, torch.Tensor], *, replace_head: bool = False
) -> list[str]:
    """Load ``state_dict`` into ``model`` strictly, after ``remap_legacy_keys``.

    With ``replace_head``, a classifier of another size is left as initialised in ``model`` (fine-tuning
    to new classes); the names of the tensors left so are returned. Any other mismatch raises a
    ``CheckpointError`` listing the first differing keys, with both shapes.
    """
    state = remap_legacy_keys(state_dict)
    expected = model.state_dict()
    kept = []
    if replace_head:
        for key in ("classifier.weight", "classifier.bias"):
            if key in state and key in expected and state[key].shape != expected[key].shape:
                state[key] = expected[key]
                kept.append(key)
    shapes = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    # Files saved before BatchNorm counted batches (torchvision's ImageNet files) lack num_batches_tracked;
    # BatchNorm fills it in on load, as it does for torchvision.
    missing = [k for k in expected if k not in state and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    problems = []
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): {_first(shapes)}")
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_first(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_first(unexpected)}")
    if problems:
        hint = "" if replace_head or not _only_head(shapes) else "; to train new classes, replace the head"
        raise CheckpointError(f"the weights do not fit this {model.cfg.variant} ({'; '.join(problems)}){hint}")
    model.load_state_dict(state, strict=True)
    return kept


def _first(items: list[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def _only_head(shape_problems: list[str]) -> bool:
    return bool(shape_problems) and all(p.startswith("classifier.") for p in shape_problems)


# ---------------------------------------------------------------------------------------------
# One entry point: a model name and a weights choice -> a model ready to use


DEFAULT = "default"  # the weights argument that lets the model decide (see ``default_weights``)
WEIGHTS_KINDS = ("imagenet", "random", "file", "checkpoint")


@dataclass(frozen=True)
class WeightsSpec:
    """What a (model, weights) request resolves to, before anything is loaded.

    ``kind`` is ``imagenet`` (torchvision's file for ``preset``), ``random``, ``file`` (a state dict at
    ``path``) or ``checkpoint`` (this project's folder at ``path``, which records its own architecture).
    ``version`` is the file's (mtime, size) when resolved: a file replaced on disk makes another ``cache_key``.
    """

    model: str  # what the model was asked for as: a preset, run:<id>, a folder, or 'custom' for a config
    kind: str
    config: DenseNetConfig | None = None  # the architecture; None for a checkpoint (its folder says)
    preset: str | None = None  # the preset whose ImageNet weights and class names apply, if any
    path: Path | None = None  # the weights file, the checkpoint folder, or the ImageNet file's cache place
    version: tuple[int, int] | None = None

    @property
    def cache_key(self) -> tuple:
        """Equal for requests that give the same model with the same weights (same file version included)."""
        return (self.kind, self.config, self.preset, str(self.path) if self.path else None, self.version)


def default_weights(model: str | DenseNetConfig) -> str:
    """The one rule for which weights a model gets by default: ImageNet where they exist, else random."""
    if isinstance(model, str) and model in PRESETS and PRESETS[model].imagenet_weights:
        return "imagenet"
    return "random"


def imagenet_preset_for(model: str | DenseNetConfig) -> str:
    """The preset whose ImageNet weights fit ``model`` (a preset name or a config), or a ``ValueError``.

    A custom config fits when it is an ImageNet preset up to head size, dropout and memory-efficiency.
    """
    if isinstance(model, DenseNetConfig):
        neutral = {"num_classes": 1000, "drop_rate": 0.0, "memory_efficient": False}
        match = (n for n in IMAGENET_PRESETS if model.replace(**neutral) == PRESETS[n].config.replace(**neutral))
        found = next(match, None)
        what = "this custom config"
    else:
        found = model if model in IMAGENET_PRESETS else None
        what = str(model)
    if found is None:
        raise ValueError(
            f"there are no ImageNet weights for {what}; ImageNet weights exist only for "
            f"{', '.join(IMAGENET_PRESETS)}. Use random weights or a weights file"
        )
    return found


def resolve(model: str | DenseNetConfig | WeightsSpec, weights: str | os.PathLike | None = DEFAULT) -> WeightsSpec:
    """``model`` (a preset, ``run:<id>``, a checkpoint folder or a config) and ``weights`` -> a ``WeightsSpec``.

    ``weights``: ``"default"`` (or ``None``/``""``: see ``default_weights``), ``"imagenet"``, ``"random"``, a
    ``.safetensors``/``.pth`` file, or a checkpoint folder (whose architecture then replaces ``model``'s).
    A checkpoint folder as ``model`` brings its own weights; ``weights`` is then ignored. A ``WeightsSpec``
    is returned as it is. Raises ``ValueError`` for an unknown preset or ImageNet weights that do not exist.
    """
    if isinstance(model, WeightsSpec):
        return model
    if weights is None or weights == "":
        weights = DEFAULT
    choice = (
        weights.lower() if isinstance(weights, str) and weights.lower() in (DEFAULT, "imagenet", "random") else None
    )
    if choice is None and Path(weights).is_dir():
        return _checkpoint_spec(model if isinstance(model, str) else "custom", Path(weights).resolve())
    if isinstance(model, DenseNetConfig):
        name, config = "custom", model
    else:
        folder = _checkpoint_folder(model)
        if folder is not None:
            return _checkpoint_spec(model, folder)
        name, config = model, get_preset(model).config
    if choice == DEFAULT:
        choice = default_weights(model)
    if choice == "imagenet":
        preset = imagenet_preset_for(model)
        path = imagenet_file(preset)
        return WeightsSpec(name, "imagenet", config, preset, path, _file_version(path))
    preset = name if name in PRESETS else None
    if choice == "random":
        return WeightsSpec(name, "random", config, preset)
    path = Path(weights).resolve()
    return WeightsSpec(name, "file", config, preset, path, _file_version(path))


def _checkpoint_folder(model: str) -> Path | None:
    """The folder a model string names (``run:<id>`` or a path), or None for a preset name."""
    if not isinstance(model, str) or not model:
        raise ValueError("no model given: use a preset name, run:<run-id> or a checkpoint folder")
    if model.startswith("run:"):
        return find_run(model.removeprefix("run:"))
    if model not in PRESETS and (os.sep in model or "/" in model or Path(model).is_dir()):
        return Path(model).resolve()
    return None


def _checkpoint_spec(model: str, folder: Path) -> WeightsSpec:
    return WeightsSpec(model, "checkpoint", path=folder, version=_file_version(folder / CHECKPOINT_WEIGHTS))


def _file_version(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size)


@dataclass(frozen=True)
class LoadedModel:
    """A model (eval mode) and what goes with its weights."""

    model: DenseNet
    class_names: tuple[str, ...]
    preprocessing: Preprocessing
    label: str  # 'ImageNet (torchvision IMAGENET1K_V1)', 'random init', 'fine-tuned run <id>', 'file <name>'
    notice: str | None = None  # set when the weights asked for could not be had


def load_model(
    model: str | DenseNetConfig | WeightsSpec,
    weights: str | os.PathLike | None = DEFAULT,
    *,
    num_classes: int | None = None,
    fallback_to_random: bool = True,
    generator: torch.Generator | None = None,
) -> LoadedModel:
    """The model ``resolve(model, weights)`` names, with its weights, class names and preprocessing, in eval mode.

    ``num_classes`` gives a head of that size (fine-tuning); a file's head of another size is then left out.
    ImageNet weights that cannot be had give random weights and a ``notice`` saying so, or
    ``WeightsUnavailable`` without ``fallback_to_random``. Random weights are drawn from ``generator``
    (default: torch's global RNG).
    """
    spec = resolve(model, weights)
    notice = None
    if spec.kind == "checkpoint":
        net, info = load_checkpoint(spec.path)
        in_runs = spec.path.parent in (runs_dir().resolve(), published_dir().resolve())
        label = f"fine-tuned run {info.run_id}" if in_runs else f"checkpoint {spec.path.name}"
        names, preprocessing = info.class_names, info.preprocessing
    else:
        if spec.kind == "imagenet":
            net = DenseNet(spec.config.replace(num_classes=len(imagenet_categories(spec.preset))), generator=generator)
            try:
                _load_imagenet_into(net, spec.preset)
                label = "ImageNet (torchvision IMAGENET1K_V1)"
            except WeightsUnavailable as e:
                if not fallback_to_random:
                    raise
                label = RANDOM_LABEL
                notice = f"{spec.model} is running with RANDOM weights, so its predictions mean nothing: {e}"
                logger.warning("%s", notice)
        elif spec.kind == "random":
            net = DenseNet(spec.config.replace(num_classes=num_classes or spec.config.num_classes), generator=generator)
            label = RANDOM_LABEL
        else:
            net, label = _from_file(spec, num_classes, generator)
        n = net.cfg.num_classes
        imagenet_head = spec.preset in IMAGENET_PRESETS and n == 1000
        names = imagenet_categories(spec.preset) if imagenet_head else _generic_names(n)
        preprocessing = default_preprocessing(net.cfg)
    if num_classes is not None and num_classes != net.cfg.num_classes:
        net.reset_classifier(num_classes)
        names = _generic_names(num_classes)
    return LoadedModel(net.eval(), tuple(names), preprocessing, label, notice)


def _from_file(spec: WeightsSpec, num_classes: int | None, generator: torch.Generator | None) -> tuple[DenseNet, str]:
    """A state dict file in the spec's architecture: its own head size, or ``num_classes`` (head left out)."""
    state = load_state_dict_file(spec.path)
    if num_classes is None:
        head = state.get("classifier.weight")
        num_classes = head.shape[0] if head is not None and head.dim() == 2 else 1
    net = DenseNet(spec.config.replace(num_classes=num_classes), generator=generator)
    try:
        kept = load_weights_into(net, state, replace_head=True)
    except CheckpointError as e:
        raise CheckpointError(f"{spec.path.name}: {e}") from None
    return net, f"file {spec.path.name}" + (", new head" if kept else "")


def _load_imagenet_into(model: DenseNet, preset: str) -> None:
    try:
        load_weights_into(model, load_imagenet_state_dict(preset))
    except WeightsUnavailable:
        raise
    except CheckpointError as e:
        name = imagenet_file(preset).name
        raise WeightsUnavailable(f"{name} is not {preset}'s ImageNet file ({e}). {_how_to_place(preset)}") from None


def _generic_names(n: int) -> tuple[str, ...]:
    return tuple(f"class {i}" for i in range(n))


def zip_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """The checkpoint's two files in one zip ``out_dir/<run>.zip`` (entries under ``<run>/``), for a download."""
    checkpoint = Path(checkpoint)
    out = Path(out_dir) / f"{checkpoint.name}.zip"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in (CHECKPOINT_WEIGHTS, CHECKPOINT_META):
            zf.write(checkpoint / name, f"{checkpoint.name}/{name}")
    return out
