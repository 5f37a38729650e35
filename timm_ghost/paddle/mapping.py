"""PaddleClas's GhostNet state dict mapped exactly onto timm's.

PaddleClas (``ppcls/arch/backbone/model_zoo/ghostnet.py``, Apache-2.0) implements the paper's network with other
names and three differences of form, each mapped without changing timm's architecture:

- the SE reduces to ``C // 4`` channels (timm: ``make_divisible(C / 4, 4)``, never fewer): the extra reduce rows and
  expand columns are zero, and ``relu(0) = 0`` keeps them silent;
- its SE gate is ``clip(x, 0, 1)`` (timm: ``relu6(x + 3) / 6``): the expand conv is scaled by 6 and its bias shifted
  by -3, so that ``(6 x - 3 + 3) / 6 = x``;
- the head conv ``fc_0`` has a BatchNorm and no bias (timm: ``conv_head`` with a bias, no norm): the norm acts on the
  pooled ``1 x 1`` map and folds into ``conv_head``'s weight and bias (torch's ``fuse_conv_bn_weights``), and the
  classifier ``fc_1`` stores its weight transposed.

Released files are keyed either by structured names (``conv1._conv.weight``) or by PaddleClas's parameter names
(``conv1_weights``); both are read.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import torch

from ..arch import GHOSTNET_STAGES
from ..errors import ConversionError
from .reader import read_pdparams

__all__ = ['PADDLE_BN_EPS', 'paddle_layout', 'convert_paddle_state_dict', 'load_pdparams']

PADDLE_BN_EPS = 1e-5  # paddle.nn.BatchNorm's default epsilon, used by every PaddleClas GhostNet norm


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
