"""The ``timm-ghost`` command line.

Each command lives beside the code it drives: a module in ``_COMMAND_MODULES`` exposes
``register_cli(subparsers)``, adding its sub-commands with a ``func(args) -> int`` default. The library raises
:mod:`timm_ghost.errors` classes, ``ValueError`` and ``OSError`` for bad input or environment; only here do they
become one-line messages (exit code 1). Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from .errors import TimmGhostError

_COMMAND_MODULES = (
    'timm_ghost.models_info',  # info
    'timm_ghost.data',  # data
    'timm_ghost.demo',  # demo
    'timm_ghost.recipes',  # recipe
    'timm_ghost.predict',  # predict
    'timm_ghost.publish',  # convert, push
    'timm_ghost.export',  # export
)
_USER_ERRORS = (TimmGhostError, ValueError, OSError)


def build_parser() -> argparse.ArgumentParser:
    """The ``timm-ghost`` parser with every command module's sub-commands."""
    parser = argparse.ArgumentParser(
        prog='timm-ghost',
        description='GhostNet for timm: inspect, train, convert, publish and export ghostnet_050/100/130.')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register_cli(sub)
    return parser


def _one_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return ' '.join(lines) or type(e).__name__


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``timm-ghost``; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, 'func', None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f'timm-ghost {args.command}: interrupted', file=sys.stderr)
        return 130
    except _USER_ERRORS as e:
        print(f'timm-ghost {args.command}: error: {_one_line(e)}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
