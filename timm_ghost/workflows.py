"""The workflow commands: ``timm-ghost demo``, ``data``, ``recipe`` and ``predict``."""
from __future__ import annotations

import shlex
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from .ghostnet import WIDTHS

__all__ = ['recipe_path', 'recipe_command', 'predict_topk', 'load_for_predict', 'register_cli']

_DEFAULT_PREDICT_MODEL = 'ghostnet_100'  # the variant with ImageNet weights (timm/ghostnet_100.in1k)


# ---------------------------------------------------------------------------------------------------- recipes
def recipe_path(model: str) -> Path:
    """Path of the train.py config (YAML) shipped for ``model`` (one of ghostnet_050 / _100 / _130)."""
    if model not in WIDTHS:
        raise ValueError(f'model must be one of {", ".join(WIDTHS)}, got {model!r}')
    path = resources.files('timm_ghost') / 'recipes' / f'{model}.yaml'
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


# ---------------------------------------------------------------------------------------------------- data
def _cmd_data(args: Any) -> int:
    from .data import write_digits_imagefolder

    folder = write_digits_imagefolder(args.out, img_size=args.size, val_fraction=args.val_fraction, seed=args.seed,
                                      force=args.force)
    print(f'wrote {folder.counts["train"]} train / {folder.counts["validation"]} validation images '
          f'({folder.num_classes} classes, {folder.img_size}x{folder.img_size} px) to {folder.root}')
    return 0


# ---------------------------------------------------------------------------------------------------- demo
def _cmd_demo(args: Any) -> int:
    from .demo import DemoConfig, format_results, run_demo

    cfg = DemoConfig(epochs=args.epochs, img_size=args.img_size, batch_size=args.batch_size, lr=args.lr,
                     seed=args.seed, workers=args.workers, threads=args.threads)
    result = run_demo(args.out, cfg, force=args.force, progress=not args.no_progress)
    print()
    print(format_results(result))
    print(f"\nnext: timm.create_model('local-dir:{result.model_dir}', pretrained=True); "
          f'timm-ghost predict IMAGE --weights {result.model_dir}')
    return 0


# ---------------------------------------------------------------------------------------------------- predict
_WEIGHTS_HELP = ('pass --weights FILE|FOLDER (a .safetensors / .pth file, or a folder with model.safetensors + '
                 'config.json such as `timm-ghost demo` writes)')


def _no_weights_hint(model_name: str, reason: str) -> str:
    from .hub import cache_dir
    return (f'no weights for {model_name}: {reason.rstrip(".")}. To get them: connect once to the Hugging Face Hub '
            f'(downloads are cached in {cache_dir()}, which HF_HUB_OFFLINE=1 then reads), or {_WEIGHTS_HELP}')


def _no_pretrained_tag(model_name: str) -> str:
    import timm
    others = [t for t in timm.list_pretrained('ghostnet_*') if not t.startswith(model_name)]
    return (f'{model_name} has no pretrained weights (ImageNet weights exist for {", ".join(others) or "none"}): '
            f'{_WEIGHTS_HELP}, or choose --model {others[0].split(".")[0] if others else "..."}')


def _safetensors_num_classes(path: Path) -> Optional[int]:
    """Rows of ``classifier.weight`` in a safetensors file (read from its header), None if absent."""
    from safetensors import safe_open
    with safe_open(str(path), framework='pt') as f:
        if 'classifier.weight' in f.keys():
            return int(f.get_slice('classifier.weight').get_shape()[0])
    return None


