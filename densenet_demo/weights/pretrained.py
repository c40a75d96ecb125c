"""Weights from elsewhere: torchvision's ImageNet weights and any local state dict file.

- ImageNet weights for the four ImageNet presets come from torchvision's weight enums, downloaded once
  into ``weights_dir()``; offline, ``WeightsUnavailable`` names the file to place there by hand.
- Local files: ``.safetensors``, or ``.pth``/``.pt`` read with ``torch.load(weights_only=True)`` (tensors
  only; a pickle that would run code is refused). Legacy torchvision keys and ``module.`` prefixes are
  renamed, and a mismatch is reported key by key with both shapes.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..config import IMAGENET_PRESETS, PRESETS, DenseNetConfig
from ..model import DenseNet
from .checkpoints import CheckpointError, atomic_write, weights_dir

if tuple(int(p) for p in re.findall(r"\d+", torch.__version__)[:2]) < (2, 10):
    # torch.load(weights_only=True) is the only thing standing between a .pth upload and arbitrary code.
    raise ImportError(f"densenet_demo needs torch >= 2.10 (weights_only unpickler fixes); found {torch.__version__}")

__all__ = [
    "WeightsUnavailable",
    "WEIGHT_FILE_SUFFIXES",
    "imagenet_preset_for",
    "imagenet_weights",
    "imagenet_file",
    "imagenet_categories",
    "load_imagenet_state_dict",
    "load_imagenet_into",
    "download_file",
    "imagenet_can_be_had",
    "download_failure",
    "load_state_dict_file",
    "remap_legacy_keys",
    "load_weights_into",
]

DOWNLOAD_TIMEOUT_S = 60.0  # connecting, and each wait for data, when downloading ImageNet weights


class WeightsUnavailable(CheckpointError):
    """Pretrained weights that cannot be had (offline, failed download, broken cached file).

    The message names the file to place in ``weights_dir()`` and the URL it comes from.
    """


WEIGHT_FILE_SUFFIXES = (".safetensors", ".pth", ".pt")
# Old torchvision checkpoints (the ImageNet files among them) name dense-layer modules 'norm.1', 'conv.2';
# '.' is no longer allowed in module names, so today they are 'norm1', 'conv2' (torchvision _load_state_dict).
_LEGACY_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


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
                f"could not download the ImageNet weights for {model_name} ({download_failure(e)}). "
                f"{_how_to_place(model_name)}"
            ) from None
    try:
        return load_state_dict_file(path)
    except CheckpointError as e:
        raise WeightsUnavailable(
            f"the cached ImageNet weights are unreadable ({e}). {_how_to_place(model_name)}"
        ) from None


_REACHABLE: dict[str, tuple[float, bool]] = {}  # url -> (when asked, answer): asked once in a while, not per call
_REACHABLE_TTL_S = 600.0


def imagenet_can_be_had(model_name: str, timeout_s: float = 3.0) -> bool:
    """Whether a preset's ImageNet weights are here or can be downloaded now: the cached file, else a quick HEAD
    request to their URL (the answer is kept for ten minutes). Never raises; offline it answers False."""
    path = imagenet_file(model_name)
    if path.is_file():
        return True
    url = imagenet_weights(model_name).url
    asked = _REACHABLE.get(url)
    if asked is not None and time.monotonic() - asked[0] < _REACHABLE_TTL_S:
        return asked[1]
    try:
        request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "densenet_demo"})
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            answer = 200 <= response.status < 400
    except (OSError, ValueError):  # no network, DNS, timeouts, HTTP errors
        answer = False
    _REACHABLE[url] = (time.monotonic(), answer)
    return answer


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


def download_failure(error: BaseException) -> str:
    """Why a download failed, in words (not ``<urlopen error [Errno -3] ...>``)."""
    if isinstance(error, urllib.error.HTTPError):
        return f"the server answered HTTP {error.code} {error.reason}"
    reason = getattr(error, "reason", error)
    if isinstance(reason, TimeoutError) or isinstance(error, TimeoutError) or "timed out" in str(reason):
        return "the connection timed out"
    if isinstance(reason, socket.gaierror) or isinstance(error, urllib.error.URLError):
        return "no network connection: the download server could not be reached"
    if isinstance(error, RuntimeError):
        return str(error)
    return getattr(error, "strerror", None) or str(error)


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


def load_imagenet_into(model: DenseNet, preset: str) -> None:
    try:
        load_weights_into(model, load_imagenet_state_dict(preset))
    except WeightsUnavailable:
        raise
    except CheckpointError as e:
        name = imagenet_file(preset).name
        raise WeightsUnavailable(f"{name} is not {preset}'s ImageNet file ({e}). {_how_to_place(preset)}") from None
