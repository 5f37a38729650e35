"""PaddleClas GhostNet checkpoints (``.pdparams``) mapped exactly onto timm's GhostNet state dict.

PaddleClas (``ppcls/arch/backbone/model_zoo/ghostnet.py``, Apache-2.0) implements the paper's network with other
names and three differences of form, each mapped without changing timm's architecture:

- the SE reduces to ``C // 4`` channels (timm: ``make_divisible(C / 4, 4)``, never fewer): the extra reduce rows and
  expand columns are zero, and ``relu(0) = 0`` keeps them silent;
- its SE gate is ``clip(x, 0, 1)`` (timm: ``relu6(x + 3) / 6``): the expand conv is scaled by 6 and its bias shifted
  by -3, so that ``(6 x - 3 + 3) / 6 = x``;
- the head conv ``fc_0`` has a BatchNorm and no bias (timm: ``conv_head`` with a bias, no norm): the norm acts on the
  pooled ``1 x 1`` map and folds into ``conv_head``'s weight and bias (torch's ``fuse_conv_bn_weights``), and the
  classifier ``fc_1`` stores its weight transposed.

A ``.pdparams`` file is a pickle (``paddle.save``: a dict of numpy arrays, protocol 2 to 4). It is read with
:class:`RestrictedUnpickler`, which admits numpy's array reconstruction and nothing else: a pickle that names any
other global (one that would run code) is refused before anything runs. Released files are keyed either by
structured names (``conv1._conv.weight``) or by PaddleClas's parameter names (``conv1_weights``); both are read.

Remote ``.pdparams`` (PaddleClas's release URLs) are downloaded once with huggingface_hub's HTTP client, converted, and
cached as safetensors under ``torch.hub.get_dir()/checkpoints/timm_ghost_paddle/``, keyed by the URL and the
download's sha256; later loads read only that file, offline too.
"""
from __future__ import annotations

import io
import logging
import os
import pickle
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import torch

from . import _http
from ._io import atomic_output_file
from .errors import ConversionError, PretrainedWeightsError

__all__ = [
    'PADDLECLAS_BASE_URL', 'PaddleClasWeights', 'PADDLECLAS_WEIGHTS', 'RestrictedUnpickler', 'is_pdparams',
    'read_pdparams', 'paddle_layout', 'convert_paddle_state_dict', 'load_pdparams', 'paddle_cache_dir',
    'cached_paddle_weights', 'download_paddle_weights', 'released_weights', 'looks_like_pdparams',
    'paddle_export_cfg',
]

_logger = logging.getLogger(__name__)

PADDLECLAS_BASE_URL = 'https://paddle-imagenet-models-name.bj.bcebos.com/dygraph/'
PADDLE_SUFFIX = '.pdparams'
PADDLE_BN_EPS = 1e-5  # paddle.nn.BatchNorm's default epsilon, used by every PaddleClas GhostNet norm
CONVERTER_VERSION = '1'
_CONVERTER = f'timm_ghost.paddle {CONVERTER_VERSION}'  # recorded in each cached file
_CACHE_SUBDIR = 'timm_ghost_paddle'
_SHA256 = re.compile(r'[0-9a-f]{64}')


@dataclass(frozen=True)
class PaddleClasWeights:
    """One released PaddleClas GhostNet file and the accuracy PaddleClas reports for it (ImageNet-1k val, 224 px,
    resize 256 / centre crop 224), not measured here."""
    tag: str
    filename: str
    top1: float
    top5: float

    @property
    def url(self) -> str:
        return PADDLECLAS_BASE_URL + self.filename


