"""PaddleClas's release URLs: downloaded once, converted to timm's layout, cached as safetensors.

Each URL has one entry, ``<cache>/timm_ghost_paddle/<stem>-<url hash>/`` holding ``model.safetensors`` and the
record :mod:`timm_ghost._cache` writes with it (the download's sha256 and size, the converted file's, the converter
version); ``<cache>`` is ``cache_dir`` when given (as for every timm weight source), else
``torch.hub.get_dir()/checkpoints`` (``TORCH_HOME`` moves it, as it moves timm's URL downloads).
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Dict, Optional, Union

import torch

from .. import _cache, _http
from ..releases import released_weights
from .mapping import load_pdparams
from .reader import PADDLE_SUFFIX

__all__ = ['CONVERTER_VERSION', 'paddle_cache_dir', 'paddle_cache_entry', 'cached_paddle_weights',
           'download_paddle_weights', 'paddle_ways_round']

_logger = logging.getLogger(__name__)

CONVERTER_VERSION = '2'  # 2: one folder per URL with model.safetensors and its record (1: <sha256>.safetensors)
_CONVERTER = f'timm_ghost.paddle {CONVERTER_VERSION}'  # recorded in each cached file and entry
_CACHE_SUBDIR = 'timm_ghost_paddle'
WEIGHTS_NAME = 'model.safetensors'


def paddle_cache_dir(cache_dir: Optional[Union[str, os.PathLike]] = None) -> Path:
    """Folder of converted PaddleClas weights: ``<cache_dir or torch.hub.get_dir()/checkpoints>/timm_ghost_paddle``
    (``TORCH_HOME`` moves it, as it moves timm's URL downloads)."""
    base = Path(cache_dir) if cache_dir is not None else Path(torch.hub.get_dir()) / 'checkpoints'
    return base / _CACHE_SUBDIR


def paddle_cache_entry(url: str, cache_dir: Optional[Union[str, os.PathLike]] = None) -> _cache.CacheEntry:
    """The cache entry of ``url``: one folder per source URL, named by the file's stem and 16 hex digits of the URL's
    sha256."""
    stem = os.path.basename(url.split('?')[0])
    stem = stem[:-len(PADDLE_SUFFIX)] if stem.lower().endswith(PADDLE_SUFFIX) else stem
    stem = re.sub(r'[^A-Za-z0-9_.-]', '_', stem)[:80] or 'weights'
    return _cache.CacheEntry(paddle_cache_dir(cache_dir), f'{stem}-{_http.url_key(url)}', WEIGHTS_NAME, url,
                             match={'converter': _CONVERTER})


def cached_paddle_weights(url: str, cache_dir: Optional[Union[str, os.PathLike]] = None) -> Optional[Path]:
    """The converted safetensors of ``url`` already in the cache, when its record names this URL and this converter
    version and the file still has the size and sha256 recorded when it was written; else None."""
    return _cache.read_entry(paddle_cache_entry(url, cache_dir))[0]


def paddle_ways_round(url: str, what: str, cache_root: Path) -> str:
    """What to do when ``url`` cannot be fetched here, for errors."""
    name = os.path.basename(url.split('?')[0]) or 'weights.pdparams'
    model = what.split('.')[0] if what.startswith('ghostnet_') else 'ghostnet_100'
    return (f'Ways round it: download {url} where it can be reached and pass '
            f'pretrained_cfg_overlay=dict(file=\'/path/to/{name}\'); or convert it there with `timm-ghost convert '
            f'{name} OUT --model {model}` and load \'local-dir:OUT\'; or pass cache_dir= (or set TORCH_HOME) to a '
            f'copy of a cache that holds it (this one: {cache_root})')


def _name_of(url: str) -> str:
    release = released_weights(url)
    return release.tag if release is not None else os.path.basename(url.split('?')[0]) or url


def download_paddle_weights(url: str, cache_dir: Optional[Union[str, os.PathLike]] = None,
                            what: Optional[str] = None) -> Path:
    """The timm safetensors for a PaddleClas ``.pdparams`` URL: from the cache, else downloaded, converted, cached.

    The download (:func:`timm_ghost._http.fetch_url`: one bounded HEAD request, then huggingface_hub's ``http_get``
    with its progress bar, ``HF_HUB_DOWNLOAD_TIMEOUT`` per read and resume) lands in the entry's temporary folder and
    is converted there; the entry appears with ``model.safetensors`` (metadata: source URL, sha256, converter) and its
    record, or not at all, so a cut transfer, a refused pickle or a failed conversion leaves nothing. Processes
    sharing the cache fetch once (:mod:`timm_ghost._cache`). With ``HF_HUB_OFFLINE=1`` only the cache is read.

    Args:
        url: the ``.pdparams`` file.
        cache_dir: the cache folder (default ``torch.hub.get_dir()/checkpoints``), as ``timm.create_model`` takes it.
        what: how errors name the weights (default: the release's tag, else the file name).
    Raises:
        PretrainedWeightsError: naming the weights and the URL, offline without a cached copy, when the download
            fails (with its cause and the ways round it), or the cache must be written and cannot be.
        ConversionError: the file is not a PaddleClas GhostNet checkpoint.
    """
    from safetensors.torch import save_file

    what = what or _name_of(url)
    entry = paddle_cache_entry(url, cache_dir)
    ways = paddle_ways_round(url, what, entry.root)
    name = os.path.basename(url.split('?')[0]) or 'weights.pdparams'

    def make(folder: Path) -> Dict[str, object]:
        raw = _http.fetch_url(url, folder / name, what, ways)
        download = {'sha256': _http.sha256_file(raw), 'size': raw.stat().st_size}
        tensors = load_pdparams(raw, source=url)
        raw.unlink()  # the pickle is never kept
        save_file(tensors, str(folder / WEIGHTS_NAME), metadata={
            'format': 'pt', 'source_url': url, 'source_sha256': download['sha256'], 'converter': _CONVERTER})
        _logger.info(f'{url} (sha256 {download["sha256"]}) converted into {entry.folder}')
        return download

    return _cache.fetch_entry(entry, make, what, offline=_http.is_offline(),
                              offline_hint=f'load it once online. {ways}')
