"""Where pretrained weights come from: ``prepare_pretrained`` resolves every timm weight source to a local file.

Remote weights (Hugging Face Hub, URLs) are read only from safetensors; local pickles (``.pth`` / ``.bin``) load
with ``torch.load(weights_only=True)`` through timm's own loader. ``prepare_pretrained`` resolves every timm
weight source (``pretrained=True``, ``pretrained_cfg_overlay=dict(hf_hub_id=...)`` / ``dict(url=...)`` /
``dict(file=...)``, ``hf-hub:``, ``local-dir:``) to a local file before timm's ``load_pretrained`` runs, so the
in_chans / num_classes adaptation stays timm's; ``checkpoint_filter_fn`` maps checkpoints onto the model's keys.

One module per source: Hub repositories in :mod:`timm_ghost.hub_download`, PaddleClas ``.pdparams`` (files and
release URLs) in :mod:`timm_ghost.paddle`, safetensors URLs here (cached by :mod:`timm_ghost._cache`, locked and
checked on every read). ``cache_dir`` means what it means to ``timm.create_model`` for every source: the Hub cache
folder for Hub repositories, and the folder in place of ``torch.hub.get_dir()/checkpoints`` for URLs.

Private timm / huggingface_hub names are reached only through :mod:`timm_ghost._compat`, when a download needs them.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.models import PretrainedCfg, list_pretrained, resolve_pretrained_cfg

from . import _cache, _compat, _http, paddle
from ._http import sha256_file
from .errors import PretrainedWeightsError
from .hub_download import PICKLE_WEIGHTS_NAMES, SAFE_WEIGHTS_NAME, download_safetensors, hub_cache_dir

__all__ = [
    'PretrainedWeightsError', 'prepare_pretrained', 'checkpoint_filter_fn', 'download_safetensors', 'url_cache_path',
    'sha256_file', 'SAFE_WEIGHTS_NAME', 'PICKLE_WEIGHTS_NAMES', 'cache_dir',
]

# keys written by the thop profiler into some of the authors' checkpoints
_PROFILER_KEYS = ('total_ops', 'total_params')


def _weights_only_cfg(cfg: PretrainedCfg, path: Path) -> PretrainedCfg:
    """``cfg`` handing timm the tensors of the local pickle ``path``, read weights-only here: timm before 1.0.26
    unpickles local files with ``weights_only=False`` (see :func:`timm_ghost._compat.timm_loads_weights_only`)."""
    return dataclasses.replace(cfg, state_dict=_compat.load_state_dict_weights_only(path), file=None)


def _pretrained_tags(variant: str) -> list:
    return list_pretrained(f'{variant}.*')


def prepare_pretrained(
        variant: str,
        pretrained: bool,
        pretrained_cfg: Optional[Union[str, Dict[str, Any], PretrainedCfg]],
        overlay: Optional[Dict[str, Any]],
        cache_dir: Optional[Union[str, Path]] = None,
) -> Tuple[Any, Optional[Dict[str, Any]], Optional[Dict[str, Any]]]:
    """Resolve the weight source of ``variant`` to a local file.

    Args:
        variant: registered model name (``ghostnet_100``).
        pretrained: whether weights are wanted at all.
        pretrained_cfg: tag, dict or ``PretrainedCfg`` as ``timm.create_model`` passes it.
        overlay: ``pretrained_cfg_overlay``.
        cache_dir: ``timm.create_model``'s: the Hub cache folder for Hub repositories, the folder in place of
            ``torch.hub.get_dir()/checkpoints`` for URLs (PaddleClas's and safetensors); default theirs.
    Returns:
        ``(pretrained_cfg, overlay, reported_cfg)`` for ``build_model_with_cfg``: unchanged and ``None`` when not
        ``pretrained``; otherwise a cfg whose ``file`` is the local weights, no overlay, and the cfg dict the model
        should report (with the Hub id / URL / file as given).
    Raises:
        PretrainedWeightsError: no weights for this tag, a pickle offered over the network, or a download failure
            (naming the tag, the source, the cause and the ways round it).
    """
    if not pretrained:
        return pretrained_cfg, overlay, None
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=overlay)
    what = f'{variant}.{cfg.tag}' if cfg.tag else variant  # how errors name the weights
    if not cfg.has_weights and cfg.state_dict is None:
        tags = _pretrained_tags(variant)
        raise PretrainedWeightsError(
            f'{what} has no pretrained weights. Pretrained tags of {variant}: {", ".join(tags) or "none"}'
            f'{"" if tags else " (other GhostNet weights: " + ", ".join(list_pretrained("ghostnet_*")) + ")"}. '
            f'Use pretrained=False for random init, or pretrained_cfg_overlay=dict(file=...) for your own weights.')
    source, location = _compat.resolve_pretrained_source()(cfg.to_dict())
    if source == 'state_dict':
        return cfg, None, None
    if source == 'hf-hub':
        repo, filename = location if isinstance(location, (tuple, list)) else (location, None)
        local = download_safetensors(repo, filename, cache_dir=cache_dir, what=what)
    elif source == 'url' and paddle.is_pdparams(str(location)):  # PaddleClas's releases: converted once, cached
        local = paddle.download_paddle_weights(str(location), cache_dir=cache_dir, what=what)
    elif source == 'url':
        local = download_url(str(location), cache_dir=cache_dir, what=what)
    elif source == 'local-dir':
        local = _local_dir_weights(Path(location))
        if local.suffix != '.safetensors' and not _compat.timm_loads_weights_only():
            return _weights_only_cfg(cfg, local), None, cfg.to_dict()
    elif source == 'file':
        local = Path(location)
        if not local.is_file():
            raise PretrainedWeightsError(f'{what}: pretrained file not found: {location}')
        if paddle.looks_like_pdparams(local):  # timm's loader reads no Paddle pickles: convert, hand over tensors
            return dataclasses.replace(cfg, state_dict=paddle.load_pdparams(local), file=None), None, cfg.to_dict()
        if local.suffix != '.safetensors' and not _compat.timm_loads_weights_only():
            return _weights_only_cfg(cfg, local), None, cfg.to_dict()
    else:
        raise PretrainedWeightsError(f'{variant}: no usable weight source in its pretrained_cfg ({cfg})')
    load_cfg = dataclasses.replace(
        cfg, file=str(local), hf_hub_id=None, hf_hub_filename=None, url=None, source=None, custom_load=False)
    return load_cfg, None, cfg.to_dict()


def _url_cache_root(cache_dir: Optional[Union[str, os.PathLike]] = None) -> Path:
    base = Path(cache_dir) if cache_dir is not None else Path(torch.hub.get_dir()) / 'checkpoints'
    return base / 'timm_ghost'


def url_cache_path(url: str, cache_dir: Optional[Union[str, os.PathLike]] = None) -> Path:
    """Where :func:`download_url` keeps ``url``: ``<cache_dir or torch.hub.get_dir()/checkpoints>/timm_ghost/<url
    hash>/<file name>`` (timm's URL downloads live in that checkpoints folder too), a folder per URL since many URLs end
    in the same ``model.safetensors``; the folder also holds the entry's record (:mod:`timm_ghost._cache`)."""
    name = os.path.basename(url.split('?')[0]) or 'model.safetensors'
    return _url_cache_root(cache_dir) / _http.url_key(url) / name


def url_cache_entry(url: str, cache_dir: Optional[Union[str, os.PathLike]] = None) -> _cache.CacheEntry:
    """The cache entry of a safetensors URL (see :func:`url_cache_path`)."""
    target = url_cache_path(url, cache_dir)
    return _cache.CacheEntry(target.parent.parent, target.parent.name, target.name, url)


def download_url(url: str, cache_dir: Optional[Union[str, os.PathLike]] = None, what: Optional[str] = None) -> Path:
    """A ``.safetensors`` URL, downloaded once into the cache (huggingface_hub's HTTP client: one bounded HEAD request,
    ``HF_HUB_DOWNLOAD_TIMEOUT`` per read, its resume attempts, its progress bar), locked against other processes,
    checked against the sha256 recorded on first download at every read; with ``HF_HUB_OFFLINE=1`` only the cache.

    Raises:
        PretrainedWeightsError: a URL that is not safetensors, or a download / cache failure, naming ``what`` (the
            tag), the URL, the cause and the ways round it.
    """
    what = what or url
    if not url.split('?')[0].endswith('.safetensors'):
        raise PretrainedWeightsError(
            f'{what}: {url}: remote weights are loaded only from .safetensors files, never from pickles')
    entry = url_cache_entry(url, cache_dir)
    target = entry.path
    ways = (f'Ways round it: download {url} where it can be reached and pass pretrained_cfg_overlay=dict(file='
            f'\'/path/to/{target.name}\'); or pass cache_dir= (or set TORCH_HOME) to a copy of a cache that holds it '
            f'(this one: {entry.root.parent})')

    def make(folder: Path) -> Dict[str, Any]:
        path = _http.fetch_url(url, folder / target.name, what, ways)
        return {'sha256': sha256_file(path), 'size': path.stat().st_size}

    return _cache.fetch_entry(entry, make, what, offline=_http.is_offline(),
                              offline_hint=f'load it once online. {ways}')


def _local_dir_weights(folder: Path) -> Path:
    if not folder.is_dir():
        raise PretrainedWeightsError(f'local-dir: {folder} is not a directory')
    for name in (SAFE_WEIGHTS_NAME, *PICKLE_WEIGHTS_NAMES):
        if (folder / name).is_file():
            return folder / name
    raise PretrainedWeightsError(
        f'local-dir: {folder} holds no weights ({SAFE_WEIGHTS_NAME} or {", ".join(PICKLE_WEIGHTS_NAMES)})')


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Map a timm or original-authors (huawei-noah ghostnet_pytorch) checkpoint onto this model's keys.

    Unwraps ``state_dict`` / ``model`` containers, strips DataParallel's ``module.`` prefix, drops profiler
    counters, and raises ``PretrainedWeightsError`` listing every tensor whose shape does not fit (a checkpoint of
    another width, say). The first conv and the classifier are left to timm's in_chans / num_classes adaptation.
    """
    for key in ('state_dict_ema', 'model_ema', 'state_dict', 'model'):
        if isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
            break
    out: Dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        if k.startswith('module.'):
            k = k[len('module.'):]
        if k.rsplit('.', 1)[-1] in _PROFILER_KEYS or not isinstance(v, torch.Tensor):
            continue
        out[k] = v
    own = model.state_dict()
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    adapted = {f'{cfg.get("first_conv", "conv_stem")}.weight'}
    adapted |= {f'{cfg.get("classifier", "classifier")}.{p}' for p in ('weight', 'bias')}
    bad = [  # in the model's order: the stem first
        f'{k}: checkpoint {tuple(out[k].shape)} vs model {tuple(v.shape)}'
        for k, v in own.items() if k in out and k not in adapted and out[k].shape != v.shape
    ]
    if bad:
        arch = cfg.get('architecture', type(model).__name__)
        more = f' (and {len(bad) - 8} more)' if len(bad) > 8 else ''
        raise PretrainedWeightsError(
            f'checkpoint does not fit {arch}: {len(bad)} tensors differ in shape, e.g. '
            + '; '.join(bad[:8]) + more + '. Was it made for another width?')
    return out


def cache_dir() -> str:
    """Where huggingface_hub caches downloads (``HF_HUB_CACHE`` / ``HF_HOME``)."""
    return hub_cache_dir()