# PaddleClas's model-zoo table (docs/zh_CN/models/ImageNet1k/GhostNet.md), beside the files it describes.
PADDLECLAS_WEIGHTS: Dict[str, PaddleClasWeights] = {w.tag: w for w in (
    PaddleClasWeights('ghostnet_050.paddle_in1k', 'GhostNet_x0_5_pretrained.pdparams', 66.8, 86.9),
    PaddleClasWeights('ghostnet_100.paddle_in1k', 'GhostNet_x1_0_pretrained.pdparams', 74.0, 91.6),
    PaddleClasWeights('ghostnet_130.paddle_in1k', 'GhostNet_x1_3_pretrained.pdparams', 75.7, 92.5),
    PaddleClasWeights('ghostnet_130.ssld_in1k', 'GhostNet_x1_3_ssld_pretrained.pdparams', 79.4, 94.5),
)}


def released_weights(path_or_url: Union[str, os.PathLike]) -> Optional[PaddleClasWeights]:
    """The released PaddleClas file this path or URL is named like (by file name only), else None."""
    name = os.path.basename(str(path_or_url).split('?')[0])
    return next((w for w in PADDLECLAS_WEIGHTS.values() if w.filename == name), None)


# ------------------------------------------------------------------------------------------------ reading a pickle
def _numpy_globals() -> Dict[Tuple[str, str], Any]:
    """The only globals a ``.pdparams`` pickle may name: numpy's array / dtype reconstruction, under the module paths
    numpy 1.x and 2.x write them with, resolved to the installed numpy's functions (taken from numpy's own
    ``__reduce__`` results, not imported by private path)."""
    import codecs

    import numpy as np

    reconstruct = np.empty(0).__reduce__()[0]  # numpy's ``multiarray._reconstruct``
    frombuffer = np.ones(1).__reduce_ex__(5)[0]  # numpy's ``numeric._frombuffer`` (pickle protocol 5)
    allowed: Dict[Tuple[str, str], Any] = {('numpy', 'ndarray'): np.ndarray, ('numpy', 'dtype'): np.dtype,
                                           ('_codecs', 'encode'): codecs.encode}  # bytes in protocol-2 pickles
    for core in ('numpy.core', 'numpy._core'):
        allowed[(f'{core}.multiarray', '_reconstruct')] = reconstruct
        allowed[(f'{core}.numeric', '_frombuffer')] = frombuffer
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays, dicts, lists, tuples, strings and numbers, and nothing else.

    ``find_class`` is the only way a pickle reaches code (``GLOBAL`` / ``STACK_GLOBAL`` / ``INST`` / ``OBJ`` /
    ``EXT*`` all go through it); it answers only numpy's array reconstruction and raises for every other name, so a
    pickle carrying ``os.system`` or ``builtins.eval`` fails at that opcode, before the call that would run it.
    Persistent ids (torch's storage references) are refused too.
    """

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file)
        self.source = source
        self._allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        found = self._allowed.get((module, name))
        if found is None:
            raise PretrainedWeightsError(
                f'{self.source}: refused to unpickle: the pickle names the global {module}.{name}, and a '
                f'.pdparams file may hold numpy arrays only (nothing in it was run)')
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise PretrainedWeightsError(
            f'{self.source}: refused to unpickle: the pickle uses persistent ids (a torch checkpoint?); a .pdparams '
            f'file is a plain pickle of numpy arrays')


def is_pdparams(path: Union[str, os.PathLike]) -> bool:
    """Whether a path or URL names a Paddle parameter file (``.pdparams``)."""
    return str(path).split('?')[0].lower().endswith(PADDLE_SUFFIX)


_TORCH_LEGACY_MAGIC = b'\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19'  # torch.save's pre-zip format


def looks_like_pdparams(path: Union[str, os.PathLike]) -> bool:
    """Whether a local file is to be read as a Paddle pickle: named ``.pdparams``, or a plain pickle (protocol 2 to 5)
    that is neither torch's zip nor its legacy format nor safetensors (whose 8-byte header length is followed by
    ``{``); whether it holds PaddleClas's GhostNet is then told by its keys."""
    if is_pdparams(path):
        return True
    if str(path).lower().endswith('.safetensors'):
        return False
    try:
        with open(path, 'rb') as f:
            head = f.read(len(_TORCH_LEGACY_MAGIC))
    except OSError:
        return False
    return (head[:1] == b'\x80' and head[1:2] in (b'\x02', b'\x03', b'\x04', b'\x05') and head[8:9] != b'{'
            and head != _TORCH_LEGACY_MAGIC)


def read_pdparams(path: Union[str, os.PathLike], source: Optional[str] = None) -> Dict[str, Any]:
    """The arrays of a ``.pdparams`` file, read with :class:`RestrictedUnpickler`.

    Args:
        path: the file (``paddle.save`` of a state dict, or a legacy ``fluid.save_dygraph`` file).
        source: how to name the file in errors (default: ``path``; the URL for downloads).
    Returns:
        ``{key: numpy.ndarray}`` of every numeric array; other entries (Paddle's ``StructuredToParameterName@@``
        name table) are dropped.
    Raises:
        PretrainedWeightsError: naming the file, when it is missing, not a plain pickle (a zip / torch file),
            truncated, names any global other than numpy's array reconstruction, or holds no numeric arrays.
    """
    import numpy as np

    source = source or str(path)
    try:
        with open(path, 'rb') as f:
            head = f.read(2)
            if not head.startswith(b'\x80'):
                kind = 'a zip archive (a torch checkpoint?)' if head == b'PK' else f'starting with {head!r}'
                raise PretrainedWeightsError(f'{source}: not a .pdparams pickle ({kind})')
            f.seek(0)
            obj = RestrictedUnpickler(f, source).load()
    except PretrainedWeightsError:
        raise
    except FileNotFoundError as e:
        raise PretrainedWeightsError(f'{source}: no such file') from e
    except Exception as e:  # truncated or corrupt pickle: one line naming the file, the cause chained
        raise PretrainedWeightsError(
            f'{source}: not a readable .pdparams pickle: {type(e).__name__}: {e}') from e
    if not isinstance(obj, dict):
        raise PretrainedWeightsError(f'{source}: expected a dict of arrays, got {type(obj).__name__}')
    arrays = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, np.ndarray)}
    odd = [k for k, v in arrays.items() if v.dtype.kind not in 'fiub']
    if odd:
        raise PretrainedWeightsError(f'{source}: non-numeric arrays ({", ".join(odd[:5])})')
    if not arrays:
        raise PretrainedWeightsError(f'{source}: holds no arrays (keys: {", ".join(map(str, list(obj)[:5]))})')
    return arrays


