"""Where pretrained weights come from, and how they are checked.

Remote weights (Hugging Face Hub, URLs) are read only from safetensors; local pickles (``.pth`` / ``.bin``) load
with ``torch.load(weights_only=True)`` through timm's own loader. ``prepare_pretrained`` resolves every timm
weight source (``pretrained=True``, ``pretrained_cfg_overlay=dict(hf_hub_id=...)`` / ``dict(file=...)``,
``hf-hub:``, ``local-dir:``) to a local file before timm's ``load_pretrained`` runs, so the in_chans / num_classes
adaptation stays timm's.

Hub downloads go through ``huggingface_hub.hf_hub_download`` (its cache, lock, progress bar and offline mode). One
bounded HEAD request comes first, because on a failing HEAD ``hf_hub_download`` retries with a fixed 60 s timeout
and exponential backoff (minutes against a stalled server); ours gives up after two tries of at most
``HF_HUB_ETAG_TIMEOUT`` seconds of wall-clock time each, falling back to a cached copy like ``hf_hub_download``
does. Downloaded safetensors files are checked against the sha256 the Hub advertises for them.

PaddleClas ``.pdparams`` files and URLs go through :mod:`timm_ghost.paddle`: read by an unpickler that admits numpy
arrays only, converted to timm's layout, URL downloads cached as safetensors.

Private timm / huggingface_hub names are reached only through :mod:`timm_ghost._compat`, when a download needs them.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.models import PretrainedCfg, list_pretrained, resolve_pretrained_cfg

from . import _compat, _http, paddle
from ._http import sha256_file
from .errors import PretrainedWeightsError

__all__ = [
    'PretrainedWeightsError', 'prepare_pretrained', 'checkpoint_filter_fn', 'download_safetensors', 'url_cache_path',
    'sha256_file', 'SAFE_WEIGHTS_NAME', 'PICKLE_WEIGHTS_NAMES',
]

_logger = logging.getLogger(__name__)

SAFE_WEIGHTS_NAME = 'model.safetensors'
PICKLE_WEIGHTS_NAMES = ('pytorch_model.bin', 'model.pth', 'pytorch_model.pth')
# keys written by the thop profiler into some of the authors' checkpoints
_PROFILER_KEYS = ('total_ops', 'total_params')
_SHA256 = re.compile(r'[0-9a-f]{64}')
_COMMIT_HASH = re.compile(r'[0-9a-f]{40}')


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
        cache_dir: Hub cache folder (default: huggingface_hub's, ``HF_HUB_CACHE`` / ``HF_HOME``).
    Returns:
        ``(pretrained_cfg, overlay, reported_cfg)`` for ``build_model_with_cfg``: unchanged and ``None`` when not
        ``pretrained``; otherwise a cfg whose ``file`` is the local weights, no overlay, and the cfg dict the model
        should report (with the Hub id / URL / file as given).
    Raises:
        PretrainedWeightsError: no weights for this tag, a pickle offered over the network, or a download failure.
    """
    if not pretrained:
        return pretrained_cfg, overlay, None
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=overlay)
    if not cfg.has_weights and cfg.state_dict is None:
        tags = _pretrained_tags(variant)
        name = f'{variant}.{cfg.tag}' if cfg.tag else variant
        raise PretrainedWeightsError(
            f'{name} has no pretrained weights. Pretrained tags of {variant}: {", ".join(tags) or "none"}'
            f'{"" if tags else " (other GhostNet weights: " + ", ".join(list_pretrained("ghostnet_*")) + ")"}. '
            f'Use pretrained=False for random init, or pretrained_cfg_overlay=dict(file=...) for your own weights.')
    source, location = _compat.resolve_pretrained_source()(cfg.to_dict())
    if source == 'state_dict':
        return cfg, None, None
    if source == 'hf-hub':
        repo, filename = location if isinstance(location, (tuple, list)) else (location, None)
        local = download_safetensors(repo, filename, cache_dir=cache_dir)
    elif source == 'url' and paddle.is_pdparams(str(location)):  # PaddleClas's releases: converted once, cached
        local = paddle.download_paddle_weights(str(location), cache_dir=cache_dir)
    elif source == 'url':
        local = _download_url(str(location))
    elif source == 'local-dir':
        local = _local_dir_weights(Path(location))
    elif source == 'file':
        local = Path(location)
        if not local.is_file():
            raise PretrainedWeightsError(f'pretrained file not found: {location}')
        if paddle.looks_like_pdparams(local):  # timm's loader reads no Paddle pickles: convert, hand over tensors
            return dataclasses.replace(cfg, state_dict=paddle.load_pdparams(local), file=None), None, cfg.to_dict()
    else:
        raise PretrainedWeightsError(f'{variant}: no usable weight source in its pretrained_cfg ({cfg})')
    load_cfg = dataclasses.replace(
        cfg, file=str(local), hf_hub_id=None, hf_hub_filename=None, url=None, source=None, custom_load=False)
    return load_cfg, None, cfg.to_dict()


