"""Run one of timm's scripts with timm-ghost's models registered, the script itself unedited.

    python -m timm_ghost.run path/to/validate.py ARGS...
    python -m timm_ghost.run path/to/benchmark.py ARGS...
    python -m timm_ghost.run path/to/inference.py ARGS...

``import timm_ghost`` registers ghostnet_050 / _100 / _130, then the script runs as ``__main__`` with
``sys.argv = [SCRIPT, ARGS...]`` and its own folder first on ``sys.path``, exactly as ``python SCRIPT ARGS...``
would run it: its output, exit code and exceptions pass through untouched. (train.py needs no launcher: it has
``--device-modules timm_ghost``.) Works under ``torchrun`` too: ``torchrun ... -m timm_ghost.run SCRIPT ARGS...``.
"""
from __future__ import annotations

import os
import runpy
import sys
from typing import List, Optional

__all__ = ['run_script', 'main']

_USAGE = 'usage: python -m timm_ghost.run SCRIPT [ARGS...]   (SCRIPT: timm\'s train.py, validate.py, benchmark.py, ' \
         'inference.py or any script calling timm.create_model)'


def run_script(script: str, args: List[str]) -> None:
    """Register timm-ghost's models, then run ``script`` as ``__main__`` with ``sys.argv = [script, *args]``.

    Whatever the script raises (``SystemExit`` from ``sys.exit`` or argparse included) propagates unchanged.
    """
    import timm_ghost  # noqa: F401  (registers the models in timm)

    path = os.path.abspath(script)
    sys.argv = [script, *args]
    sys.path[0] = os.path.dirname(path)  # as `python SCRIPT` sets it (here it was the launcher's working dir)
    runpy.run_path(path, run_name='__main__')


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(_USAGE, file=sys.stderr)
        sys.exit(2)
    if argv[0] in ('-h', '--help'):
        print(_USAGE + '\n\n' + __doc__.strip())
        sys.exit(0)
    script = argv[0]
    if not os.path.isfile(script):
        print(f'python -m timm_ghost.run: error: script not found: {script}', file=sys.stderr)
        sys.exit(2)
    run_script(script, argv[1:])


if __name__ == '__main__':
    main()