# ------------------------------------------------------------------------------------------------ the key mapping
@dataclass(frozen=True)
class _Unit:
    """A PaddleClas ConvBNLayer / Linear and where it goes in timm's state dict."""
    paddle: str  # structured prefix, e.g. ``_ghostbottleneck_3.ghost_module_1.primary_conv``
    name: str  # parameter-name prefix, e.g. ``_ghostbottleneck_3_ghost_module_1_primary_conv``
    timm: str  # timm prefix of the conv (or linear), e.g. ``blocks.3.0.ghost1.primary_conv.0``
    timm_bn: str = ''  # timm prefix of the norm, e.g. ``blocks.3.0.ghost1.primary_conv.1``


# leaf names: (structured suffix, parameter-name suffix, timm suffix)
_CONV = (('._conv.weight', '_weights', 'weight'),)
_BN = (('._batch_norm.weight', '_bn_scale', 'weight'), ('._batch_norm.bias', '_bn_offset', 'bias'),
       ('._batch_norm._mean', '_bn_mean', 'running_mean'), ('._batch_norm._variance', '_bn_variance', 'running_var'))
_LINEAR = (('.weight', '_weights', 'weight'), ('.bias', '_offset', 'bias'))


def paddle_layout(state: Mapping[str, Any]) -> str:
    """``'structured'`` (``conv1._conv.weight``) or ``'names'`` (``conv1_weights``); ConversionError otherwise."""
    if 'conv1._conv.weight' in state:
        return 'structured'
    if 'conv1_weights' in state:
        return 'names'
    raise ConversionError(
        f'not a PaddleClas GhostNet checkpoint: neither conv1._conv.weight nor conv1_weights among its keys '
        f'(first keys: {", ".join(list(state)[:5])})')