def load_for_predict(model_name: str, weights: Optional[str] = None) -> Tuple[nn.Module, str]:
    """An eval-mode model with weights, and a description of where they came from.

    ``weights``: None (the model's default pretrained weights, Hub cache or download), a folder saved for the Hub
    (``config.json`` + ``model.safetensors``; its architecture wins over ``model_name``) or a weights file
    (``.safetensors``, or a ``.pth`` / ``.bin`` read with ``weights_only=True``). Raises ``CommandError`` with a
    one-line hint when no weights can be had.
    """
    import timm

    from .cli import CommandError
    from .hub import PretrainedWeightsError

    if model_name not in WIDTHS:
        raise CommandError(f'--model must be one of {", ".join(WIDTHS)}, got {model_name!r}')
    try:
        if weights is None:
            if not timm.list_pretrained(f'{model_name}.*'):
                raise CommandError(_no_pretrained_tag(model_name))
            return timm.create_model(model_name, pretrained=True).eval(), f'{model_name} pretrained'
        path = Path(weights).expanduser()
        if path.is_dir():
            model = timm.create_model(f'local-dir:{path}', pretrained=True)
            return model.eval(), f'local-dir:{path}'
        if not path.is_file():
            raise CommandError(f'--weights: no such file or folder: {weights}')
        kwargs: Dict[str, Any] = {}
        if path.suffix == '.safetensors':
            num_classes = _safetensors_num_classes(path)
            if num_classes is not None:
                kwargs['num_classes'] = num_classes
        model = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
        return model.eval(), str(path)
    except PretrainedWeightsError as e:
        if weights is None:
            raise CommandError(_no_weights_hint(model_name, str(e))) from e
        raise CommandError(f'--weights {weights}: {e}') from e


