"""DenseNet configurations as plain data: one frozen dataclass and the named presets.

DenseNet, DenseNet-B (bottleneck), DenseNet-C (compression) and DenseNet-BC are all one
``DenseNetConfig``: ``bn_size=0`` means no bottleneck, ``compression=1.0`` means no compression.
Paper: Huang et al., "Densely Connected Convolutional Networks", https://arxiv.org/abs/1608.06993
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .validation import check_choice, check_int, check_number, shown

__all__ = [
    "DenseNetConfig",
    "InputDefaults",
    "Preset",
    "PRESETS",
    "IMAGENET_PRESETS",
    "STEMS",
    "get_preset",
    "default_image_size",
    "input_defaults",
    "min_image_size",
    "spatial_size_after_stem",
    "transition_channels",
]

STEMS = ("imagenet", "cifar")

# Bounds keep a typo ("k=3200", "10**6 layers") from allocating a model that cannot fit in memory;
# they are far above every published DenseNet (DenseNet-BC L=250 has 41 layers per block).
MAX_GROWTH_RATE = 256
MAX_LAYERS_PER_BLOCK = 128
MAX_BLOCKS = 8
MAX_INIT_FEATURES = 1024
MAX_BN_SIZE = 16
MAX_NUM_CLASSES = 100_000

# Normalisation of the data each kind of model is trained on (ImageNet's is torchvision's weights' own).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
GRAY_MEAN = (0.5,)
GRAY_STD = (0.5,)
IMAGENET_CROP = 224 / 256  # ImageNet evaluation: shorter side to 256, centre crop 224


def transition_channels(channels: int, compression: float) -> int:
    """floor(θ·m): channels a transition keeps of its m inputs."""
    return int(math.floor(compression * channels))


@dataclass(frozen=True)
class DenseNetConfig:
    """Everything that defines a DenseNet.

    Args:
        growth_rate: k, channels each dense layer adds (paper: 12-48).
        block_config: number of dense layers in each dense block.
        num_init_features: channels produced by the stem (k0 of the first block).
        bn_size: bottleneck width factor; the 1x1 conv outputs ``bn_size * k`` channels.
            0 means no bottleneck (plain H_l = BN-ReLU-Conv3x3); 4 in the paper and torchvision.
        compression: θ, a transition keeps ``floor(θ * m)`` of its m input channels; 1.0 = none.
        drop_rate: dropout after each dense layer's new features (paper: 0.2 without augmentation).
        stem: ``imagenet`` (7x7/2 conv + BN-ReLU + 3x3/2 max-pool) or ``cifar`` (one 3x3 conv).
        in_channels: 3 for RGB, 1 for grayscale.
        num_classes: outputs of the classifier.
        memory_efficient: recompute concatenation + first BN-ReLU-conv in backward
            (Pleiss et al., https://arxiv.org/abs/1707.06990): linear instead of quadratic memory.
    """

    growth_rate: int = 32
    block_config: tuple[int, ...] = (6, 12, 24, 16)
    num_init_features: int = 64
    bn_size: int = 4
    compression: float = 0.5
    drop_rate: float = 0.0
    stem: str = "imagenet"
    in_channels: int = 3
    num_classes: int = 1000
    memory_efficient: bool = False

    def __post_init__(self) -> None:
        # JSON gives lists; the config must stay hashable (it keys the predictor cache).
        if isinstance(self.block_config, list):
            object.__setattr__(self, "block_config", tuple(self.block_config))
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field and its allowed range."""
        check_int("growth_rate", self.growth_rate, 1, MAX_GROWTH_RATE)
        if not isinstance(self.block_config, tuple) or not 1 <= len(self.block_config) <= MAX_BLOCKS:
            raise ValueError(
                f"block_config must be a list of 1 to {MAX_BLOCKS} layer counts, got {shown(self.block_config)}"
            )
        for i, n in enumerate(self.block_config):
            check_int(f"block_config[{i}]", n, 1, MAX_LAYERS_PER_BLOCK)
        check_int("num_init_features", self.num_init_features, 1, MAX_INIT_FEATURES)
        check_int("bn_size", self.bn_size, 0, MAX_BN_SIZE)
        check_number("compression", self.compression, 0.0, 1.0, low_open=True)
        check_number("drop_rate", self.drop_rate, 0.0, 1.0, high_open=True)
        check_choice("stem", self.stem, STEMS)
        if self.in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 (grayscale) or 3 (RGB), got {shown(self.in_channels)}")
        check_int("num_classes", self.num_classes, 1, MAX_NUM_CLASSES)
        if not isinstance(self.memory_efficient, bool):
            raise ValueError(f"memory_efficient must be true or false, got {shown(self.memory_efficient)}")
        # A transition must keep at least one channel, or the next block has no input.
        channels = self.num_init_features
        for i, n in enumerate(self.block_config[:-1]):
            channels = transition_channels(channels + n * self.growth_rate, self.compression)
            if channels < 1:
                raise ValueError(
                    f"compression {self.compression} leaves no channels after transition {i + 1}; "
                    "use a larger compression (0 < θ <= 1)"
                )

    @property
    def bottleneck(self) -> bool:
        return self.bn_size > 0

    @property
    def variant(self) -> str:
        """'DenseNet', 'DenseNet-B', 'DenseNet-C' or 'DenseNet-BC', as the paper names them."""
        suffix = ("B" if self.bottleneck else "") + ("C" if self.compression < 1.0 else "")
        return "DenseNet" + (f"-{suffix}" if suffix else "")

    @property
    def depth(self) -> int:
        """L as the paper counts it: convolutions and the classifier, transitions included."""
        convs_per_layer = 2 if self.bottleneck else 1
        return 1 + convs_per_layer * sum(self.block_config) + (len(self.block_config) - 1) + 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["block_config"] = list(self.block_config)
        return d

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DenseNetConfig:
        if not isinstance(data, dict):
            raise ValueError(f"a config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> DenseNetConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"config is not valid JSON: {e}") from None
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> DenseNetConfig:
        return replace(self, **changes)


@dataclass(frozen=True)
class InputDefaults:
    """The input a model is meant for, as timm's pretrained configs give it (input size, crop, mean/std)."""

    image_size: int  # side of the square the model sees
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float = 1.0  # image_size / the shorter side it is cut from (1.0: resize, no crop)

    def resize_size(self, image_size: int | None = None) -> int:
        """The shorter side before the centre crop, for ``image_size`` (default: this one's own)."""
        return round((image_size or self.image_size) / self.crop_pct)


@dataclass(frozen=True)
class Preset:
    """One named DenseNet: its architecture, what it is, whether ImageNet weights exist, its input defaults."""

    name: str
    config: DenseNetConfig
    summary: str
    imagenet_weights: bool = False  # torchvision publishes ImageNet-1k weights for exactly this architecture

    @property
    def input(self) -> InputDefaults:
        return input_defaults(self.config)

    @property
    def image_size(self) -> int:
        return self.input.image_size


def _imagenet(depth: int, growth_rate: int, blocks: tuple[int, ...], init: int) -> Preset:
    # Exactly torchvision's builders (models/densenet.py), and its ImageNet weights.
    cfg = DenseNetConfig(growth_rate=growth_rate, block_config=blocks, num_init_features=init)
    return Preset(f"densenet{depth}", cfg, f"DenseNet-{depth} (ImageNet, torchvision-compatible)", True)


def _cifar_plain(depth: int, k: int) -> Preset:
    # Paper, CIFAR: 3 blocks of (L-4)/3 BN-ReLU-Conv3x3 layers, a 16-channel 3x3 stem, no compression.
    n = (depth - 4) // 3
    cfg = DenseNetConfig(
        growth_rate=k,
        block_config=(n, n, n),
        num_init_features=16,
        bn_size=0,
        compression=1.0,
        stem="cifar",
        num_classes=10,
    )
    return Preset(f"densenet{depth}_k{k}", cfg, f"DenseNet L={depth}, k={k} (CIFAR, plain)")


def _cifar_bc(depth: int, k: int) -> Preset:
    # Paper, CIFAR DenseNet-BC: (L-4)/6 bottleneck layers per block (two convs each), 2k-channel stem, θ=0.5.
    n = (depth - 4) // 6
    cfg = DenseNetConfig(
        growth_rate=k,
        block_config=(n, n, n),
        num_init_features=2 * k,
        bn_size=4,
        compression=0.5,
        stem="cifar",
        num_classes=10,
    )
    return Preset(f"densenet_bc{depth}_k{k}", cfg, f"DenseNet-BC L={depth}, k={k} (CIFAR)")


# Small plain DenseNet for 1-channel images (e.g. Fashion-MNIST): 4 blocks of 4 BN-ReLU-3x3 layers.
_FASHION = Preset(
    "densenet_fashion",
    DenseNetConfig(
        growth_rate=32,
        block_config=(4, 4, 4, 4),
        num_init_features=64,
        bn_size=0,
        compression=0.5,
        stem="imagenet",
        in_channels=1,
        num_classes=10,
    ),
    "Small plain DenseNet for 1-channel images (4x4 layers, k=32)",
)

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        _imagenet(121, 32, (6, 12, 24, 16), 64),
        _imagenet(161, 48, (6, 12, 36, 24), 96),
        _imagenet(169, 32, (6, 12, 32, 32), 64),
        _imagenet(201, 32, (6, 12, 48, 32), 64),
        _cifar_plain(40, 12),
        _cifar_plain(100, 12),
        _cifar_plain(100, 24),
        _cifar_bc(100, 12),
        _cifar_bc(250, 24),
        _cifar_bc(190, 40),
        _FASHION,
    )
}