class _Keys:
    """Takes tensors out of a Paddle state dict by structured or parameter name, remembering what is missing."""

    def __init__(self, state: Mapping[str, Any], layout: str) -> None:
        self.state = dict(state)
        self.structured = layout == 'structured'
        self.missing: List[str] = []

    def has(self, unit: _Unit, leaves: Tuple[Tuple[str, str, str], ...]) -> bool:
        return self.key(unit, leaves[0]) in self.state

    def key(self, unit: _Unit, leaf: Tuple[str, str, str]) -> str:
        return unit.paddle + leaf[0] if self.structured else unit.name + leaf[1]

    def take(self, unit: _Unit, leaf: Tuple[str, str, str]) -> torch.Tensor:
        key = self.key(unit, leaf)
        if key not in self.state:
            self.missing.append(key)
            return torch.zeros(0)
        return torch.from_numpy(self.state.pop(key).copy()).float()


def _units(keys: _Keys) -> Iterator[Tuple[str, _Unit]]:
    """``(kind, unit)`` for every PaddleClas layer in network order; kind is ``conv_bn``, ``se``, ``head`` or ``fc``.

    The block structure follows the paper's table (``GHOSTNET_STAGES``, grouped into timm's stages); whether a block
    has a conv shortcut depends on the width's channel rounding, so it is read from the checkpoint.
    """
    from .ghostnet import GHOSTNET_STAGES

    yield 'conv_bn', _Unit('conv1', 'conv1', 'conv_stem', 'bn1')
    idx = 0
    for stage_idx, stage in enumerate(GHOSTNET_STAGES):
        for block_idx, cfg in enumerate(stage):
            p, t = f'_ghostbottleneck_{idx}', f'blocks.{stage_idx}.{block_idx}'
            for paddle_ghost, timm_ghost in (('ghost_module_1', 'ghost1'), ('ghost_module_2', 'ghost2')):
                if paddle_ghost == 'ghost_module_2':
                    if cfg.se_ratio > 0:
                        yield 'se', _Unit(f'{p}.se_block', f'{p}_se', f'{t}.se')
                for part in ('primary_conv', 'cheap_operation'):
                    yield 'conv_bn', _Unit(f'{p}.{paddle_ghost}.{part}', f'{p}_{paddle_ghost}_{part}',
                                           f'{t}.{timm_ghost}.{part}.0', f'{t}.{timm_ghost}.{part}.1')
                if paddle_ghost == 'ghost_module_1' and cfg.stride > 1:
                    yield 'conv_bn', _Unit(f'{p}.depthwise_conv', f'{p}_depthwise_depthwise', f'{t}.conv_dw',
                                           f'{t}.bn_dw')
            shortcut_dw = _Unit(f'{p}.shortcut_depthwise', f'{p}_shortcut_depthwise_depthwise', f'{t}.shortcut.0',
                                f'{t}.shortcut.1')
            if cfg.stride > 1 or keys.has(shortcut_dw, _CONV):
                yield 'conv_bn', shortcut_dw
                yield 'conv_bn', _Unit(f'{p}.shortcut_conv', f'{p}_shortcut_conv', f'{t}.shortcut.2',
                                       f'{t}.shortcut.3')
            idx += 1
    yield 'conv_bn', _Unit('conv_last', 'conv_last', f'blocks.{len(GHOSTNET_STAGES)}.0.conv',
                           f'blocks.{len(GHOSTNET_STAGES)}.0.bn1')
    yield 'head', _Unit('fc_0', 'fc_0', 'conv_head')
    yield 'fc', _Unit('fc_1', 'fc_1', 'classifier')


