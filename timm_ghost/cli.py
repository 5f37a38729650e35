"""Running one ``timm-ghost`` command: :func:`run`, handed the full parser by the entry point,
:func:`timm_ghost_cli.main` (which answers ``--help`` without importing torch and builds that parser from the
command modules; this module knows none of them and does not import the entry point).

The library raises :mod:`timm_ghost.errors` classes, ``ValueError`` and ``OSError`` for bad input or environment;
only here do they become one-line messages (exit code 1). Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from typing import List

from .errors import TimmGhostError

__all__ = ['run']

_USER_ERRORS = (TimmGhostError, ValueError, OSError)


def _one_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return ' '.join(lines) or type(e).__name__


def run(parser: argparse.ArgumentParser, argv: List[str]) -> int:
    """Parse ``argv`` with ``parser`` (every command's sub-parser, each with a ``func(args) -> int`` default) and run
    its command; returns the exit code. User errors and warnings become one line each."""
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
