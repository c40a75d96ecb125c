"""Command line: ``python -m densenet_demo presets|arch|predict|train|review|export|push ...``.

The same engine as the web app; each command's module (``cli/<command>.py``) parses its arguments, calls the
engine, and prints. Exit codes: 0 success, 1 some inputs failed (e.g. one bad image among several, an export that
failed its check), 2 bad arguments or data.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from . import arch, export, predict, presets, push, review, train
from .common import EXIT_OK, EXIT_USAGE, UsageError

__all__ = ["build_parser", "main"]

COMMANDS = (presets, arch, predict, train, review, export, push)  # each adds its parser and handler, in --help's order


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m densenet_demo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # The command line prints what the engine reports (notices, errors) itself; the engine's log records are
    # for servers, so here they must not reach the terminal a second time through logging's last resort.
    package_logger = logging.getLogger("densenet_demo")
    if not package_logger.handlers:
        package_logger.addHandler(logging.NullHandler())
    try:
        return args.handler(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`... | head`): stop quietly, and keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