def convert_paddle_state_dict(state: Mapping[str, Any], source: str = 'checkpoint') -> Dict[str, torch.Tensor]:
    """Map a PaddleClas GhostNet state dict (either key form) onto timm's GhostNet state dict, exactly.

    Args:
        state: ``{key: numpy array}`` as :func:`read_pdparams` returns it.
        source: how to name the checkpoint in errors.
    Returns:
        timm's keys (those of ``timm.create_model('ghostnet_*').state_dict()``, ``num_batches_tracked`` included) to
        float32 tensors (int64 for ``num_batches_tracked``); the width and number of classes are the checkpoint's.
    Raises:
        ConversionError: naming the source and the keys, for an unknown layout, missing or left-over tensors, or an
            SE the timm layout cannot hold.
    """
    from timm.layers import make_divisible
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    keys = _Keys(state, paddle_layout(state))
    out: Dict[str, torch.Tensor] = {}

    def bn(unit: _Unit) -> Dict[str, torch.Tensor]:
        return {t: keys.take(unit, leaf) for leaf, t in zip(_BN, ('weight', 'bias', 'running_mean', 'running_var'))}

    for kind, unit in _units(keys):
        if kind == 'conv_bn':
            out[f'{unit.timm}.weight'] = keys.take(unit, _CONV[0])
            for name, value in bn(unit).items():
                out[f'{unit.timm_bn}.{name}'] = value
            out[f'{unit.timm_bn}.num_batches_tracked'] = torch.tensor(0, dtype=torch.long)
        elif kind == 'se':
            squeeze, excite = (_Unit(f'{unit.paddle}.{n}', f'{unit.name}_{i}', '') for i, n in
                               ((1, 'squeeze'), (2, 'excitation')))
            w1, b1 = keys.take(squeeze, _LINEAR[0]), keys.take(squeeze, _LINEAR[1])  # (C, C // 4), Paddle's (in, out)
            w2, b2 = keys.take(excite, _LINEAR[0]), keys.take(excite, _LINEAR[1])  # (C // 4, C)
            if w1.ndim != 2 or w2.ndim != 2:
                continue  # missing: reported below
            chs, med = w1.shape
            rd = make_divisible(chs * 0.25, divisor=4)  # timm's SE width (GhostNet's rd_round_fn)
            if rd < med:
                raise ConversionError(
                    f'{source}: {keys.key(squeeze, _LINEAR[0])} reduces {chs} channels to {med}, more than the '
                    f'{rd} of timm\'s SE; it cannot be mapped exactly')
            reduce_w = w1.new_zeros(rd, chs)
            reduce_w[:med] = w1.t()
            expand_w = w2.new_zeros(chs, rd)
            expand_w[:, :med] = w2.t()
            out[f'{unit.timm}.conv_reduce.weight'] = reduce_w[:, :, None, None]
            out[f'{unit.timm}.conv_reduce.bias'] = torch.cat([b1, b1.new_zeros(rd - med)])
            # clip(x, 0, 1) == relu6(6 x - 3 + 3) / 6: the gate's affine change moves into the expand conv
            out[f'{unit.timm}.conv_expand.weight'] = (6 * expand_w)[:, :, None, None]
            out[f'{unit.timm}.conv_expand.bias'] = 6 * b2 - 3
        elif kind == 'head':
            conv_w = keys.take(unit, _CONV[0])
            norm = bn(unit)
            if conv_w.ndim == 4 and all(v.ndim == 1 for v in norm.values()):
                w, b = fuse_conv_bn_weights(  # in float64: the fold adds no rounding beyond the final cast
                    conv_w.double(), None, norm['running_mean'].double(), norm['running_var'].double(),
                    PADDLE_BN_EPS, norm['weight'].double(), norm['bias'].double())
                out[f'{unit.timm}.weight'], out[f'{unit.timm}.bias'] = w.detach().float(), b.detach().float()
        else:  # the classifier: Paddle's Linear stores (in, out)
            out[f'{unit.timm}.weight'] = keys.take(unit, _LINEAR[0]).t().contiguous()
            out[f'{unit.timm}.bias'] = keys.take(unit, _LINEAR[1])
    if keys.missing or keys.state:
        raise ConversionError(
            f'{source}: not a PaddleClas GhostNet checkpoint of the expected structure: '
            f'{len(keys.missing)} missing tensors ({_first(keys.missing)}), '
            f'{len(keys.state)} unexpected ({_first(list(keys.state))})')
    return {k: v.contiguous() for k, v in out.items()}


