"""``timm-ghost predict``: top classes of an image, and the model loader the ``predict`` and ``export`` commands share.

A model is named the way ``timm.create_model`` names it: a registered variant (``ghostnet_100``, optionally with a
pretrained ``tag``), ``hf-hub:org/repo`` or ``local-dir:/path``; or it is a variant plus local ``weights`` (a
file or a Hub-ready folder). Local weights bring their own head and preprocessing: the classifier's size comes from
the tensors, the input size, crop and normalisation from a ``config.json`` beside the file (as timm's
``save_for_hf`` and ``timm-ghost convert`` / ``demo`` write it).
"""
from __future__ import annotations

import json
import pickle
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


TORCH_SUFFIXES = ('.pth', '.pt', '.bin', '.tar', '.ckpt')
_ACCEPTED = ('a .safetensors file, a torch checkpoint of tensors (.pth / .pt / .bin / .pth.tar / .ckpt), a PaddleClas '
             '.pdparams, or a folder with model.safetensors + config.json')


def _what_file(path: Path) -> str:
    """What ``path`` holds, from its first bytes, for an error message."""
    with open(path, 'rb') as f:
        head = f.read(512)
    if not head:
        return 'an empty file'
    if head.startswith(b'\x93NUMPY'):
        return 'a NumPy array (.npy)'
    if head.startswith(b'PK\x03\x04'):
        import zipfile
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (OSError, zipfile.BadZipFile):
            return 'a truncated or damaged zip archive (the format of torch checkpoints and NumPy .npz files)'
        if any(n == 'data.pkl' or n.endswith('/data.pkl') for n in names):
            return 'a torch checkpoint'
        if names and all(n.endswith('.npy') for n in names):
            return 'a NumPy archive (.npz)'
        return 'a zip archive'
    if head.startswith(b'\x89HDF'):
        return 'an HDF5 file'
    if head[:1] == b'\x80':
        return 'a Python pickle'
    try:
        head.decode('utf-8')
    except UnicodeDecodeError:
        return 'binary data of no format timm-ghost knows'
    return 'a text file'


