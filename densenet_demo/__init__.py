"""densenet_demo: DenseNet made tangible (classify, fine-tune, read the architecture)."""

from .config import PRESETS, DenseNetConfig
from .model import DenseNet

__all__ = ["DenseNet", "DenseNetConfig", "PRESETS"]
__version__ = "0.1.0"