def _first(names: List[str], n: int = 6) -> str:
    return (', '.join(names[:n]) + (f' (and {len(names) - n} more)' if len(names) > n else '')) or 'none'


def load_pdparams(path: Union[str, os.PathLike], source: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """Read a PaddleClas GhostNet ``.pdparams`` (restricted unpickler) and return timm's state dict for it."""
    source = source or str(path)
    return convert_paddle_state_dict(read_pdparams(path, source), source)


# ------------------------------------------------------------------------------------------------ download + cache
def paddle_cache_dir(cache_dir: Optional[Union[str, os.PathLike]] = None) -> Path:
    """Folder of converted PaddleClas weights: ``<cache_dir or torch.hub.get_dir()/checkpoints>/timm_ghost_paddle``
    (``TORCH_HOME`` moves it, as it moves timm's URL downloads)."""
    base = Path(cache_dir) if cache_dir is not None else Path(torch.hub.get_dir()) / 'checkpoints'
    return base / _CACHE_SUBDIR


def _entry_dir(url: str, cache_dir: Optional[Union[str, os.PathLike]]) -> Path:
    """One folder per source URL: the file's stem and 16 hex digits of the URL's sha256."""
    stem = os.path.basename(url.split('?')[0])
    stem = stem[:-len(PADDLE_SUFFIX)] if stem.lower().endswith(PADDLE_SUFFIX) else stem
    stem = re.sub(r'[^A-Za-z0-9_.-]', '_', stem)[:80] or 'weights'
    return paddle_cache_dir(cache_dir) / f'{stem}-{_http.url_key(url)}'


def cached_paddle_weights(url: str, cache_dir: Optional[Union[str, os.PathLike]] = None) -> Optional[Path]:
    """The converted safetensors of ``url`` already in the cache (``<download sha256>.safetensors`` whose metadata
    names this URL and this converter version; an older conversion is made again), else None."""
    from safetensors import safe_open

    entry = _entry_dir(url, cache_dir)
    if not entry.is_dir():
        return None
    found = []
    for path in entry.iterdir():
        if path.suffix != '.safetensors' or not _SHA256.fullmatch(path.stem):
            continue
        try:
            with safe_open(str(path), framework='pt') as f:
                meta = f.metadata() or {}
        except Exception:  # unreadable: not an entry
            continue
        if meta.get('source_url') == url and meta.get('source_sha256') == path.stem and meta.get(
                'converter') == _CONVERTER:
            found.append(path)
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _probe(url: str) -> Optional[int]:
    """One bounded HEAD request (:func:`timm_ghost._http.probe`; no Hub token sent): the file's size, or None when the
    server does not say. Raises PretrainedWeightsError naming the URL for an error status or no answer."""
    from huggingface_hub import constants, get_hf_file_metadata
    from huggingface_hub.errors import HfHubHTTPError

    try:
        metadata = _http.probe(lambda timeout: get_hf_file_metadata(url, timeout=timeout, token=False))
    except HfHubHTTPError as e:
        raise PretrainedWeightsError(f'could not download {url}: HTTP {e.response.status_code}') from e
    except _http.Unreachable as e:
        raise PretrainedWeightsError(
            f'could not reach {url} after {_http.PROBE_TRIES} tries: {e}. Check the connection, or raise '
            f'HF_HUB_ETAG_TIMEOUT (now {constants.HF_HUB_ETAG_TIMEOUT} s)') from e
    return metadata.size


def download_paddle_weights(url: str, cache_dir: Optional[Union[str, os.PathLike]] = None) -> Path:
    """The timm safetensors for a PaddleClas ``.pdparams`` URL: from the cache, else downloaded, converted, cached.

    The download goes through huggingface_hub's ``http_get`` (progress bar, ``HF_HUB_DOWNLOAD_TIMEOUT`` per read,
    resume on dropped connections, size check) after one bounded HEAD request; it lands in a temporary file that is
    always removed. The converted file is written atomically as
    ``<paddle_cache_dir>/<stem>-<url hash>/<download sha256>.safetensors`` (metadata: source URL, sha256, converter
    version), so a cut transfer, a refused pickle or a failed conversion leaves no entry. With ``HF_HUB_OFFLINE=1``
    only the cache is read.

    Raises:
        PretrainedWeightsError: naming the URL, when offline without a cached copy, or the download fails.
        ConversionError: the file is not a PaddleClas GhostNet checkpoint.
    """
    from huggingface_hub import constants
    from safetensors.torch import save_file

    cached = cached_paddle_weights(url, cache_dir)
    if cached is not None:
        return cached
    entry = _entry_dir(url, cache_dir)
    if constants.is_offline_mode():
        raise PretrainedWeightsError(
            f'{url} is not in the cache ({entry.parent}) and HF_HUB_OFFLINE is set; load it once online')
    expected_size = _probe(url)
    name = os.path.basename(url.split('?')[0]) or 'weights.pdparams'
    entry.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=entry, prefix='.download.') as folder:  # the raw pickle never stays
            raw = _http.download(url, Path(folder) / name, expected_size=expected_size)
            sha256 = _http.sha256_file(raw)
            tensors = load_pdparams(raw, source=url)
        target = entry / f'{sha256}.safetensors'
        with atomic_output_file(target) as out:
            save_file(tensors, str(out), metadata={
                'format': 'pt', 'source_url': url, 'source_sha256': sha256, 'converter': _CONVERTER})
        _logger.info(f'{url} (sha256 {sha256}) converted to {target}')
        return target
    finally:
        try:
            entry.rmdir()  # only when empty: a failed first download leaves no folder behind
        except OSError:
            pass


