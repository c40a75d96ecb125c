"""Safe image decoding and the transforms.

Every upload goes through ``decode_image``: a format allowlist (no EPS or other formats that run
external programs, whatever the file is named), a pixel cap of our own against decompression bombs,
truncated files refused (``LOAD_TRUNCATED_IMAGES`` stays off), EXIF orientation applied, and every
mode (palette, 1-bit, 16-bit, CMYK, transparency) turned into plain RGB or L.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..config import DenseNetConfig, input_defaults

if tuple(int(p) for p in PIL.__version__.split(".")[:2]) < (12, 3):
    raise ImportError(f"densenet_demo needs Pillow >= 12.3 (image decoder security fixes); found {PIL.__version__}")

__all__ = [
    "ALLOWED_FORMATS",
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
    "ImageError",
    "ImageSource",
    "Preprocessing",
    "decode_image",
    "default_preprocessing",
]

# Formats a photo or dataset image comes in. EPS (runs Ghostscript) and exotic formats are refused.
# JPEG includes multi-picture (MPO) files from phones and cameras.
ALLOWED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".jfif", ".gif", ".bmp", ".webp", ".tif", ".tiff")
# 64 megapixels: above any phone photo (a 50 MP sensor), well below what exhausts memory (~200 MB as RGB).
MAX_PIXELS = 64_000_000
# Pillow's own bomb check warns at MAX_IMAGE_PIXELS; make it agree with ours and treat it as an error.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
# A truncated file is an error to report, not an image to pad with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageError(ValueError):
    """An upload that is not a usable image; the message names the file and says why."""


ImageSource = str | os.PathLike | bytes | bytearray | io.IOBase | Image.Image | np.ndarray


def decode_image(
    source: ImageSource,
    *,
    mode: str = "RGB",
    name: str | None = None,
    draft_size: int | None = None,
    max_pixels: int = MAX_PIXELS,
) -> Image.Image:
    """Decode an upload (path, bytes, file object, PIL image or numpy array) into a loaded RGB or L image.

    ``draft_size`` lets JPEG decoding skip detail a model of that input size would throw away
    (a 6000x4000 photo decodes at 1/8 scale in a fraction of the time).
    Raises ``ImageError`` naming the file for empty, truncated, corrupt, oversized or non-image data.
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    label = name or _describe(source)
    if isinstance(source, np.ndarray):
        return _decode(_from_array(source, label), mode, label, draft_size, max_pixels)
    if isinstance(source, Image.Image):
        return _decode(source, mode, label, draft_size, max_pixels)
    # Leaving the with-block closes the file even for animated images, whose file Pillow keeps open.
    with _open(source, label) as image:
        return _decode(image, mode, label, draft_size, max_pixels)


def _decode(image: Image.Image, mode: str, label: str, draft_size: int | None, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if image.width * image.height > max_pixels:
                raise ImageError(
                    f"{label}: {image.width}x{image.height} pixels is over the limit of {max_pixels:,}; "
                    "resize it before uploading"
                )
            if getattr(image, "is_animated", False):
                image.seek(0)  # animated GIF/WebP/APNG: the first frame
            if draft_size and image.format in ("JPEG", "MPO"):
                image.draft("RGB" if mode == "RGB" else "L", (draft_size, draft_size))
            image.load()
            image = _apply_exif_orientation(image)
            return _to_mode(image, mode, label)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{label}: refused as a decompression bomb ({e})") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as e:
        raise ImageError(f"{label}: the image data is corrupt or truncated ({e})") from None


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return Path(source).name
    return getattr(source, "name", None) or f"<{type(source).__name__}>"


def _open(source: ImageSource, label: str) -> Image.Image:
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageError(f"{label}: the file is empty")
        fp: Any = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"{label}: no such file")
        if path.stat().st_size == 0:
            raise ImageError(f"{label}: the file is empty")
        fp = path
    else:
        fp = source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(fp, formats=list(ALLOWED_FORMATS))
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not an image in a supported format ({', '.join(ALLOWED_FORMATS)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{label}: refused as a decompression bomb ({e})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageError(f"{label}: cannot be read as an image ({e})") from None


def _from_array(array: np.ndarray, label: str) -> Image.Image:
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)) or a.size == 0:
        raise ImageError(f"{label}: an array image must be HxW, HxWx3 or HxWx4, got shape {a.shape}")
    if a.dtype == np.uint16:
        a = (a / 257.0).round().astype(np.uint8)
    elif a.dtype.kind == "f":
        a = np.clip(np.nan_to_num(a), 0.0, 1.0 if a.max(initial=0) <= 1.0 else 255.0)
        a = (a * (255.0 if a.max(initial=0) <= 1.0 else 1.0)).round().astype(np.uint8)
    elif a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    return Image.fromarray(a)


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except (OSError, ValueError, KeyError, TypeError, SyntaxError, struct.error):
        # A broken EXIF block must not cost the user their image: keep the pixels as stored.
        return image