# A view of PRESETS: the presets with pretrained ImageNet weights.
IMAGENET_PRESETS = tuple(name for name, preset in PRESETS.items() if preset.imagenet_weights)


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


def spatial_size_after_stem(cfg: DenseNetConfig, image_size: int) -> int:
    if cfg.stem == "cifar":
        return image_size
    conv = (image_size + 2 * 3 - 7) // 2 + 1
    return (conv + 2 * 1 - 3) // 2 + 1


def min_image_size(cfg: DenseNetConfig) -> int:
    """Smallest square input for which the last block still sees at least 1x1 features."""
    size = 1
    while True:
        s = spatial_size_after_stem(cfg, size)
        for _ in cfg.block_config[:-1]:
            s //= 2
        if s >= 1:
            return size
        size += 1


def input_defaults(cfg: DenseNetConfig) -> InputDefaults:
    """The input a config is meant for, presets and custom configs alike.

    ImageNet stems: 224 crops of a 256 side with ImageNet's mean/std; CIFAR stems: 32x32. Grayscale models
    with an ImageNet stem (``densenet_fashion``) take small images such as Fashion-MNIST's 28x28, upscaled
    to 64 so that three transitions still leave 2x2 features. Never below ``min_image_size``.
    """
    smallest = min_image_size(cfg)
    if cfg.stem == "cifar":
        size = max(32, smallest)
    else:
        size = max(64 if cfg.in_channels == 1 else 224, smallest)
    if cfg.in_channels == 1:
        return InputDefaults(size, GRAY_MEAN, GRAY_STD)
    if cfg.stem == "cifar":
        return InputDefaults(size, CIFAR_MEAN, CIFAR_STD)
    return InputDefaults(size, IMAGENET_MEAN, IMAGENET_STD, IMAGENET_CROP)


def default_image_size(cfg: DenseNetConfig) -> int:
    """The input side a config is meant for (``input_defaults(cfg).image_size``)."""
    return input_defaults(cfg).image_size
