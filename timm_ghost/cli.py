"""The ``timm-ghost`` command line.

Each command lives beside the code it drives: a module in ``_COMMAND_MODULES`` exposes
``register_cli(subparsers)``, adding its sub-commands with a ``func(args) -> int`` default.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

_COMMAND_MODULES = ('timm_ghost.models_info', 'timm_ghost.publish', 'timm_ghost.workflows')


class CommandError(Exception):
    """A user-facing error: printed as one line, exit code 1."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='timm-ghost',
        description='GhostNet for timm: inspect, train, convert and publish ghostnet_050/100/130.')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register_cli(sub)
    return parser


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
    except (CommandError, ValueError, FileNotFoundError, FileExistsError, RuntimeError, OSError) as e:
        print(f'timm-ghost {args.command}: error: {e}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
