"""decode_image: every odd kind of upload is decoded correctly or refused with an ImageError naming it."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from densenet_demo.config import PRESETS
from densenet_demo.data.images import ImageError, Preprocessing, decode_image, default_preprocessing


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a size in its header but carries almost no data (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
    )


# ---------------------------------------------------------------------------------------------
# Decoded correctly


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), "white")
    image.paste((255, 0, 0), (0, 0, 10, 20))  # red band on the left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = decode_image(_encode(image, "JPEG", exif=exif, quality=95))
    assert out.size == (20, 40)
    r, g, b = out.getpixel((10, 2))  # the left band is now at the top
    assert r > 200 and g < 60 and b < 60


def test_palette_with_transparency_is_composited_on_white():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.putpixel((0, 0), 1)
    out = decode_image(_encode(image, "PNG", transparency=0))
    assert out.mode == "RGB"
    assert out.getpixel((3, 3)) == (255, 255, 255)  # transparent black -> white
    assert out.getpixel((0, 0)) == (255, 0, 0)


def test_la_is_composited_on_white():
    image = Image.new("LA", (2, 1))
    image.putpixel((0, 0), (0, 0))  # black, fully transparent
    image.putpixel((1, 0), (0, 255))  # black, opaque
    out = decode_image(_encode(image, "PNG"), mode="L")
    assert out.mode == "L"
    assert out.getpixel((0, 0)) == 255 and out.getpixel((1, 0)) == 0


def test_rgba_is_composited_on_white():
    image = Image.new("RGBA", (3, 1))
    image.putpixel((0, 0), (255, 0, 0, 0))
    image.putpixel((1, 0), (255, 0, 0, 255))
    image.putpixel((2, 0), (0, 0, 0, 128))
    out = decode_image(_encode(image, "PNG"))
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (255, 0, 0)
    assert all(120 <= v <= 135 for v in out.getpixel((2, 0)))  # half black on white: mid grey


def test_cmyk_jpeg_becomes_rgb():
    image = Image.new("CMYK", (8, 8), (255, 0, 0, 0))  # pure cyan ink
    out = decode_image(_encode(image, "JPEG", quality=95))
    r, g, b = out.getpixel((4, 4))
    assert out.mode == "RGB" and r < 40 and g > 200 and b > 200


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_grayscale_is_scaled_not_clipped(fmt):
    array = np.array([[0, 32768, 65535]], dtype=np.uint16)
    encoded = _encode(Image.fromarray(array), fmt)
    assert Image.open(io.BytesIO(encoded)).mode.startswith("I;16")
    out = decode_image(encoded, mode="L")
    assert [out.getpixel((x, 0)) for x in range(3)] == [0, 128, 255]


def test_16_bit_rgb_png_becomes_8_bit_rgb():
    # Pillow has no 16-bit RGB mode; a 48-bit PNG arrives as RGB with each sample's high byte.
    array = np.zeros((2, 2, 3), dtype=">u2")
    array[0, 0] = (65535, 0, 32768)
    raw = b"".join(b"\x00" + row.tobytes() for row in array)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 16, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    out = decode_image(png)
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 0, 128)


def test_one_bit_image_becomes_black_and_white():
    image = Image.new("1", (2, 1), 0)
    image.putpixel((1, 0), 1)
    out = decode_image(_encode(image, "PNG"))
    assert out.getpixel((0, 0)) == (0, 0, 0) and out.getpixel((1, 0)) == (255, 255, 255)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animated_image_gives_its_first_frame(fmt, tmp_path):
    frames = [Image.new("RGB", (8, 8), color) for color in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / f"anim.{fmt.lower()}"
    frames[0].save(path, fmt, save_all=True, append_images=frames[1:], **({"lossless": True} if fmt == "WEBP" else {}))
    assert Image.open(path).n_frames == 2
    r, g, b = decode_image(path).getpixel((4, 4))
    assert r > 200 and b < 60


def test_grayscale_model_gets_one_channel_from_rgb():
    out = decode_image(_encode(Image.new("RGB", (4, 4), (255, 0, 0)), "PNG"), mode="L")
    assert out.mode == "L" and out.getpixel((0, 0)) == 76  # ITU-R 601 luma of pure red


@pytest.mark.parametrize(
    "array, expected",
    [
        (np.full((2, 3, 3), 200, np.uint8), (200, 200, 200)),
        (np.full((2, 3), 0.5, np.float32), (128, 128, 128)),
        (np.full((2, 3, 3), 65535, np.uint16), (255, 255, 255)),
        (np.ones((2, 3), bool), (255, 255, 255)),
        (np.dstack([np.zeros((2, 3, 3), np.uint8), np.zeros((2, 3, 1), np.uint8)]), (255, 255, 255)),
    ],
    ids=["uint8-rgb", "float-gray", "uint16-rgb", "bool", "rgba-transparent"],
)
def test_numpy_arrays(array, expected):
    assert decode_image(array).getpixel((0, 0)) == expected


def test_pil_image_in_an_odd_mode():
    assert decode_image(Image.new("F", (2, 2), 3.5)).mode == "RGB"
    assert decode_image(Image.new("I;16", (2, 2), 65535), mode="L").getpixel((0, 0)) == 255


def test_path_string_and_file_object(tmp_path):
    path = tmp_path / "red.bmp"
    Image.new("RGB", (5, 5), (255, 0, 0)).save(path)
    assert decode_image(str(path)).getpixel((0, 0)) == (255, 0, 0)
    with open(path, "rb") as f:
        assert decode_image(f).size == (5, 5)


def test_draft_decodes_a_large_jpeg_at_reduced_size():
    encoded = _encode(Image.new("RGB", (2048, 1536), (0, 128, 0)), "JPEG")
    out = decode_image(encoded, draft_size=256)
    assert min(out.size) >= 256 and out.size[0] <= 512  # 1/4 scale: still at least 256 on the short side


# ---------------------------------------------------------------------------------------------
# Refused with an ImageError that names the file


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty"),
        (b"this is a text file, not a picture\n", "not an image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20, "cannot be read"),
    ],
    ids=["empty", "text", "corrupt-png"],
)
def test_bad_files_are_refused_with_their_name(tmp_path, content, reason):
    path = tmp_path / "holiday.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=r"holiday\.jpg") as error:
        decode_image(path)
    assert reason in str(error.value)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image_is_refused(fmt):
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    encoded = _encode(noise, fmt)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(ImageError, match="cut.png"):
        decode_image(encoded[: len(encoded) // 2], name="cut.png")


def test_eps_is_refused_whatever_its_name(tmp_path):
    path = tmp_path / "picture.png"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(ImageError, match="picture.png: not an image in a supported format"):
        decode_image(path)


def test_pixel_limit_of_our_own():
    with pytest.raises(ImageError, match="over the limit"):
        decode_image(_encode(Image.new("RGB", (100, 100)), "PNG"), max_pixels=5_000)


@pytest.mark.parametrize("size", [(9_000, 8_000), (20_000, 20_000)], ids=["warning-size", "error-size"])
def test_decompression_bomb_is_refused_before_decoding(size):
    with pytest.raises(ImageError, match="bomb.png") as error:
        decode_image(_png_header_only(*size), name="bomb.png")
    assert "bomb" in str(error.value) or "limit" in str(error.value)


def test_bad_array_shape_is_refused():
    with pytest.raises(ImageError, match="HxW"):
        decode_image(np.zeros((4, 4, 2), np.uint8))


# ---------------------------------------------------------------------------------------------
# Transforms


def test_default_preprocessing_uses_each_presets_native_size():
    assert default_preprocessing(PRESETS["densenet121"].config).image_size == 224
    assert default_preprocessing(PRESETS["densenet121"].config).resize_size == 256
    assert default_preprocessing(PRESETS["densenet40_k12"].config).image_size == 32
    fashion = default_preprocessing(PRESETS["densenet_fashion"].config)
    assert (fashion.image_size, fashion.in_channels) == (64, 1)
    # A 28x28 Fashion-MNIST image is upscaled to the model's 64x64 input.
    assert fashion.to_tensor(Image.new("L", (28, 28), 255)).shape == (1, 64, 64)


def test_preprocessing_round_trips_through_a_dict():
    p = Preprocessing(160, 182, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6), 3)
    assert Preprocessing.from_dict(p.to_dict()) == p
    assert p.to_tensor(Image.new("RGB", (300, 200))).dtype == torch.float32


@pytest.mark.parametrize("mode, channels", [("RGB", 3), ("L", 1)])
def test_eval_tensor_is_torchvisions_to_tensor_and_normalize_to_the_bit(mode, channels):
    from torchvision.transforms.v2 import functional as TF

    p = Preprocessing(64, 73, (0.485, 0.456, 0.406)[:channels], (0.229, 0.224, 0.225)[:channels], channels)
    pixels = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    expected = TF.normalize(TF.pil_to_tensor(p.view(image)).float().div_(255.0), list(p.mean), list(p.std))
    got = p.to_tensor(image)
    assert got.shape == (channels, 64, 64) and got.dtype == torch.float32 and got.is_contiguous()
    assert torch.equal(got, expected)
