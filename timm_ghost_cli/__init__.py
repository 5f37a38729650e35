"""The ``timm-ghost`` entry point, apart from the ``timm_ghost`` package so that it starts without torch.

``import timm_ghost`` registers the models in timm's registry, which imports timm and torch (seconds); a module
inside the package cannot be imported without that. This one imports nothing heavy: it declares the commands and
answers ``timm-ghost``, ``timm-ghost --help`` and an unknown command itself, and hands every command to
:func:`timm_ghost.cli.run` with the full parser (:func:`build_parser` imports the command modules, each exposing
``register_cli(subparsers)`` beside the code it drives).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Dict, List, NamedTuple, Optional, Tuple

__all__ = ['COMMANDS', 'DESCRIPTION', 'Command', 'top_parser', 'light_parser', 'build_parser', 'main']

DESCRIPTION = 'GhostNet for timm: inspect, train, convert, publish and export ghostnet_050/100/130.'


class Command(NamedTuple):
    module: str  # the timm_ghost module whose register_cli adds the command (beside the code it drives)
    help: str  # its line in `timm-ghost --help`: the same as the help= its register_cli gives (tested)


COMMANDS: Dict[str, Command] = {
    'info': Command('timm_ghost.models_info', 'table of the variants: params, MACs, pretrained tags, paper top-1'),
    'data': Command('timm_ghost.data', "write a real ImageFolder offline: scikit-learn's handwritten digits"),
    'demo': Command('timm_ghost.demo_cli',
                    'the whole loop offline on real data: train ghostnet_050 on digits, save, reload, fuse, time'),
    'recipe': Command('timm_ghost.recipes',
                      "path of the paper's ImageNet recipe for train.py (-c) and the command line to run it"),
    'predict': Command('timm_ghost.predict', 'top-5 classes of an image'),
    'convert': Command('timm_ghost.publish',
                       'checkpoint -> Hub-ready folder (model.safetensors, config.json, README.md), verified'),
    'push': Command('timm_ghost.publish', 'validate a converted folder and upload it to the Hugging Face Hub'),
    'export': Command('timm_ghost.export',
                      'export to ONNX Runtime, OpenVINO or ExecuTorch (fp32, bf16, int8), verified'),
}


def top_parser() -> Tuple[argparse.ArgumentParser, argparse.Action]:
    """The ``timm-ghost`` parser without commands, and the sub-parsers action to add them to."""
    parser = argparse.ArgumentParser(prog='timm-ghost', description=DESCRIPTION)
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    return parser, sub


def light_parser() -> argparse.ArgumentParser:
    """The top-level parser with every command named and described, none of their arguments (they need imports)."""
    parser, sub = top_parser()
    for name, command in COMMANDS.items():
        sub.add_parser(name, help=command.help, add_help=False)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The ``timm-ghost`` parser with every command module's sub-commands (imports them: timm and torch)."""
    parser, sub = top_parser()
    for module in dict.fromkeys(command.module for command in COMMANDS.values()):
        importlib.import_module(module).register_cli(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``timm-ghost``; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = light_parser()
    args, _ = parser.parse_known_args(argv)  # --help and unknown commands end here; the rest is the command's
    if args.command is None:
        parser.print_help()
        return 2
    from timm_ghost.cli import run

    return run(build_parser(), argv)


if __name__ == '__main__':
    sys.exit(main())
