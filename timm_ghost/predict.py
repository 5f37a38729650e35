"""``timm-ghost predict``: top classes of an image, and the model loader the ``predict`` and ``export`` commands share.

A model is named the way ``timm.create_model`` names it: a registered variant (``ghostnet_100``, optionally with a
pretrained ``tag``), ``hf-hub:org/repo`` or ``local-dir:/path``; or it is a variant plus local ``weights`` (a
file or a Hub-ready folder). Local weights bring their own head and preprocessing: the classifier's size comes from
the tensors, the input size, crop and normalisation from a ``config.json`` beside the file (as timm's
``save_for_hf`` and ``timm-ghost convert`` / ``demo`` write it).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from .errors import PretrainedWeightsError
from .ghostnet import WIDTHS

__all__ = ['load_model', 'predict_topk', 'class_labels', 'add_model_arguments', 'register_cli', 'DEFAULT_MODEL']

DEFAULT_MODEL = 'ghostnet_100'
_REMOTE_PREFIXES = ('hf-hub:', 'local-dir:')
_WEIGHTS_HELP = ('pass --weights FILE|FOLDER (a .safetensors / .pth file, or a folder with model.safetensors + '
                 'config.json such as `timm-ghost demo` writes)')


def _where_from(name: str) -> str:
    """How the weights of pretrained tag ``name`` are fetched and where they are cached, for an error message."""
    import timm

    from .hub import cache_dir, url_cache_path
    from .paddle import is_pdparams, paddle_cache_dir

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is not None and not cfg.hf_hub_id and cfg.url:
        folder = paddle_cache_dir() if is_pdparams(cfg.url) else url_cache_path(cfg.url).parent
        return (f'load it once with a network connection (from {cfg.url}; converted and cached in {folder}, which '
                f'HF_HUB_OFFLINE=1 then reads)')
    return (f'connect once to the Hugging Face Hub (downloads are cached in {cache_dir()}, which HF_HUB_OFFLINE=1 '
            f'then reads)')


def _tensor_shapes(path: Path) -> Dict[str, Tuple[int, ...]]:
    """``{name: shape}`` of the tensors in a local weights file (safetensors: header only; torch pickles: loaded with
    ``weights_only=True``); empty for other formats."""
    if path.suffix == '.safetensors':
        from safetensors import safe_open
        with safe_open(str(path), framework='pt') as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    if path.suffix in ('.pth', '.pt', '.bin', '.tar', '.ckpt'):
        from timm.models import load_state_dict
        try:
            state_dict = load_state_dict(str(path), weights_only=True)
        except Exception as e:
            raise PretrainedWeightsError(f'{path}: not a readable checkpoint ({type(e).__name__}: {e})') from e
        return {k.removeprefix('module.'): tuple(v.shape) for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    return {}


def _config_beside(path: Path) -> Optional[Dict[str, Any]]:
    """The timm ``config.json`` in the weights file's folder, if there is one."""
    config = path.parent / 'config.json'
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text(encoding='utf-8'))
    except ValueError as e:
        raise PretrainedWeightsError(f'{config}: not valid JSON ({e})') from e
    if not isinstance(data, dict) or not isinstance(data.get('pretrained_cfg', {}), dict):
        raise PretrainedWeightsError(f'{config}: expected timm\'s config.json (an object with pretrained_cfg)')
    return data


def _file_model(model_name: str, path: Path) -> nn.Module:
    """``model_name`` with the head, input size and preprocessing the weights file ``path`` brings, weights loaded."""
    import dataclasses

    import timm
    from timm.models import PretrainedCfg

    overlay: Dict[str, Any] = {}
    kwargs: Dict[str, Any] = {}
    config = _config_beside(path)
    if config is not None:
        arch = config.get('architecture', model_name)
        if arch not in WIDTHS:
            raise PretrainedWeightsError(
                f'{path.parent / "config.json"}: architecture {arch!r} is not one of {", ".join(WIDTHS)}')
        model_name = arch
        overlay.update(config.get('pretrained_cfg', {}))
        for key in ('label_names', 'label_descriptions'):
            if key in config:
                overlay[key] = config[key]
        if 'num_classes' in config:
            kwargs['num_classes'] = config['num_classes']
    shapes = _tensor_shapes(path)
    if 'classifier.weight' in shapes:
        kwargs['num_classes'] = shapes['classifier.weight'][0]
    elif shapes and 'conv_stem.weight' in shapes:
        raise PretrainedWeightsError(
            f'{path} has no classifier (classifier.weight): a feature extractor cannot classify; use weights with a '
            f'head')
    if 'conv_stem.weight' in shapes:
        kwargs['in_chans'] = shapes['conv_stem.weight'][1]
    fields = {f.name for f in dataclasses.fields(PretrainedCfg)} - {'url', 'hf_hub_id', 'hf_hub_filename', 'source'}
    overlay = {k: v for k, v in overlay.items() if k in fields}
    overlay['file'] = str(path)
    if 'num_classes' in kwargs:  # timm keeps a checkpoint's classifier only when the cfg says it has this many classes
        overlay['num_classes'] = kwargs['num_classes']
    return timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)


