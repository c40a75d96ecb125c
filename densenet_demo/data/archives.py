"""Safe zip extraction: nothing lands outside the target folder; zip bombs are refused before anything is written."""

from __future__ import annotations

import os
import stat
import zipfile
import zlib
from pathlib import Path

__all__ = [
    "DatasetError",
    "safe_extract_zip",
    "safe_parts",
    "MAX_ZIP_BYTES",
    "MAX_ZIP_ENTRIES",
    "MAX_ZIP_RATIO",
]

# Zip limits. A dataset of a few thousand photos is well under them; a zip bomb (a small file that
# inflates to gigabytes, typically at ratios over 1000:1) is far over them. Photos barely compress
# (JPEG/PNG are compressed already), so a ratio of 100 is generous for real data.
MAX_ZIP_BYTES = 2 * 1024**3
MAX_ZIP_ENTRIES = 50_000
MAX_ZIP_RATIO = 100.0
# Tiny files compress extremely well (an all-white 1 KB BMP); only entries above this size are held to the ratio.
_RATIO_MIN_BYTES = 1024 * 1024


class DatasetError(ValueError):
    """A dataset that cannot be used; the message says what was found and what is needed."""

    # Defined here, below data/datasets.py, because a refused zip is the first way an upload can be unusable.


def safe_extract_zip(
    zip_path: str | os.PathLike,
    target_dir: str | os.PathLike,
    *,
    max_total_bytes: int = MAX_ZIP_BYTES,
    max_entries: int = MAX_ZIP_ENTRIES,
    max_ratio: float = MAX_ZIP_RATIO,
) -> list[Path]:
    """Extract a zip into ``target_dir`` after checking every entry; returns the files written.

    Refused before anything is written: entries with ``..``, absolute or drive paths, symbolic links,
    encryption; more than ``max_entries`` entries, more than ``max_total_bytes`` uncompressed, or an
    entry inflating more than ``max_ratio`` times. Sizes are enforced again while inflating (a zip can
    lie about them); a violation then removes what this call wrote.
    """
    zip_path, target = Path(zip_path), Path(target_dir)
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DatasetError(f"{zip_path.name}: not a readable zip file ({e})") from None
    with archive:
        plan = _plan_extraction(archive, zip_path.name, max_total_bytes, max_entries, max_ratio)
        target.mkdir(parents=True, exist_ok=True)
        root = target.resolve()
        written: list[Path] = []
        try:
            budget = max_total_bytes
            for info, parts in plan:
                dest = root.joinpath(*parts)
                if not dest.resolve().is_relative_to(root):  # a folder in the target that is a symlink
                    raise DatasetError(f"zip entry {info.filename!r} points outside the upload; rejected")
                if info.is_dir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                budget -= _copy_limited(archive, info, dest, budget, zip_path.name)
                written.append(dest)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as e:
            _remove(written)
            raise DatasetError(f"{zip_path.name}: cannot be extracted ({e})") from None
        except BaseException:
            _remove(written)
            raise
    return written


def _remove(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _plan_extraction(
    archive: zipfile.ZipFile, name: str, max_total_bytes: int, max_entries: int, max_ratio: float
) -> list[tuple[zipfile.ZipInfo, tuple[str, ...]]]:
    infos = archive.infolist()
    if len(infos) > max_entries:
        raise DatasetError(f"{name}: {len(infos):,} entries is over the limit of {max_entries:,}; rejected")
    total = sum(info.file_size for info in infos)
    if total > max_total_bytes:
        raise DatasetError(
            f"{name}: unpacks to {total / 2**20:,.0f} MB, over the limit of {max_total_bytes / 2**20:,.0f} MB; rejected"
        )
    compressed = sum(info.compress_size for info in infos)
    if total > _RATIO_MIN_BYTES and total > max_ratio * max(compressed, 1):
        raise DatasetError(
            f"{name}: inflates {total / max(compressed, 1):,.0f} times (limit {max_ratio:g}); rejected as a zip bomb"
        )
    plan = []
    for info in infos:
        parts = safe_parts(info.filename)
        if parts is None:
            raise DatasetError(f"zip entry {info.filename!r} points outside the upload; rejected")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DatasetError(f"zip entry {info.filename!r} is a symbolic link; rejected")
        if info.flag_bits & 0x1:
            raise DatasetError(f"zip entry {info.filename!r} is encrypted; upload a zip without a password")
        if info.file_size > _RATIO_MIN_BYTES and info.file_size > max_ratio * max(info.compress_size, 1):
            raise DatasetError(
                f"zip entry {info.filename!r} inflates {info.file_size / max(info.compress_size, 1):,.0f} times "
                f"(limit {max_ratio:g}); rejected as a zip bomb"
            )
        if parts:
            plan.append((info, parts))
    return plan


def safe_parts(name: str) -> tuple[str, ...] | None:
    """The path components of an archive or upload name, or None when it could leave its folder."""
    normalised = name.replace("\\", "/")
    if normalised.startswith("/") or (len(normalised) > 1 and normalised[1] == ":"):
        return None
    parts = tuple(p for p in normalised.split("/") if p not in ("", "."))
    if any(p == ".." for p in parts) or any("\x00" in p for p in parts):
        return None
    return parts


def _copy_limited(archive: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, budget: int, name: str) -> int:
    """Inflate one entry, stopping as soon as it exceeds its declared size or the remaining budget."""
    limit = min(info.file_size, budget)
    written = 0
    with archive.open(info) as src, open(dest, "wb") as out:
        while chunk := src.read(1 << 20):
            written += len(chunk)
            if written > limit:
                out.close()
                dest.unlink(missing_ok=True)
                raise DatasetError(f"{name}: entry {info.filename!r} inflates beyond its declared size; rejected")
            out.write(chunk)
    return written
