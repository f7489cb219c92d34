"""`pseudomask` command line: one subcommand per module of pseudomask.commands, discovered at start.

Each command module defines `register(subparsers)` that adds its parser and sets `func`; commands call
the same library functions as the workflow's scripts.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import __version__, commands
from .errors import PseudomaskError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pseudomask", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"pseudomask {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"{commands.__name__}.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PseudomaskError as e:
        print(f"pseudomask {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
