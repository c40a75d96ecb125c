"""Numbers for people: ``7978856`` -> ``7.98M``, bytes -> MiB. Shared by the command line and the web page."""

from __future__ import annotations

__all__ = ["format_bytes", "mib", "percent", "si"]


def si(value: float, digits: int = 2, sep: str = "") -> str:
    """``7978856`` -> ``'7.98M'``, ``2.834e9`` with ``digits=3, sep=' '`` -> ``'2.834 G'``; below 1000 as is."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.{digits}f}{sep}{suffix}"
    return f"{value:.0f}"


def mib(n_bytes: float, digits: int = 2) -> str:
    """Bytes as mebibytes (2**20), without the unit: ``'12.25'``."""
    return f"{n_bytes / 2**20:.{digits}f}"


def percent(p: float) -> str:
    """A probability for people, with the digits that tell it apart from 0: ``0.973`` -> ``'97%'``, ``0.034`` ->
    ``'3.4%'``, ``0.00123`` -> ``'0.12%'``, below 0.01% ``'<0.01%'`` (random weights spread 1000 classes thin)."""
    if p >= 0.1 or p == 0:
        return f"{p:.0%}"
    if p >= 0.01:
        return f"{p:.1%}"
    if p >= 0.0001:
        return f"{p:.2%}"
    return "<0.01%"


def format_bytes(n_bytes: float) -> str:
    """Bytes for people, in powers of 1024: ``3211264`` -> ``'3.06 MiB'``, ``512`` -> ``'512 B'``."""
    for scale, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(n_bytes) >= scale:
            return f"{n_bytes / scale:.2f} {suffix}"
    return f"{n_bytes:.0f} B"