def _tensor_shapes(path: Path) -> Dict[str, Tuple[int, ...]]:
    """``{name: shape}`` of the tensors in a local weights file (safetensors: header only; torch checkpoints: loaded
    with ``weights_only=True``); empty for a PaddleClas ``.pdparams``. Raises PretrainedWeightsError naming the file
    and saying what it is when it is none of these, or unreadable."""
    if path.suffix == '.safetensors':
        from safetensors import safe_open
        try:
            with safe_open(str(path), framework='pt') as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as e:  # SafetensorError (header too large, incomplete metadata...) is no OSError
            raise PretrainedWeightsError(
                f'{path}: not a readable safetensors file, truncated or corrupt ({_one_line(e)}; '
                f'{path.stat().st_size:,d} bytes)') from e
    if path.suffix in TORCH_SUFFIXES:
        from ._compat import load_state_dict_weights_only

        what = _what_file(path)
        if what not in ('a Python pickle', 'a torch checkpoint'):
            raise PretrainedWeightsError(f'{path}: {what}, not a torch checkpoint; --weights takes {_ACCEPTED}')
        try:
            state_dict = load_state_dict_weights_only(path)
        except Exception as e:  # torch.load fails in many ways (UnpicklingError, KeyError, OSError...): name the file
            if isinstance(e, pickle.UnpicklingError) or 'weights_only' in str(e):
                raise PretrainedWeightsError(
                    f'{path}: a torch checkpoint that holds Python objects besides tensors; timm-ghost loads only '
                    f'tensors (weights_only=True) and never runs code from a file. Re-save its state_dict '
                    f'(torch.save(model.state_dict(), ...)) or save it as safetensors') from e
            raise PretrainedWeightsError(
                f'{path}: not a readable torch checkpoint, truncated or corrupt ({type(e).__name__}: '
                f'{_one_line(e)})') from e
        return {k.removeprefix('module.'): tuple(v.shape) for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    from .paddle import looks_like_pdparams
    if looks_like_pdparams(path):
        return {}
    raise PretrainedWeightsError(f'{path}: {_what_file(path)}, not a weights file timm-ghost reads; --weights takes '
                                 f'{_ACCEPTED}')


def _one_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _train_args(path: Path) -> Dict[str, Any]:
    """The ``args`` timm's train.py saves in its checkpoints (model, image size, preprocessing), or empty."""
    import argparse
    safe_globals = getattr(torch.serialization, 'safe_globals', None)  # torch >= 2.5, as timm's loader requires
    if path.suffix not in TORCH_SUFFIXES or safe_globals is None:
        return {}
    try:
        with safe_globals([argparse.Namespace]):
            checkpoint = torch.load(str(path), map_location='cpu', weights_only=True)
    except Exception:  # anything unreadable was reported by _tensor_shapes already
        return {}
    args = checkpoint.get('args') if isinstance(checkpoint, dict) else None
    return dict(vars(args)) if isinstance(args, argparse.Namespace) else {}


def _input_from_train_args(args: Dict[str, Any], in_chans: int) -> Dict[str, Any]:
    """The pretrained-cfg entries train.py's arguments fix: the input size it trained at and the preprocessing it
    was given (what train.py left to the model's cfg is left to it here too)."""
    cfg: Dict[str, Any] = {}
    if args.get('input_size'):
        cfg['input_size'] = tuple(args['input_size'])
    elif args.get('img_size'):
        cfg['input_size'] = (in_chans, int(args['img_size']), int(args['img_size']))
    for key in ('crop_pct', 'mean', 'std', 'interpolation'):
        if args.get(key) not in (None, ''):
            cfg[key] = tuple(args[key]) if isinstance(args[key], (list, tuple)) else args[key]
    return cfg


def _read_config(config: Path) -> Dict[str, Any]:
    """A timm ``config.json``, or PretrainedWeightsError naming it."""
    try:
        data = json.loads(config.read_text(encoding='utf-8'))
    except (ValueError, UnicodeDecodeError) as e:
        raise PretrainedWeightsError(f'{config}: not valid JSON ({e})') from e
    if not isinstance(data, dict) or not isinstance(data.get('pretrained_cfg', {}), dict):
        raise PretrainedWeightsError(f'{config}: expected timm\'s config.json (an object with pretrained_cfg)')
    return data


def _config_beside(path: Path) -> Optional[Dict[str, Any]]:
    """The timm ``config.json`` in the weights file's folder, if there is one."""
    config = path.parent / 'config.json'
    return _read_config(config) if config.is_file() else None


def _file_model(model_name: str, path: Path) -> nn.Module:
    """``model_name`` with the head, input size and preprocessing the weights file ``path`` brings, weights loaded.

    Input size and preprocessing come from a ``config.json`` beside the file, else from the arguments a timm
    ``train.py`` checkpoint records. Nothing of the variant's default tag (its origin, description, results) is
    reported for these weights."""
    import dataclasses

    import timm
    from timm.models import PretrainedCfg

    overlay: Dict[str, Any] = dict(tag=None, description=None, notes=None, origin_url=None, license=None)
    kwargs: Dict[str, Any] = {}
    config = _config_beside(path)
    shapes = _tensor_shapes(path)
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
    else:
        args = _train_args(path)
        arch = str(args.get('model') or '').split('/')[-1].split('.')[0]
        if arch in WIDTHS:
            model_name = arch
        in_chans = shapes['conv_stem.weight'][1] if 'conv_stem.weight' in shapes else 3
        overlay.update(_input_from_train_args(args, in_chans))
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


def _folder_model(path: Path) -> nn.Module:
    """A folder saved for the Hub, its config.json and weights checked first so that a broken one is named."""
    import timm

    from .hub import PICKLE_WEIGHTS_NAMES, SAFE_WEIGHTS_NAME

    config = path / 'config.json'
    if not config.is_file():
        raise PretrainedWeightsError(f'{path} has no config.json: --weights takes {_ACCEPTED}')
    _read_config(config)
    weights = next((path / n for n in (SAFE_WEIGHTS_NAME, *PICKLE_WEIGHTS_NAMES) if (path / n).is_file()), None)
    if weights is None:
        raise PretrainedWeightsError(f'{path} holds no weights ({SAFE_WEIGHTS_NAME} or '
                                     f'{", ".join(PICKLE_WEIGHTS_NAMES)})')
    _tensor_shapes(weights)
    return timm.create_model(f'local-dir:{path}', pretrained=True)


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
        if model_name.startswith('local-dir:'):
            folder = Path(model_name[len('local-dir:'):]).expanduser()
            if not folder.is_dir():
                raise FileNotFoundError(f'--model {model_name}: no such folder')
            try:
                return _folder_model(folder).eval(), model_name
            except PretrainedWeightsError as e:
                raise PretrainedWeightsError(f'--model {model_name}: {e}') from e
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
    if not path.exists():
        raise FileNotFoundError(f'--weights: no such file or folder: {weights}')
    try:
        if path.is_dir():
            return _folder_model(path).eval(), f'local-dir:{path}'
        return _file_model(model_name, path).eval(), str(path)
    except PretrainedWeightsError as e:  # messages that start with the file's path name it once
        message = str(e)
        raise PretrainedWeightsError(
            f'--weights {message}' if message.startswith(str(path)) else f'--weights {weights}: {message}') from e


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
def predict_topk(model: nn.Module, image: str, k: int = 5, img_size: Optional[int] = None) -> List[Dict[str, Any]]:
    """Top-``k`` classes of ``image`` (any file PIL reads) under ``model``'s own preprocessing (its data config),
    at ``img_size`` x ``img_size`` pixels if given (else the size the data config says).

    Returns ``min(k, num_classes)`` dicts (best first): ``index``, ``prob`` (softmax, 0..1), ``label`` and
    ``description``. Raises FileNotFoundError / IsADirectoryError / ValueError naming ``image``.
    """
    from PIL import Image, UnidentifiedImageError
    from timm.data import create_transform, resolve_data_config

    if k < 1:
        raise ValueError(f'k (--top-k) must be >= 1, got {k}')
    if img_size is not None and img_size < 16:
        raise ValueError(f'img_size (--img-size) must be >= 16 (GhostNet downsamples by 32), got {img_size}')
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
    size = {'input_size': (model.in_chans, img_size, img_size)} if img_size else {}
    transform = create_transform(**resolve_data_config(size, model=model))
    x = transform(img).unsqueeze(0)  # (1, C, H, W)
    probs = model(x).softmax(dim=-1)[0]
    top = probs.topk(min(k, probs.numel()))
    names, descriptions = class_labels(model) or ([str(i) for i in range(model.num_classes)], [''] * model.num_classes)
    return [dict(index=int(i), prob=float(p), label=names[int(i)], description=descriptions[int(i)])
            for p, i in zip(top.values, top.indices)]


def _cmd_predict(args: Any) -> int:
    from .inference import compile_report, inference_model

    for image in args.image:
        if not Path(image).exists():
            raise FileNotFoundError(f'IMAGE {image}: no such file')
        if Path(image).is_dir():
            raise IsADirectoryError(f'IMAGE {image} is a folder; give image files')
    model, source = load_model(args.model, args.weights, args.tag)
    # folded and channels_last; compiled only when asked: one compile (seconds) outweighs many eager images
    fast = inference_model(model, compile=args.compile)
    arch = model.pretrained_cfg.get('architecture', args.model)
    size = f'{args.img_size}x{args.img_size}' if args.img_size else 'x'.join(
        str(s) for s in model.pretrained_cfg.get('input_size', ())[1:])
    for image in args.image:
        rows = predict_topk(fast, image, args.top_k, img_size=args.img_size)
        print(f'{arch} ({source}, {size} px) on {image}:')
        for rank, r in enumerate(rows, 1):
            text = f'{r["label"]}  {r["description"]}' if r['description'] else r['label']
            print(f'{rank:>3}. {100 * r["prob"]:6.2f} %  {text}')
    if args.compile:
        print(f'inference model: {"; ".join(compile_report(fast))}')
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
    p.add_argument('image', metavar='IMAGE', nargs='+', help='image files')
    add_model_arguments(p)
    p.add_argument('--top-k', type=int, default=5, help='classes to show (default 5)')
    p.add_argument('--img-size', type=int, default=None, metavar='PIXELS',
                   help="input size (default: the weights' own: config.json beside them, the image size a train.py "
                        "checkpoint was trained at, or the pretrained cfg's)")
    p.add_argument('--compile', action='store_true',
                   help='compile the folded model with inductor (timm_ghost.inference_model): seconds once, then '
                        'faster per image; worth it for many images (default: the folded eager model)')
    p.set_defaults(func=_cmd_predict)