def load_model(
        model_name: str = DEFAULT_MODEL,
        weights: Optional[str] = None,
        tag: Optional[str] = None,
) -> Tuple[nn.Module, str]:
    """An eval-mode model with weights, and a description of where they came from.

    Args:
        model_name: a registered variant (``ghostnet_050`` / ``_100`` / ``_130``), or ``hf-hub:org/repo`` /
            ``local-dir:/path`` as ``timm.create_model`` takes them.
        weights: None (the variant's pretrained weights: Hub cache or download), a folder saved for the Hub
            (``config.json`` + ``model.safetensors``; its architecture wins over ``model_name``) or a weights file
            (``.safetensors``, or a ``.pth`` / ``.bin`` read with ``weights_only=True``). A file's classifier size
            comes from its tensors, its input size and preprocessing from a ``config.json`` beside it.
        tag: pretrained tag of the variant (``in1k``, ...), only with ``weights=None``.
    Raises:
        ValueError: an unknown model name, or ``tag`` with ``weights`` / a hub name.
        FileNotFoundError: ``weights`` does not exist.
        PretrainedWeightsError: the weights cannot be had or do not fit (one line, saying how to get them).
    """
    import timm

    remote = model_name.startswith(_REMOTE_PREFIXES)
    if not remote and model_name not in WIDTHS:
        raise ValueError(f'--model must be one of {", ".join(WIDTHS)} or an hf-hub: / local-dir: name, '
                         f'got {model_name!r}')
    if tag is not None and (weights is not None or remote):
        raise ValueError('--tag names pretrained weights of a variant; it cannot be combined with --weights or an '
                         'hf-hub: / local-dir: model')
    if remote:
        if weights is not None:
            raise ValueError(f'--weights cannot be combined with --model {model_name} (it brings its own weights)')
        return timm.create_model(model_name, pretrained=True).eval(), model_name
    if weights is None:
        name = f'{model_name}.{tag}' if tag else model_name
        tags = timm.list_pretrained(f'{model_name}.*')
        if not tags:
            raise PretrainedWeightsError(
                f'{model_name} has no pretrained weights (pretrained tags: none): {_WEIGHTS_HELP}')
        if tag is not None and name not in tags:
            raise ValueError(f'--tag {tag!r}: {model_name} has pretrained tags {", ".join(tags)}')
        try:
            return timm.create_model(name, pretrained=True).eval(), f'{name} pretrained'
        except PretrainedWeightsError as e:
            raise PretrainedWeightsError(
                f'no weights for {name}: {str(e).rstrip(".")}. To get them: {_where_from(name)}, or {_WEIGHTS_HELP}'
            ) from e
    path = Path(weights).expanduser()
    if path.is_dir():
        return timm.create_model(f'local-dir:{path}', pretrained=True).eval(), f'local-dir:{path}'
    if not path.is_file():
        raise FileNotFoundError(f'--weights: no such file or folder: {weights}')
    try:
        return _file_model(model_name, path).eval(), str(path)
    except PretrainedWeightsError as e:
        raise PretrainedWeightsError(f'--weights {weights}: {e}') from e