def download_safetensors(
        model_id: str,
        filename: Optional[str] = None,
        cache_dir: Optional[Union[str, Path]] = None,
) -> Path:
    """Download (or find in the cache) ``filename`` (default ``model.safetensors``) of Hub repo ``model_id``.

    Args:
        model_id: ``org/repo``, optionally pinned as ``org/repo@revision`` (branch, tag or commit hash).
        filename: a ``.safetensors`` file of the repo; pickles are refused.
        cache_dir: Hub cache folder (default: huggingface_hub's).
    Returns:
        Path of the cached file (a snapshot entry of huggingface_hub's cache).
    Raises:
        PretrainedWeightsError: naming the repository, revision and file, for a missing repository / revision /
            file (and which pickles the repo offers instead), an unreachable or failing server (after at most
            ``2 * HF_HUB_ETAG_TIMEOUT + 1`` s when no cached copy exists), a transfer cut short, or a cached file
            whose sha256 differs from the Hub's.
    """
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id, _, revision = model_id.partition('@')  # org/repo@revision, as timm writes hf_hub_id
    revision = revision or None
    filename = filename or SAFE_WEIGHTS_NAME
    where = f'{repo_id}{"@" + revision if revision else ""}'
    if not filename.endswith('.safetensors'):
        raise PretrainedWeightsError(
            f'{where}/{filename}: remote weights are loaded only from safetensors files; '
            f'convert it with `timm-ghost convert` and publish model.safetensors')
    offline = constants.is_offline_mode() if hasattr(constants, 'is_offline_mode') else constants.HF_HUB_OFFLINE
    if revision and _COMMIT_HASH.fullmatch(revision):
        cached = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision)
        if isinstance(cached, str):  # a commit never changes: no request needed
            return _verified(Path(cached), where, filename)
    try:
        if not offline:
            probe_error = _probe(repo_id, filename, revision)
            if probe_error is not None:
                cached = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision)
                if isinstance(cached, str):
                    _logger.warning(f'{constants.ENDPOINT} not reachable ({probe_error}); using the cached {where}/'
                                    f'{filename}')
                    return _verified(Path(cached), where, filename)
                raise PretrainedWeightsError(
                    f'could not reach Hub repository {where} (file {filename}) at {constants.ENDPOINT} after '
                    f'{_http.PROBE_TRIES} tries: {probe_error}. No cached copy; check the connection, HF_ENDPOINT, or '
                    f'raise HF_HUB_ETAG_TIMEOUT (now {constants.HF_HUB_ETAG_TIMEOUT} s)')
        path = hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir)
    except PretrainedWeightsError:
        raise
    except GatedRepoError as e:
        raise PretrainedWeightsError(
            f'Hub repository {repo_id} is gated (looking for {filename}): {_auth_hint()}, after accepting its terms '
            f'on the repository page') from e
    except RepositoryNotFoundError as e:
        status = e.response.status_code if e.response is not None else None
        if status == 401:  # the Hub's answer for a private repository asked without a (suitable) token
            raise PretrainedWeightsError(
                f'Hub repository {repo_id} not found at {constants.ENDPOINT}, or private (HTTP 401, looking for '
                f'{filename}): {_auth_hint()}') from e
        raise PretrainedWeightsError(
            f'Hub repository {repo_id} not found (looking for {filename}) at {constants.ENDPOINT}') from e
    except RevisionNotFoundError as e:
        raise PretrainedWeightsError(f'revision {revision!r} not found in Hub repository {repo_id} ({filename})') from e
    except LocalEntryNotFoundError as e:  # before EntryNotFoundError, its base class
        if offline:
            raise PretrainedWeightsError(
                f'{where}/{filename} is not in the cache ({cache_dir or constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE '
                f'is set; download it once online') from e
        raise PretrainedWeightsError(
            f'could not download {filename} from Hub repository {where} at {constants.ENDPOINT}, and no cached '
            f'copy: {_cause(e)}') from e
    except EntryNotFoundError as e:
        pickles = _remote_pickles(repo_id, revision)
        if pickles:
            raise PretrainedWeightsError(
                f'Hub repository {where} has no {filename}, only pickle weights ({", ".join(pickles)}); '
                f'remote pickles are never loaded. Convert them with `timm-ghost convert` and upload '
                f'model.safetensors') from e
        raise PretrainedWeightsError(f'file {filename} not found in Hub repository {where}') from e
    except Exception as e:  # connection refused, timeouts, 5xx, a transfer cut short: one line, the cause chained
        if _http.is_timeout(e):
            raise PretrainedWeightsError(
                f'the transfer of {filename} from Hub repository {where} stopped: no data within '
                f'HF_HUB_DOWNLOAD_TIMEOUT={constants.HF_HUB_DOWNLOAD_TIMEOUT} s, nor after huggingface_hub\'s resume '
                f'attempts; nothing was kept in the cache. Try again, or raise HF_HUB_DOWNLOAD_TIMEOUT') from e
        raise PretrainedWeightsError(
            f'could not download {filename} from Hub repository {where} at {constants.ENDPOINT}: '
            f'{type(e).__name__}: {(str(e).splitlines() or [""])[0]}') from e
    return _verified(Path(path), where, filename)


