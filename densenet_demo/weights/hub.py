"""Models on the Hugging Face Hub: the Hub-format folder (``config.json`` + ``model.safetensors``), read and
downloaded.

A Hub-format folder is what ``export --format hub`` writes and ``push`` uploads. ``model.safetensors`` holds the
state dict under torchvision's names (no pickle, nothing that runs code). ``config.json`` holds the architecture as
``DenseNetConfig`` fields at its top level (``num_classes`` among them, where timm keeps it too), ``label_names``
(timm's name for the class names, in output order) and ``pretrained_cfg``: the preprocessing under timm's field
names (``input_size``, ``interpolation``, ``mean``, ``std``, ``crop_pct``, ``crop_mode``), plus ``resize_size`` and
``color_mode``, which timm has no names for and which say exactly what ``crop_pct`` can only approximate.

``hf-hub:USER/NAME[@REVISION]`` names such a folder on the Hub. ``download`` asks the Hub which commit that is
(checking that the caller may read the repo), then fetches the two files with huggingface_hub into its cache;
``load_hub_folder`` checks them as strictly as a checkpoint: a valid config, one name per output, every tensor
where the config says. ``HF_ENDPOINT`` and ``HF_HUB_CACHE``/``HF_HOME`` are read at each call, not at import.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..config import DenseNetConfig
from ..data.images import Preprocessing
from ..model import DenseNet
from .checkpoints import CHECKPOINT_META, CHECKPOINT_WEIGHTS, CheckpointError, CheckpointInfo, model_from_safetensors

__all__ = [
    "HUB_CONFIG",
    "HUB_PREFIX",
    "HUB_WEIGHTS",
    "MAX_WEIGHTS_BYTES",
    "HubRef",
    "HubSnapshot",
    "download",
    "fetch_file",
    "from_cache",
    "hub_config",
    "hub_endpoint",
    "is_hub_folder",
    "load_hub_folder",
    "network_errors",
    "parse_hub_ref",
    "read_hub_info",
]

HUB_PREFIX = "hf-hub:"  # timm's prefix for a model on the Hub
HUB_CONFIG = "config.json"
HUB_WEIGHTS = CHECKPOINT_WEIGHTS  # model.safetensors, as in a checkpoint folder
FORMAT_VERSION = 1
# DenseNet-161, the largest preset, takes ~115 MB; anything far beyond is not a model of this project.
MAX_WEIGHTS_BYTES = 1024**3
INTERPOLATION = "bilinear"  # Preprocessing.view resizes with torchvision's default (bilinear, antialiased)
DEFAULT_ENDPOINT = "https://huggingface.co"
# A user or organisation name, '/', a repo name: the Hub's own rules (letters, digits, '-', '_', '.'; 96 at most).
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_CONFIG_FIELDS = tuple(f.name for f in fields(DenseNetConfig))


@dataclass(frozen=True)
class HubRef:
    """A repository on the Hub and, optionally, a revision of it (a branch, tag or commit)."""

    repo_id: str
    revision: str | None = None

    @property
    def spec(self) -> str:
        """As a model string: ``hf-hub:USER/NAME`` or ``hf-hub:USER/NAME@REVISION``."""
        return HUB_PREFIX + self.repo_id + (f"@{self.revision}" if self.revision else "")

    @property
    def pinned(self) -> bool:
        """True when the revision is a full commit hash: the files can never change under it."""
        return bool(self.revision and _COMMIT.match(self.revision))


@dataclass(frozen=True)
class HubSnapshot:
    """A downloaded repository: the folder holding its two files (in huggingface_hub's cache), and its commit."""

    folder: Path
    ref: HubRef  # pinned: the revision is the commit the files are from


def parse_hub_ref(text: str) -> HubRef:
    """``hf-hub:USER/NAME[@REVISION]`` (the prefix may be left out) -> ``HubRef``; ``ValueError`` says what is wrong."""
    body = text.strip().removeprefix(HUB_PREFIX).strip()
    repo_id, _, revision = body.partition("@")
    if not _REPO_ID.match(repo_id) or ".." in repo_id or repo_id.endswith((".git", ".")):
        raise ValueError(
            f"{text[:120]!r} is not a Hub repository: write USER/NAME (letters, digits, '-', '_' and '.'), "
            "e.g. hf-hub:alice/cats-vs-dogs"
        )
    if revision and (not _REVISION.match(revision) or ".." in revision):
        raise ValueError(f"{revision[:60]!r} is not a revision: give a branch, a tag or a commit hash after '@'")
    return HubRef(repo_id, revision or None)


def hub_endpoint() -> str:
    """The Hub's address: ``$HF_ENDPOINT`` (a mirror, or a test's stand-in) or huggingface.co; read at each call."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _cache_dir() -> str | None:
    """huggingface_hub's cache folder as the environment says now (it reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def network_errors() -> tuple[type[BaseException], ...]:
    """The errors huggingface_hub lets through when the Hub cannot be reached (its HTTP client's transport errors)."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    try:
        import httpx2 as http  # huggingface_hub 2.x
    except ImportError:
        import httpx as http  # huggingface_hub 1.x
    return (http.TransportError, OfflineModeIsEnabled, ConnectionError, TimeoutError)


# ---------------------------------------------------------------------------------------------
# The folder's config.json, written and read


def hub_config(
    config: DenseNetConfig, class_names: tuple[str, ...], preprocessing: Preprocessing, **about: Any
) -> dict[str, Any]:
    """``config.json`` of a Hub-format folder; ``about`` (run id, metrics, ...) goes under ``densenet_demo``."""
    p = preprocessing
    config = config.replace(memory_efficient=False)  # a training trade-off; whoever loads it chooses again
    return {
        **config.to_dict(),
        "label_names": list(class_names),
        "pretrained_cfg": {
            "input_size": [p.in_channels, p.image_size, p.image_size],
            "interpolation": INTERPOLATION,
            "mean": list(p.mean),
            "std": list(p.std),
            "crop_pct": round(p.image_size / p.resize_size, 6),
            "crop_mode": "center",
            "num_classes": config.num_classes,
            "first_conv": "features.conv0",
            "classifier": "classifier",
            "resize_size": p.resize_size,
            "color_mode": p.mode,
        },
        "densenet_demo": {"format_version": FORMAT_VERSION, "variant": config.variant, **about},
    }


def read_hub_info(folder: str | os.PathLike) -> CheckpointInfo:
    """What a Hub-format folder's ``config.json`` says (architecture, class names, preprocessing), checked."""
    folder = Path(folder)
    try:
        data = json.loads((folder / HUB_CONFIG).read_text(encoding="utf-8"))
    except OSError as e:
        raise CheckpointError(f"{folder.name}: cannot read {HUB_CONFIG} ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{folder.name}: {HUB_CONFIG} is not valid JSON ({e})") from None
    try:
        if not isinstance(data, dict):
            raise ValueError("it is not a JSON object")
        config = DenseNetConfig.from_dict({k: data[k] for k in _CONFIG_FIELDS if k in data})
        names = data["label_names"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("label_names must be a list of class names")
        if len(names) != config.num_classes:
            raise ValueError(f"{len(names)} label_names for num_classes {config.num_classes}")
        p = data["pretrained_cfg"]
        channels, size = int(p["input_size"][0]), int(p["input_size"][-1])
        resize = int(p.get("resize_size") or round(size / float(p.get("crop_pct") or 1.0)))
        preprocessing = Preprocessing(size, resize, tuple(map(float, p["mean"])), tuple(map(float, p["std"])), channels)
        if channels != config.in_channels or len(preprocessing.mean) != channels or len(preprocessing.std) != channels:
            raise ValueError(f"input_size, mean and std must all be for {config.in_channels} channel(s)")
    except (KeyError, TypeError, ValueError, IndexError) as e:
        detail = f"missing {e}" if isinstance(e, KeyError) else str(e)
        raise CheckpointError(f"{folder.name}: {HUB_CONFIG} is not a densenet_demo model config ({detail})") from None
    about = data.get("densenet_demo") if isinstance(data.get("densenet_demo"), dict) else {}
    metrics = about.get("metrics") if isinstance(about.get("metrics"), dict) else {}
    return CheckpointInfo(folder, config, tuple(names), preprocessing, metrics, str(about.get("created_at", "")), about)


def is_hub_folder(folder: str | os.PathLike) -> bool:
    """True for a Hub-format folder (``config.json`` + ``model.safetensors``) that is not a checkpoint folder."""
    folder = Path(folder)
    return (
        (folder / HUB_CONFIG).is_file()
        and (folder / HUB_WEIGHTS).is_file()
        and not (folder / CHECKPOINT_META).is_file()  # a checkpoint's own metadata wins: it is the run's record
    )


def load_hub_folder(folder: str | os.PathLike, map_location: str = "cpu") -> tuple[DenseNet, CheckpointInfo]:
    """The model of a Hub-format folder, in eval mode, and what its config says; ``CheckpointError`` if unsound."""
    info = read_hub_info(folder)
    return model_from_safetensors(Path(folder), info.config, map_location), info


# ---------------------------------------------------------------------------------------------
# Downloads


def download(ref: HubRef, *, token: str | bool | None = None, trust_cache: bool = True) -> HubSnapshot:
    """The repository's ``config.json`` and ``model.safetensors`` in huggingface_hub's cache, and their commit.

    ``token``: the caller's (None: this machine's sign-in, ``HF_TOKEN`` or ``hf auth login``; False: none).
    The Hub is asked first, with ``token``, which commit the revision is, so a repository the caller may not
    read is refused even when someone else's download of it sits in the cache. ``trust_cache``: the cache holds
    this machine's own downloads, so a commit already there is used without asking, and when the Hub cannot be
    reached the cache answers for the revision (False on a shared server). Raises ``CheckpointError``.
    """
    if trust_cache and ref.pinned and (cached := from_cache(ref, ref.revision)) is not None:
        return cached
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        info = HfApi(endpoint=hub_endpoint()).model_info(
            ref.repo_id, revision=ref.revision, token=token, files_metadata=True
        )
    except network_errors() as e:
        cached = from_cache(ref, ref.revision or "main") if trust_cache else None
        if cached is None:
            raise CheckpointError(
                f"cannot reach the Hugging Face Hub ({hub_endpoint()}) to get {ref.repo_id}, and it is not in the "
                f"cache from an earlier download; check the network connection ({type(e).__name__})"
            ) from None
        return cached
    except HfHubHTTPError as e:
        raise CheckpointError(_download_refused(ref, e)) from None
    sizes = {s.rfilename: s.size for s in info.siblings or []}
    missing = [name for name in (HUB_CONFIG, HUB_WEIGHTS) if name not in sizes]
    if missing:
        raise CheckpointError(
            f"{ref.repo_id} has no {' and no '.join(missing)}: it is not a model pushed by densenet_demo "
            "(its Hub format is config.json + model.safetensors)"
        )
    if (sizes[HUB_WEIGHTS] or 0) > MAX_WEIGHTS_BYTES:
        raise CheckpointError(
            f"{ref.repo_id}'s {HUB_WEIGHTS} takes {sizes[HUB_WEIGHTS] / 2**20:.0f} MiB, more than the "
            f"{MAX_WEIGHTS_BYTES / 2**20:.0f} MiB a DenseNet of this project needs; not downloaded"
        )
    # By the revision's name first, so that the cache records which commit it names (an offline run finds it).
    config = fetch_file(HubRef(ref.repo_id, ref.revision or "main"), HUB_CONFIG, token)
    pinned = HubRef(ref.repo_id, config.parent.name if _COMMIT.match(config.parent.name) else info.sha)
    fetch_file(pinned, HUB_WEIGHTS, token)
    return HubSnapshot(config.parent, pinned)


def fetch_file(ref: HubRef, filename: str, token: str | bool | None) -> Path:
    """One file of the repository at ``ref``'s revision, in huggingface_hub's cache; ``CheckpointError`` if not."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(
            hf_hub_download(
                ref.repo_id,
                filename,
                revision=ref.revision,
                cache_dir=_cache_dir(),
                endpoint=hub_endpoint(),
                token=token,
            )
        )
    except LocalEntryNotFoundError:
        raise CheckpointError(f"the download of {ref.repo_id}'s {filename} broke off (network?); try again") from None
    except HfHubHTTPError as e:
        raise CheckpointError(_download_refused(ref, e)) from None
    except OSError as e:
        raise CheckpointError(f"cannot store {ref.repo_id}'s {filename} in the cache ({e.strerror or e})") from None


def from_cache(ref: HubRef, revision: str) -> HubSnapshot | None:
    """Both files of ``revision`` (a commit, or a name the cache has seen) from the cache alone (no network), or
    None when either is not there."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        paths = [
            Path(hf_hub_download(ref.repo_id, name, revision=revision, cache_dir=_cache_dir(), local_files_only=True))
            for name in (HUB_CONFIG, HUB_WEIGHTS)
        ]
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None
    folder = paths[0].parent
    return HubSnapshot(folder, HubRef(ref.repo_id, folder.name if _COMMIT.match(folder.name) else revision))


def _download_refused(ref: HubRef, error: Exception) -> str:
    """One plain sentence for an HTTP error of the Hub."""
    from huggingface_hub.errors import (
        GatedRepoError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(error, GatedRepoError):
        return f"{ref.repo_id} is gated: accept its conditions on the Hub with your account, then sign in and retry"
    if isinstance(error, RepositoryNotFoundError):
        return (
            f"no model {ref.repo_id} on the Hub, or it is private and you are not signed in as someone who may read it"
        )
    if isinstance(error, RevisionNotFoundError):
        return f"{ref.repo_id} has no revision {ref.revision!r}"
    if isinstance(error, RemoteEntryNotFoundError):
        return f"{ref.repo_id} lacks a file of the Hub format (config.json + model.safetensors)"
    status = getattr(getattr(error, "response", None), "status_code", "?")
    return f"the Hub refused to give {ref.repo_id} (HTTP {status}); try again later"
