"""The ``timm-ghost`` command line.

Each command lives beside the code it drives: the module :data:`timm_ghost_cli.COMMANDS` names for it exposes
``register_cli(subparsers)``, adding its sub-commands with a ``func(args) -> int`` default. The entry point is
:func:`timm_ghost_cli.main`, which answers ``--help`` without importing torch and hands a command to :func:`run`.
The library raises :mod:`timm_ghost.errors` classes, ``ValueError`` and ``OSError`` for bad input or environment;
only here do they become one-line messages (exit code 1). Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from typing import List, Optional

from timm_ghost_cli import COMMANDS, top_parser

from .errors import TimmGhostError

_USER_ERRORS = (TimmGhostError, ValueError, OSError)


def build_parser() -> argparse.ArgumentParser:
    """The ``timm-ghost`` parser with every command module's sub-commands."""
    parser, sub = top_parser()
    for module in dict.fromkeys(command.module for command in COMMANDS.values()):
        importlib.import_module(module).register_cli(sub)
    return parser


def _one_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return ' '.join(lines) or type(e).__name__


def main(argv: Optional[List[str]] = None) -> int:
    """``timm-ghost ARGS``: the entry point (:func:`timm_ghost_cli.main`); returns the process exit code."""
    from timm_ghost_cli import main as entry_point

    return entry_point(argv)


def run(argv: List[str]) -> int:
    """Parse ``argv`` with the full parser and run its command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, 'func', None):
        parser.print_help()
        return 2
    def one_line_warning(message: Warning | str, category: type, *rest: object, **kw: object) -> None:
        print(f'timm-ghost {args.command}: warning: {_one_line(message)}', file=sys.stderr)  # type: ignore[arg-type]

    try:
        with warnings.catch_warnings():
            warnings.showwarning = one_line_warning  # a library's warning is one line here, not file:line + source
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f'timm-ghost {args.command}: interrupted', file=sys.stderr)
        return 130
    except _USER_ERRORS as e:
        print(f'timm-ghost {args.command}: error: {_one_line(e)}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