# ------------------------------------------------------------------------------------------------ publishing
def paddle_export_cfg(model_name: str, src: Union[str, os.PathLike], cfg: Dict[str, Any],
                      tag: Optional[str] = None) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The pretrained cfg and model-card details of a converted PaddleClas checkpoint (``timm-ghost convert``).

    Args:
        model_name: the width the checkpoint was converted for.
        src: the ``.pdparams`` file; named like a PaddleClas release of that width (``GhostNet_x0_5_pretrained``), it
            takes that release's tag, transform, notes and reported accuracy; otherwise PaddleClas's eval transform
            only (the accuracy of other weights is not known here).
        cfg: the model's pretrained cfg to start from.
        tag: a tag given by the user, kept over the release's.
    Returns:
        ``(cfg, details)``: the cfg for config.json, and entries for the card's Model Details.
    """
    from timm.models import get_pretrained_cfg

    release = released_weights(src)
    if release is not None and release.tag.split('.')[0] == model_name:
        known = get_pretrained_cfg(release.tag).to_dict()
        cfg = {**cfg, **{k: known[k] for k in ('interpolation', 'crop_pct', 'crop_mode', 'mean', 'std', 'license',
                                                'origin_url', 'description', 'notes')}, 'tag': tag or known['tag']}
        details = {
            'Original': f'PaddleClas, {release.url} (Apache-2.0), converted exactly to timm\'s layout',
            'Accuracy (reported by PaddleClas, not measured here)': {
                'top-1': release.top1, 'top-5': release.top5, 'dataset': 'imagenet-1k (val)',
                'eval transform': 'resize short side 256, centre crop 224, bilinear, ImageNet mean / std'},
        }
        return cfg, details
    cfg = {**cfg, 'interpolation': 'bilinear', 'crop_pct': 0.875, 'origin_url': 'https://github.com/PaddlePaddle/'
           'PaddleClas', 'tag': tag}
    return cfg, {'Original': f'a PaddleClas GhostNet checkpoint ({os.path.basename(str(src))}), converted exactly to '
                             f'timm\'s layout; its accuracy is not recorded here'}
