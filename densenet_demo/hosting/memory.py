"""The process's memory: how much it holds (RSS), and handing freed memory back to the system after a run.

A training run allocates and frees gigabytes in a worker thread. glibc's malloc keeps freed blocks in its
arenas (one per thread that allocated) for reuse, so a server's resident memory ratchets up run after run
although nothing holds the tensors any more; ``malloc_trim(0)`` returns those free pages to the system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import logging
import sys

import torch

__all__ = ["release_freed_memory", "rss_bytes"]

logger = logging.getLogger(__name__)


def rss_bytes() -> int | None:
    """This process's resident memory (VmRSS) in bytes; None where /proc is not there (not Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@functools.cache
def _malloc_trim():  # the C function, or None when the C library is not glibc (musl, macOS, Windows)
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Collect garbage, then give freed memory back: the CUDA cache, and glibc's free pages (``malloc_trim``)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
