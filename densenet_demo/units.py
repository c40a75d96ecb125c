"""Numbers for people: ``7978856`` -> ``7.98M``, bytes -> MiB. Shared by the command line and the web page."""

from __future__ import annotations

__all__ = ["mib", "si"]


def si(value: float, digits: int = 2, sep: str = "") -> str:
    """``7978856`` -> ``'7.98M'``, ``2.834e9`` with ``digits=3, sep=' '`` -> ``'2.834 G'``; below 1000 as is."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.{digits}f}{sep}{suffix}"
    return f"{value:.0f}"


def mib(n_bytes: float, digits: int = 2) -> str:
    """Bytes as mebibytes (2**20), without the unit: ``'12.25'``."""
    return f"{n_bytes / 2**20:.{digits}f}"
