"""Range checks for settings: one wording for every "this value is not allowed" message.

Each check raises ``ValueError`` naming the field, what it must be and the value given (cut short, so a
million-entry list is not repeated back). ``optional=True`` lets ``None`` through ("use the default").
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

__all__ = ["check_choice", "check_int", "check_number", "shown"]


def shown(value: Any, limit: int = 60) -> str:
    """The offending value for an error message, cut short: a million-entry list is not repeated back."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 1]}… ({len(text):,} characters)"


def check_choice(name: str, value: Any, allowed: Iterable[str], *, optional: bool = False) -> None:
    """``value`` is one of ``allowed``: ``mode must be one of linear, finetune, scratch, got 'x'``."""
    allowed = tuple(allowed)
    if (value is None and optional) or value in allowed:
        return
    raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {shown(value)}")


def check_int(name: str, value: Any, low: int, high: int, *, optional: bool = False) -> None:
    """``low <= value <= high`` and a true integer (``True`` and ``3.0`` are refused)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer from {low} to {high}, got {shown(value)}")


def check_number(
    name: str,
    value: Any,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
) -> None:
    """A finite int or float within the bounds; ``low_open``/``high_open`` exclude that bound itself."""
    if value is None and optional:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lo = f"{low} <" if low_open else f"{low} <="
        hi = f"< {high}" if high_open else f"<= {high}"
        raise ValueError(f"{name} must be a number with {lo} {name} {hi}, got {shown(value)}")
