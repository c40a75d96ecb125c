"""What the commands share: exit codes, the usage error, the training settings as flags, and fixed-width tables."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = [
    "EXIT_OK",
    "EXIT_PARTIAL",
    "EXIT_USAGE",
    "UsageError",
    "add_training_settings",
    "render",
    "training_settings",
]

EXIT_OK = 0
EXIT_PARTIAL = 1  # some inputs failed: one bad image among several, an export that failed its check
EXIT_USAGE = 2  # bad arguments or data


class UsageError(Exception):
    """Bad arguments or data: one line on stderr, exit code 2."""


def add_training_settings(p: argparse.ArgumentParser) -> None:
    """The training settings the Fine-tune tab has, under the same names (``training.settings``). A flag left out
    takes the shared default, which ``settings.config_from_settings`` fills in, as the page's handler does."""
    from ..training.settings import CHOICES, DEFAULTS, SETTING_HELP

    types = {"epochs": int, "lr": float, "label_smoothing": float, "batch_size": int, "early_stopping": int}
    types["bn_recalibration"] = int
    types |= {"val_fraction": float, "image_size": int, "seed": int, "time_budget": str}
    for name, default in DEFAULTS.items():
        flag, line = "--" + name.replace("_", "-"), SETTING_HELP[name].replace("%", "%%")
        shown = "the recipe's" if default is None else default
        text = line if "default:" in line else f"{line} (default: {shown})"
        if isinstance(default, bool):
            p.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=line)
        elif name in CHOICES:
            p.add_argument(flag, choices=CHOICES[name], default=argparse.SUPPRESS, help=text)
        else:
            p.add_argument(flag, type=types.get(name, str), default=argparse.SUPPRESS, help=text)


def training_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The training settings given as flags, by name (for ``settings.config_from_settings``)."""
    from ..training.settings import DEFAULTS

    return {name: getattr(args, name) for name in DEFAULTS if hasattr(args, name)}


def render(headers: list[str], groups: list[tuple[str, list[list[str]]]], fmt: str, left: set[int]) -> str:
    """Rows grouped under titles, as fixed-width text or one markdown table; ``left``: text columns."""
    titled = any(title for title, _ in groups)
    if fmt == "markdown":
        stage = ["stage"] if titled else []
        lines = ["| " + " | ".join([*stage, *headers]) + " |", "|" + "---|" * (len(stage) + len(headers))]
        lines += ["| " + " | ".join([title, *row][1 - titled :]) + " |" for title, rows in groups for row in rows]
        return "\n".join(lines)
    all_rows = [headers] + [row for _, rows in groups for row in rows]
    widths = [max(len(row[i]) for row in all_rows) for i in range(len(headers))]
    indent = "  " if titled else ""

    def line(row: list[str]) -> str:
        cells = [c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        return indent + "  ".join(cells).rstrip()

    out = [line(headers)]
    for title, rows in groups:
        out += [title] if title else []
        out += [line(row) for row in rows]
    return "\n".join(out)