def class_labels(model: nn.Module) -> Optional[Tuple[List[str], List[str]]]:
    """``(names, descriptions)`` of the model's classes: its config's labels, else ImageNet's where timm recognises
    the head (``infer_imagenet_subset``); None when neither says."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    cfg = getattr(model, 'pretrained_cfg', None) or {}
    names = cfg.get('label_names')
    if names and len(names) == getattr(model, 'num_classes', len(names)):
        descriptions = cfg.get('label_descriptions') or {}
        return list(names), [descriptions.get(n, '') for n in names]
    subset = infer_imagenet_subset(model)
    if subset:
        info = ImageNetInfo(subset)
        return list(info.label_names()), list(info.label_descriptions())
    return None


@torch.inference_mode()
def predict_topk(model: nn.Module, image: str, k: int = 5) -> List[Dict[str, Any]]:
    """Top-``k`` classes of ``image`` (any file PIL reads) under ``model``'s own preprocessing (its data config).

    Returns ``min(k, num_classes)`` dicts (best first): ``index``, ``prob`` (softmax, 0..1), ``label`` and
    ``description``. Raises FileNotFoundError / IsADirectoryError / ValueError naming ``image``.
    """
    from PIL import Image, UnidentifiedImageError
    from timm.data import create_transform, resolve_data_config

    if k < 1:
        raise ValueError(f'k (--top-k) must be >= 1, got {k}')
    if Path(image).is_dir():
        raise IsADirectoryError(f'IMAGE {image} is a folder; give one image file')
    try:
        with Image.open(image) as img:
            img = img.convert('RGB')
    except FileNotFoundError as e:
        raise FileNotFoundError(f'IMAGE {image}: no such file') from e
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f'IMAGE {image}: not an image file PIL can read ({e})') from e
    if model.num_classes < 1:
        raise ValueError('the model has no classifier (num_classes=0)')
    transform = create_transform(**resolve_data_config(model=model))
    x = transform(img).unsqueeze(0)  # (1, C, H, W)
    probs = model(x).softmax(dim=-1)[0]
    top = probs.topk(min(k, probs.numel()))
    names, descriptions = class_labels(model) or ([str(i) for i in range(model.num_classes)], [''] * model.num_classes)
    return [dict(index=int(i), prob=float(p), label=names[int(i)], description=descriptions[int(i)])
            for p, i in zip(top.values, top.indices)]


def _cmd_predict(args: Any) -> int:
    if not Path(args.image).exists():
        raise FileNotFoundError(f'IMAGE {args.image}: no such file')
    if Path(args.image).is_dir():
        raise IsADirectoryError(f'IMAGE {args.image} is a folder; give one image file')
    model, source = load_model(args.model, args.weights, args.tag)
    rows = predict_topk(model, args.image, args.top_k)
    arch = model.pretrained_cfg.get('architecture', args.model)
    size = 'x'.join(str(s) for s in model.pretrained_cfg.get('input_size', ())[1:])
    print(f'{arch} ({source}, {size} px) on {args.image}:')
    for rank, r in enumerate(rows, 1):
        text = f'{r["label"]}  {r["description"]}' if r['description'] else r['label']
        print(f'{rank:>3}. {100 * r["prob"]:6.2f} %  {text}')
    return 0


def add_model_arguments(p: Any) -> None:
    """``--model``, ``--tag`` and ``--weights``, as ``predict`` and ``export`` take them (see :func:`load_model`)."""
    p.add_argument('--model', default=DEFAULT_MODEL, metavar='MODEL',
                   help=f'{", ".join(WIDTHS)} (default {DEFAULT_MODEL}), or hf-hub:ORG/REPO / local-dir:PATH')
    p.add_argument('--tag', default=None,
                   help='pretrained tag of the variant (default: its default tag; see `timm-ghost info`)')
    p.add_argument('--weights', '--checkpoint', dest='weights', default=None, metavar='PATH',
                   help='local weights: a .safetensors / .pth file (head from its tensors, input size from a '
                        'config.json beside it), or a folder with model.safetensors + config.json '
                        '(default: the pretrained weights, from the Hub or its cache)')


def register_cli(sub: Any) -> None:
    """Add ``timm-ghost predict``."""
    p = sub.add_parser(
        'predict', help='top-5 classes of an image',
        description='Classify IMAGE and print the top classes with their names (ImageNet names from timm\'s '
                    'ImageNetInfo, or the label names of a folder saved for the Hub).')
    p.add_argument('image', metavar='IMAGE', help='image file')
    add_model_arguments(p)
    p.add_argument('--top-k', type=int, default=5, help='classes to show (default 5)')
    p.set_defaults(func=_cmd_predict)
