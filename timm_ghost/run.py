"""Run one of timm's scripts with timm-ghost's models registered, the script itself unedited.

    python -m timm_ghost.run path/to/validate.py ARGS...
    python -m timm_ghost.run path/to/benchmark.py ARGS...
    python -m timm_ghost.run path/to/inference.py ARGS...

``import timm_ghost`` registers ghostnet_050 / _100 / _130, then the script runs as ``__main__`` with
``sys.argv = [SCRIPT, ARGS...]`` and its own folder first on ``sys.path``, exactly as ``python SCRIPT ARGS...``
would run it: its output, exit code and exceptions pass through untouched. (train.py needs no launcher: it has
``--device-modules timm_ghost``.) Works under ``torchrun`` too: ``torchrun ... -m timm_ghost.run SCRIPT ARGS...``.

``python -m timm_ghost.run --inference-model SCRIPT ARGS...`` (before SCRIPT, so the script's own flags stay its
own): every model the script creates with ``timm.create_model`` runs as :func:`timm_ghost.inference_model` (folded,
channels_last, compiled by inductor) from its first forward in eval mode, after the script has loaded its checkpoint
into it. It takes the place of the scripts' ``--torchcompile`` / ``--torchscript`` / ``--reparam``, which it refuses.
"""
from __future__ import annotations

import os
import runpy
import sys
from typing import Any, List, Optional

__all__ = ['run_script', 'main']

_USAGE = ('usage: python -m timm_ghost.run [--inference-model] SCRIPT [ARGS...]   (SCRIPT: timm\'s train.py, '
          'validate.py, benchmark.py, inference.py or any script calling timm.create_model)')


_REPLACED_BY_INFERENCE_MODEL = ('--torchcompile', '--torchscript', '--reparam', '--aot-autograd')


def _wrap_create_model() -> List[Any]:
    """Make ``timm.create_model`` (as ``timm`` and ``timm.models`` export it) return deferred inference models;
    returns the list the models it creates are appended to."""
    import timm
    import timm.models

    from .inference import DeferredInferenceModel

    create, created = timm.models.create_model, []

    def create_model(*args: Any, **kwargs: Any) -> Any:
        created.append(DeferredInferenceModel(create(*args, **kwargs)))
        return created[-1]

    timm.create_model = timm.models.create_model = create_model
    return created


def run_script(script: str, args: List[str], inference_model: bool = False) -> None:
    """Register timm-ghost's models, then run ``script`` as ``__main__`` with ``sys.argv = [script, *args]``;
    with ``inference_model``, each model the script creates runs as :func:`timm_ghost.inference_model`.

    Whatever the script raises (``SystemExit`` from ``sys.exit`` or argparse included) propagates unchanged.
    """
    import timm_ghost  # noqa: F401  (registers the models in timm)

    if inference_model:
        clash = [a for a in args if a.split('=')[0] in _REPLACED_BY_INFERENCE_MODEL]
        if clash:
            raise SystemExit(f'python -m timm_ghost.run: error: --inference-model folds and compiles the model '
                             f'itself; drop {" ".join(clash)}')
        created = _wrap_create_model()

    path = os.path.abspath(script)
    sys.argv = [script, *args]
    sys.path[0] = os.path.dirname(path)  # as `python SCRIPT` sets it (here it was the launcher's working dir)
    try:
        runpy.run_path(path, run_name='__main__')
    finally:
        if inference_model:
            from .inference import compile_report

            for model in created:  # what ran, and what its first call per shape took to compile
                print(f'timm-ghost: inference model: {"; ".join(compile_report(model)) or "never ran in eval mode"}',
                      file=sys.stderr)


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(_USAGE, file=sys.stderr)
        sys.exit(2)
    if argv[0] in ('-h', '--help'):
        print(_USAGE + '\n\n' + __doc__.strip())
        sys.exit(0)
    inference = argv[0] == '--inference-model'
    argv = argv[1:] if inference else argv
    if not argv:
        print(_USAGE, file=sys.stderr)
        sys.exit(2)
    script = argv[0]
    if not os.path.isfile(script):
        print(f'python -m timm_ghost.run: error: script not found: {script}', file=sys.stderr)
        sys.exit(2)
    run_script(script, argv[1:], inference_model=inference)


if __name__ == '__main__':
    main()
