"""Which weights a model gets, and the model with them: one resolver, one loader.

``resolve(model, weights)`` turns a request (a preset, ``run:<id>``, ``hf-hub:USER/NAME``, a checkpoint or
Hub-format folder, or a config, with ``"default"``, ``"imagenet"``, ``"random"``, a state dict file or a folder)
into a ``WeightsSpec`` before anything is loaded; ``load_model`` builds what the spec names. The files
themselves are handled by ``checkpoints`` (this project's checkpoints and runs), ``hub`` (the Hugging Face Hub's
format, downloaded into huggingface_hub's cache) and ``pretrained`` (torchvision's ImageNet weights, other state
dict files).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import IMAGENET_PRESETS, PRESETS, DenseNetConfig, get_preset
from ..data.images import Preprocessing, default_preprocessing
from ..model import DenseNet
from . import hub
from .checkpoints import (
    CHECKPOINT_WEIGHTS,
    CheckpointError,
    find_run,
    load_checkpoint,
    new_run_id,
    published_dir,
    run_path,
    runs_dir,
    save_checkpoint,
    zip_checkpoint,
)
from .pretrained import (
    WeightsUnavailable,
    imagenet_categories,
    imagenet_file,
    imagenet_preset_for,
    load_imagenet_into,
    load_state_dict_file,
    load_weights_into,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT",
    "RANDOM_LABEL",
    "LoadedModel",
    "WeightsSpec",
    "default_weights",
    "resolve",
    "load_model",
    # The errors load_model raises, and the checkpoint calls the trainer and the Fine-tune tab make through
    # this module; their home is weights/checkpoints.py / weights/pretrained.py.
    "CheckpointError",
    "WeightsUnavailable",
    "CHECKPOINT_WEIGHTS",
    "new_run_id",
    "run_path",
    "save_checkpoint",
    "zip_checkpoint",
]

RANDOM_LABEL = "random init"  # the weights label of a model with random weights
DEFAULT = "default"  # the weights argument that lets the model decide (see ``default_weights``)
WEIGHTS_KINDS = ("imagenet", "random", "file", "checkpoint", "hub")


@dataclass(frozen=True)
class WeightsSpec:
    """What a (model, weights) request resolves to, before anything is loaded.

    ``kind`` is ``imagenet`` (torchvision's file for ``preset``), ``random``, ``file`` (a state dict at
    ``path``), ``checkpoint`` (this project's folder at ``path``, which records its own architecture) or ``hub``
    (a Hub-format folder at ``path``: ``config.json`` + ``model.safetensors``, local or downloaded).
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


def resolve(model: str | DenseNetConfig | WeightsSpec, weights: str | os.PathLike | None = DEFAULT) -> WeightsSpec:
    """``model`` (a preset, ``run:<id>``, ``hf-hub:USER/NAME[@REV]``, a folder or a config) and ``weights`` -> a
    ``WeightsSpec``.

    ``weights``: ``"default"`` (or ``None``/``""``: see ``default_weights``), ``"imagenet"``, ``"random"``, a
    ``.safetensors``/``.pth`` file, or a checkpoint or Hub-format folder (whose architecture then replaces
    ``model``'s). A folder or a Hub model as ``model`` brings its own weights; ``weights`` is then ignored.
    ``hf-hub:`` downloads the model first (``hub.download``: this machine's sign-in, the cache when offline). A
    ``WeightsSpec`` is returned as it is. Raises ``ValueError`` for an unknown preset or ImageNet weights that
    do not exist, ``CheckpointError`` for a Hub model that cannot be had.
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
    elif isinstance(model, str) and model.startswith(hub.HUB_PREFIX):
        snapshot = hub.download(hub.parse_hub_ref(model))
        return WeightsSpec(snapshot.ref.spec, "hub", path=snapshot.folder, version=_file_version(snapshot.folder))
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
    """A folder's spec: a Hub-format folder (``config.json``, no ``model.json``) or this project's checkpoint."""
    kind = "hub" if hub.is_hub_folder(folder) else "checkpoint"
    return WeightsSpec(model, kind, path=folder, version=_file_version(folder / CHECKPOINT_WEIGHTS))


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
    label: str  # 'ImageNet (torchvision IMAGENET1K_V1)', 'random init', 'fine-tuned run <id>', 'file <name>', 'Hub ...'
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
    elif spec.kind == "hub":
        net, info = hub.load_hub_folder(spec.path)
        names, preprocessing, label = info.class_names, info.preprocessing, _hub_label(spec)
    else:
        if spec.kind == "imagenet":
            net = DenseNet(spec.config.replace(num_classes=len(imagenet_categories(spec.preset))), generator=generator)
            try:
                load_imagenet_into(net, spec.preset)
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


def _hub_label(spec: WeightsSpec) -> str:
    """``Hub alice/cats @ 1a2b3c4`` for a downloaded model, ``Hub-format folder <name>`` for a local one."""
    if spec.model.startswith(hub.HUB_PREFIX):
        ref = hub.parse_hub_ref(spec.model)
        return f"Hub {ref.repo_id}" + (f" @ {ref.revision[:7]}" if ref.revision else "")
    return f"Hub-format folder {spec.path.name}"


def _generic_names(n: int) -> tuple[str, ...]:
    return tuple(f"class {i}" for i in range(n))
