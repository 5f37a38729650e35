"""The paper's ImageNet training recipe as train.py configs (one YAML per width) and ``timm-ghost recipe``."""
from __future__ import annotations

import shlex
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ['recipe_path', 'recipe_command', 'register_cli']


def _widths() -> tuple:
    from ..ghostnet import WIDTHS
    return tuple(WIDTHS)


def recipe_path(model: str) -> Path:
    """Path of the train.py config (YAML) shipped for ``model`` (one of ghostnet_050 / _100 / _130)."""
    if model not in _widths():
        raise ValueError(f'model must be one of {", ".join(_widths())}, got {model!r}')
    path = resources.files(__name__) / f'{model}.yaml'
    if not path.is_file():
        raise FileNotFoundError(f'recipe {path} is missing from the installed package')
    return Path(str(path))


def recipe_command(
        model: str,
        data_dir: str = '/path/to/imagenet',
        nproc: int = 8,
        train_script: str = 'train.py',
) -> str:
    """The train.py command line that runs ``model``'s recipe on ``nproc`` processes (GPUs) of one machine."""
    if nproc < 1:
        raise ValueError(f'nproc must be >= 1, got {nproc!r}')
    launcher = ['torchrun', f'--nproc_per_node={nproc}'] if nproc > 1 else ['python']
    args = [train_script, '-c', str(recipe_path(model)), '--device-modules', 'timm_ghost', '--data-dir', data_dir]
    return shlex.join(launcher + args)


def _cmd_recipe(args: Any) -> int:
    print(recipe_path(args.model))
    print(recipe_command(args.model, data_dir=args.data_dir, nproc=args.nproc, train_script=args.train_script))
    return 0


def register_cli(sub: Any) -> None:
    """Add ``timm-ghost recipe``."""
    p = sub.add_parser(
        'recipe', help="path of the paper's ImageNet recipe for train.py (-c) and the command line to run it",
        description="Print the path of the shipped train.py config with the paper's ImageNet recipe for MODEL, "
                    "then the command line that runs it. train.py is timm's training script, from timm's source "
                    'repository (it is not in the timm wheel).')
    p.add_argument('model', choices=list(_widths()), help='the variant')
    p.add_argument('--data-dir', default='/path/to/imagenet', help='ImageNet folder to put in the command')
    p.add_argument('--nproc', type=int, default=8, help='processes (GPUs) for torchrun (default 8; 1: plain python)')
    p.add_argument('--train-script', default='train.py', help="path of timm's train.py to put in the command")
    p.set_defaults(func=_cmd_recipe)