def _probe(repo_id: str, filename: str, revision: Optional[str]) -> Optional[str]:
    """One bounded HEAD on the file's resolve URL (:func:`timm_ghost._http.probe`). Returns None when the server
    answered (the file's metadata, or a 4xx that ``hf_hub_download`` will turn into the right error), else a
    description of the last connection / timeout / 5xx failure."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    url = hf_hub_url(repo_id, filename, revision=revision)
    try:
        _http.probe(lambda timeout: get_hf_file_metadata(url, timeout=timeout))
    except HfHubHTTPError:
        return None  # 401/404...: a definite answer, raised with its meaning by hf_hub_download
    except _http.Unreachable as e:
        return str(e)
    return None


def _auth_hint() -> str:
    """What to do about a 401: send a token, or one that can read the repository."""
    from huggingface_hub import get_token
    try:
        token = get_token()
    except Exception:  # a failing OIDC exchange, say: treat as no token
        token = None
    if token:
        return 'the token in use (HF_TOKEN or `hf auth login`) cannot read it; use one of an account with access'
    return 'no token was sent; log in with `hf auth login` or set HF_TOKEN to a token of an account with access'


def _cause(e: BaseException) -> str:
    cause = e.__cause__ or e.__context__
    return f'{type(cause).__name__}: {cause}' if cause is not None else str(e)


def _verified(path: Path, where: str, filename: str) -> Path:
    """Check a cached file against the sha256 the Hub advertised for it (its blob's name in the cache); a mismatch
    removes the entry and raises."""
    blob = path.resolve()
    if _SHA256.fullmatch(blob.name):
        actual = sha256_file(blob)
        if actual != blob.name:
            for entry in (path, blob):  # never leave a poisoned entry: the next try downloads again
                try:
                    entry.unlink()
                except OSError:
                    pass
            raise PretrainedWeightsError(
                f'{where}/{filename}: the downloaded file has sha256 {actual}, the Hub advertised '
                f'{blob.name}; removed it from the cache, try again')
    return path


def _remote_pickles(repo_id: str, revision: Optional[str]) -> list:
    from huggingface_hub import file_exists
    found = []
    for name in PICKLE_WEIGHTS_NAMES:
        try:
            if file_exists(repo_id, name, revision=revision):
                found.append(name)
        except Exception:
            break
    return found


def url_cache_path(url: str) -> Path:
    """Where :func:`_download_url` keeps ``url``: under torch hub's checkpoint folder (``torch.hub.get_dir()`` /
    ``checkpoints``, as timm's own URL downloads), in a subfolder named by the URL's hash, since many URLs end in the
    same ``model.safetensors``."""
    name = os.path.basename(url.split('?')[0])
    key = _http.url_key(url)
    return Path(torch.hub.get_dir()) / 'checkpoints' / 'timm_ghost' / key / name


def _download_url(url: str) -> Path:
    """Download a ``.safetensors`` URL once into torch hub's checkpoint folder (huggingface_hub's HTTP client:
    ``HF_HUB_DOWNLOAD_TIMEOUT`` per read, its resume attempts, its progress bar), written atomically."""
    if not url.split('?')[0].endswith('.safetensors'):
        raise PretrainedWeightsError(
            f'{url}: remote weights are loaded only from .safetensors files, never from pickles')
    target = url_cache_path(url)
    if target.is_file():
        return target
    return _http.download(url, target)


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
    from huggingface_hub import constants
    return os.fspath(constants.HF_HUB_CACHE)
