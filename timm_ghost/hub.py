"""Where pretrained weights come from, and how they are checked.

Remote weights (Hugging Face Hub, URLs) are read only from safetensors; local pickles (``.pth`` / ``.bin``) load
with ``torch.load(weights_only=True)`` through timm's own loader. ``prepare_pretrained`` resolves every timm
weight source (``pretrained=True``, ``pretrained_cfg_overlay=dict(hf_hub_id=...)`` / ``dict(file=...)``,
``hf-hub:``, ``local-dir:``) to a local file before timm's ``load_pretrained`` runs, so the in_chans / num_classes
adaptation stays timm's.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.models import get_pretrained_cfg, list_pretrained, resolve_pretrained_cfg
from timm.models._builder import _resolve_pretrained_source
from timm.models._pretrained import PretrainedCfg

__all__ = [
    'PretrainedWeightsError', 'prepare_pretrained', 'checkpoint_filter_fn', 'download_safetensors',
    'SAFE_WEIGHTS_NAME', 'PICKLE_WEIGHTS_NAMES',
]

SAFE_WEIGHTS_NAME = 'model.safetensors'
PICKLE_WEIGHTS_NAMES = ('pytorch_model.bin', 'model.pth', 'pytorch_model.pth')
# keys written by the thop profiler into some of the authors' checkpoints
_PROFILER_KEYS = ('total_ops', 'total_params')


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights could not be found, fetched or matched to the model."""


def _pretrained_tags(variant: str) -> list:
    return list_pretrained(f'{variant}.*')


def prepare_pretrained(
        variant: str,
        pretrained: bool,
        pretrained_cfg: Optional[Union[str, Dict[str, Any], PretrainedCfg]],
        overlay: Optional[Dict[str, Any]],
) -> Tuple[Any, Optional[Dict[str, Any]], Optional[Dict[str, Any]]]:
    """Resolve the weight source of ``variant`` to a local file.

    Returns ``(pretrained_cfg, overlay, reported_cfg)`` for ``build_model_with_cfg``: unchanged when not
    ``pretrained``; otherwise a cfg whose ``file`` is the local weights and the cfg dict the model should report
    (with its original Hub id / URL).
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
    source, location = _resolve_pretrained_source(cfg.to_dict())
    if source == 'state_dict':
        return cfg, None, None
    if source == 'hf-hub':
        repo, filename = location if isinstance(location, (tuple, list)) else (location, None)
        local = download_safetensors(repo, filename)
    elif source == 'url':
        local = _download_url(str(location))
    elif source == 'local-dir':
        local = _local_dir_weights(Path(location))
    elif source == 'file':
        local = Path(location)
        if not local.is_file():
            raise PretrainedWeightsError(f'pretrained file not found: {location}')
    else:
        raise PretrainedWeightsError(f'{variant}: no usable weight source in its pretrained_cfg ({cfg})')
    load_cfg = dataclasses.replace(
        cfg, file=str(local), hf_hub_id=None, hf_hub_filename=None, url=None, source=None, custom_load=False)
    return load_cfg, None, cfg.to_dict()


def download_safetensors(model_id: str, filename: Optional[str] = None) -> Path:
    """Download (or find in the cache) ``filename`` (default ``model.safetensors``) of Hub repo ``model_id``.

    ``model_id`` may pin a revision as ``org/repo@revision``. Only safetensors files are accepted.
    """
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from timm.models._hub import hf_split

    repo_id, revision = hf_split(model_id)
    filename = filename or SAFE_WEIGHTS_NAME
    where = f'{repo_id}{"@" + revision if revision else ""}'
    if not filename.endswith('.safetensors'):
        raise PretrainedWeightsError(
            f'{where}/{filename}: remote weights are loaded only from safetensors files; '
            f'convert it with `timm-ghost convert` and publish model.safetensors')
    try:
        path = hf_hub_download(repo_id, filename, revision=revision, etag_timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except RepositoryNotFoundError as e:
        raise PretrainedWeightsError(
            f'Hub repository {repo_id} not found (looking for {filename}) at {constants.ENDPOINT}') from e
    except RevisionNotFoundError as e:
        raise PretrainedWeightsError(f'revision {revision!r} not found in Hub repository {repo_id} ({filename})') from e
    except EntryNotFoundError as e:
        pickles = _remote_pickles(repo_id, revision)
        if pickles:
            raise PretrainedWeightsError(
                f'Hub repository {where} has no {filename}, only pickle weights ({", ".join(pickles)}); '
                f'remote pickles are never loaded. Convert them with `timm-ghost convert` and upload '
                f'model.safetensors') from e
        raise PretrainedWeightsError(f'file {filename} not found in Hub repository {where}') from e
    except OfflineModeIsEnabled as e:
        raise PretrainedWeightsError(
            f'{where}/{filename} is not in the cache and HF_HUB_OFFLINE is set') from e
    except Exception as e:  # connection refused, timeouts, 5xx: one clear line, the cause chained
        raise PretrainedWeightsError(
            f'could not download {filename} from Hub repository {where} at {constants.ENDPOINT}: '
            f'{type(e).__name__}: {e}') from e
    return Path(path)


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


def _download_url(url: str) -> Path:
    if not url.split('?')[0].endswith('.safetensors'):
        raise PretrainedWeightsError(
            f'{url}: remote weights are loaded only from .safetensors files, never from pickles')
    from timm.models._hub import download_cached_file
    return Path(download_cached_file(url, check_hash=False, progress=True))


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
    bad = [
        f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}'
        for k, v in out.items() if k in own and k not in adapted and v.shape != own[k].shape
    ]
    if bad:
        arch = cfg.get('architecture', type(model).__name__)
        more = f' (and {len(bad) - 8} more)' if len(bad) > 8 else ''
        raise PretrainedWeightsError(
            f'checkpoint does not fit {arch}: {len(bad)} tensors differ in shape, e.g. '
            + '; '.join(bad[:8]) + more + '. Was it made for another width?')
    return out


def default_hub_id(variant: str) -> Optional[str]:
    """The Hub repository of ``variant``'s default weights, or None."""
    cfg = get_pretrained_cfg(variant)
    return cfg.hf_hub_id if cfg is not None else None


def cache_dir() -> str:
    """Where huggingface_hub caches downloads (``HF_HUB_CACHE`` / ``HF_HOME``)."""
    from huggingface_hub import constants
    return os.fspath(constants.HF_HUB_CACHE)