def _label_names(model: nn.Module) -> Tuple[List[str], List[str]]:
    """``(names, descriptions)`` of the model's classes: its config's labels, else ImageNet's, else indices."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    cfg = getattr(model, 'pretrained_cfg', None) or {}
    num_classes = model.num_classes
    names = cfg.get('label_names')
    if names and len(names) == num_classes:
        descriptions = cfg.get('label_descriptions') or {}
        return list(names), [descriptions.get(n, '') for n in names]
    subset = infer_imagenet_subset(model)
    if subset:
        info = ImageNetInfo(subset)
        return list(info.label_names()), list(info.label_descriptions())
    return [str(i) for i in range(num_classes)], [''] * num_classes


@torch.inference_mode()
def predict_topk(model: nn.Module, image: str, k: int = 5) -> List[Dict[str, Any]]:
    """Top-``k`` classes of ``image`` (any file PIL reads) under ``model``'s own preprocessing (its data config).

    Returns ``k`` dicts (best first): ``index``, ``prob`` (softmax, 0..1), ``label`` and ``description``.
    """
    from PIL import Image, UnidentifiedImageError
    from timm.data import create_transform, resolve_data_config

    try:
        with Image.open(image) as img:
            img = img.convert('RGB')
    except FileNotFoundError as e:
        raise FileNotFoundError(f'image not found: {image}') from e
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f'{image}: not an image file PIL can read ({e})') from e
    transform = create_transform(**resolve_data_config(model=model))
    x = transform(img).unsqueeze(0)  # (1, 3, H, W)
    probs = model(x).softmax(dim=-1)[0]
    k = min(k, probs.numel())
    top = probs.topk(k)
    names, descriptions = _label_names(model)
    return [dict(index=int(i), prob=float(p), label=names[int(i)], description=descriptions[int(i)])
            for p, i in zip(top.values, top.indices)]


def _cmd_predict(args: Any) -> int:
    if args.top_k < 1:
        raise ValueError(f'--top-k must be >= 1, got {args.top_k}')
    if not Path(args.image).is_file():
        raise FileNotFoundError(f'image not found: {args.image}')
    model, source = load_for_predict(args.model, args.weights)
    rows = predict_topk(model, args.image, args.top_k)
    arch = model.pretrained_cfg.get('architecture', args.model)
    print(f'{arch} ({source}) on {args.image}:')
    for rank, r in enumerate(rows, 1):
        text = f'{r["label"]}  {r["description"]}' if r['description'] else r['label']
        print(f'{rank:>3}. {100 * r["prob"]:6.2f} %  {text}')
    return 0


# ---------------------------------------------------------------------------------------------------- CLI
def register_cli(sub: Any) -> None:
    """Add ``demo``, ``data``, ``recipe`` and ``predict``."""
    from .demo import DEFAULT_DEMO_DIR, DemoConfig

    d = DemoConfig()
    p = sub.add_parser(
        'demo', help='the whole loop offline on real data: train ghostnet_050 on digits, save, reload, fuse, time',
        description='Build a handwritten-digits ImageFolder, train ghostnet_050 on it with timm.data / timm.optim / '
                    'timm.scheduler / timm.task, save a Hub-ready folder (model.safetensors + config.json), reload it '
                    "through timm.create_model('local-dir:...'), fuse it for deploy and compare predictions and "
                    'speed. Writes OUT/data, OUT/model and OUT/results.json.')
    p.add_argument('--out', default=DEFAULT_DEMO_DIR, metavar='OUT',
                   help=f'output folder (default ./{DEFAULT_DEMO_DIR}); must be new or empty unless --force')
    p.add_argument('--force', action='store_true', help='replace a non-empty OUT (only once the run succeeded)')
    p.add_argument('--epochs', type=int, default=d.epochs, help=f'training epochs (default {d.epochs})')
    p.add_argument('--img-size', type=int, default=d.img_size, help=f'image side in pixels (default {d.img_size})')
    p.add_argument('--batch-size', type=int, default=d.batch_size, help=f'batch size (default {d.batch_size})')
    p.add_argument('--lr', type=float, default=d.lr, help=f'peak learning rate, SGD (default {d.lr})')
    p.add_argument('--seed', type=int, default=d.seed, help=f'seed of the split, init and order (default {d.seed})')
    p.add_argument('--workers', type=int, default=d.workers, help=f'data loader workers (default {d.workers})')
    p.add_argument('--threads', type=int, default=d.threads,
                   help=f"torch CPU threads (default {d.threads}: robust on a shared CPU; 0: torch's choice)")
    p.add_argument('--no-progress', action='store_true', help='one line per epoch instead of progress bars')
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        'data', help="write a real ImageFolder offline: scikit-learn's handwritten digits",
        description="Write scikit-learn's 1,797 handwritten digits as OUT/train/<class>/*.png (80 %%) and "
                    'OUT/validation/<class>/*.png (20 %%, stratified, fixed seed): the folders timm\'s train.py and '
                    'validate.py read.')
    p.add_argument('dataset', choices=['digits'], help='the data set (digits)')
    p.add_argument('out', metavar='OUT', help='output folder; must be new or empty unless --force')
    p.add_argument('--size', type=int, default=64, help='image side in pixels, upscaled from 8x8 (default 64)')
    p.add_argument('--val-fraction', type=float, default=0.2, help='validation share of each class (default 0.2)')
    p.add_argument('--seed', type=int, default=0, help='seed of the split (default 0)')
    p.add_argument('--force', action='store_true', help='replace a non-empty OUT')
    p.set_defaults(func=_cmd_data)

    p = sub.add_parser(
        'recipe', help="path of the paper's ImageNet recipe for train.py (-c) and the command line to run it",
        description="Print the path of the shipped train.py config with the paper's ImageNet recipe for MODEL, "
                    'then the command line that runs it.')
    p.add_argument('model', choices=list(WIDTHS), help='the variant')
    p.add_argument('--data-dir', default='/path/to/imagenet', help='ImageNet folder to put in the command')
    p.add_argument('--nproc', type=int, default=8, help='processes (GPUs) for torchrun (default 8; 1: plain python)')
    p.add_argument('--train-script', default='train.py', help="path of timm's train.py to put in the command")
    p.set_defaults(func=_cmd_recipe)

    p = sub.add_parser(
        'predict', help='top-5 classes of an image',
        description='Classify IMAGE and print the top classes with their names (ImageNet names from timm\'s '
                    'ImageNetInfo, or the label names of a folder saved for the Hub).')
    p.add_argument('image', metavar='IMAGE', help='image file')
    p.add_argument('--model', default=_DEFAULT_PREDICT_MODEL, choices=list(WIDTHS),
                   help=f'variant (default {_DEFAULT_PREDICT_MODEL}, the one with ImageNet weights)')
    p.add_argument('--weights', '--checkpoint', dest='weights', default=None, metavar='PATH',
                   help='local weights: a .safetensors / .pth file, or a folder with model.safetensors + '
                        'config.json (default: the pretrained weights from the Hub or its cache)')
    p.add_argument('--top-k', type=int, default=5, help='classes to show (default 5)')
    p.set_defaults(func=_cmd_predict)