def _to_mode(image: Image.Image, mode: str, label: str) -> Image.Image:
    """Any Pillow mode -> RGB or L, with 16-bit data scaled (not clipped) and transparency on white."""
    m = image.mode
    if m in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(image, dtype=np.float64)
        top = 65535.0 if m.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(a / top * 255.0, 0, 255).round().astype(np.uint8), "L")
    elif m == "F":
        a = np.nan_to_num(np.asarray(image, dtype=np.float64))
        lo, hi = float(a.min(initial=0)), float(a.max(initial=0))
        scaled = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        image = Image.fromarray(scaled.round().astype(np.uint8), "L")
    elif m == "1":
        image = image.convert("L")
    elif m == "P" or m == "PA":
        image = image.convert("RGBA") if (m == "PA" or "transparency" in image.info) else image.convert("RGB")
    elif m == "L" and "transparency" in image.info:
        image = image.convert("LA")
    elif m == "RGB" and "transparency" in image.info:
        image = image.convert("RGBA")

    if image.mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode not in ("RGB", "L"):
        try:
            image = image.convert("RGB")  # CMYK, YCbCr, LAB, HSV
        except ValueError as e:
            raise ImageError(f"{label}: unsupported colour mode {image.mode!r} ({e})") from None
    return image if image.mode == mode else image.convert(mode)


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a model input; recorded in every checkpoint so predictions match training."""

    image_size: int  # side of the square crop the model sees
    resize_size: int  # shorter side before the centre crop (== image_size: no crop)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_channels: int = 3

    @property
    def mode(self) -> str:
        return "L" if self.in_channels == 1 else "RGB"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        return cls(
            image_size=int(data["image_size"]),
            resize_size=int(data.get("resize_size", data["image_size"])),
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
            in_channels=int(data.get("in_channels", len(data["mean"]))),
        )

    def with_image_size(self, image_size: int) -> Preprocessing:
        ratio = self.resize_size / self.image_size
        return Preprocessing(image_size, round(image_size * ratio), self.mean, self.std, self.in_channels)

    def view(self, image: Image.Image) -> Image.Image:
        """What the model sees of a decoded image: shorter side resized, then the centre crop."""
        from torchvision.transforms.v2 import functional as TF

        if image.mode != self.mode:
            image = image.convert(self.mode)
        image = TF.resize(image, [self.resize_size], antialias=True)
        return TF.center_crop(image, [self.image_size, self.image_size])

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        """Eval transform of one decoded image: resize shorter side, centre crop, normalise -> (C, H, W).

        The arithmetic is torchvision's ToTensor + Normalize, done in NumPy: torch would wake its thread pool for
        these few element-wise passes, and its threads, spinning afterwards, slow an onnxruntime forward pass
        that follows (DenseNet-121, 2 cores: 63 -> 40 ms per image)."""
        pixels = np.asarray(self.view(image), dtype=np.float32).reshape(self.image_size, self.image_size, -1)
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        chw = ((pixels / np.float32(255.0) - mean) / std).transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(chw))

    def train_transform(self, augment: str | bool = "flip"):
        """A torchvision transform for training: ``none``; ``light`` (random resized crops, 80-100% of the image);
        ``flip`` (crops of 60-100% and horizontal flips, for photos whose mirror image is the same class)."""
        from torchvision.transforms import v2

        augment = {True: "flip", False: "none"}.get(augment, augment)
        if augment == "none":
            return self.to_tensor
        if augment not in ("light", "flip"):
            raise ValueError(f"augment must be none, light or flip, got {augment!r}")
        flip = augment == "flip"
        crop = v2.RandomResizedCrop(
            self.image_size, scale=(0.6, 1.0) if flip else (0.8, 1.0), ratio=(3 / 4, 4 / 3) if flip else (0.9, 1.1)
        )
        return v2.Compose(
            [
                crop,
                *([v2.RandomHorizontalFlip()] if flip else []),
                v2.PILToTensor(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(list(self.mean), list(self.std)),
            ]
        )


def default_preprocessing(cfg: DenseNetConfig, image_size: int | None = None) -> Preprocessing:
    """The config's own input defaults (``config.input_defaults``) as a transform, optionally at another size."""
    defaults = input_defaults(cfg)
    size = image_size or defaults.image_size
    return Preprocessing(size, defaults.resize_size(size), defaults.mean, defaults.std, cfg.in_channels)
