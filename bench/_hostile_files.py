"""The files bench/soak.py's users upload: a photo, and text named .jpg, an empty file, a decompression bomb
and a zip with ``../`` entries."""

from __future__ import annotations

import struct
import zipfile
import zlib
from pathlib import Path

from PIL import Image

__all__ = ["hostile_files"]


def hostile_files(folder: Path) -> dict[str, Path]:
    """A good photo and the junk a stranger uploads, written into ``folder``: name -> file."""
    Image.new("RGB", (224, 224), (40, 150, 90)).save(folder / "photo.jpg", quality=90)
    (folder / "text.jpg").write_text("a shopping list, not a photo")
    (folder / "empty.png").write_bytes(b"")
    (folder / "bomb.png").write_bytes(_png_header_bomb(40_000))
    with zipfile.ZipFile(folder / "traversal.zip", "w") as zf:
        zf.writestr(zipfile.ZipInfo("../../escape.png"), b"x")
        zf.writestr(zipfile.ZipInfo("circle/a.png"), b"x")
    names = {"photo": "photo.jpg", "text": "text.jpg", "empty": "empty.png", "bomb": "bomb.png"}
    return {"traversal": folder / "traversal.zip", **{k: folder / v for k, v in names.items()}}


def _png_header_bomb(side: int) -> bytes:
    """A PNG whose header claims side x side pixels (1.6 gigapixels at 40,000): refused from the header alone."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1024))
        + chunk(b"IEND", b"")
    )
