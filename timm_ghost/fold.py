"""Folding BatchNorm into convolutions, and the hook that gives each training block its inference form.

Both :mod:`timm_ghost.blocks` (in-place folding of a block's own conv + BN pairs) and :mod:`timm_ghost.deploy` (the
deploy blocks, built from the folded convs) use these helpers; neither imports the other's direction: the blocks
know nothing of the deploy forms. :mod:`timm_ghost.deploy` registers them here (:func:`register_fuser`) when it is
imported, which ``import timm_ghost`` does. The folding arithmetic is torch's own
(``torch.nn.utils.fusion.fuse_conv_bn_weights``).
"""
from __future__ import annotations

import copy
from typing import Callable, Dict, Optional

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.ops import FrozenBatchNorm2d

__all__ = [
    'fold_conv_bn', 'fold_sequential_conv_bn', 'to_channels_last_', 'split_conv_out', 'split_conv_in',
    'linear_from_conv1x1', 'register_fuser', 'fuse_block', 'FOLDABLE_NORMS',
]

# the norms folded into the conv before them: BatchNorm2d (its running statistics) and the FrozenBatchNorm2d that
# detection backbones replace it with (timm.layers.freeze_batch_norm_2d; the same four buffers, the same arithmetic)
FOLDABLE_NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d)

Fuser = Callable[[nn.Module], Optional[nn.Module]]
_FUSERS: Dict[type, Fuser] = {}


def register_fuser(block_type: type, fuser: Fuser) -> None:
    """Make ``fuser(block)`` the inference form of blocks of exactly ``block_type`` (subclasses are not covered: their
    forward may differ). ``fuser`` returns the module replacing the block, or None where it does not cover the
    block's structure (the block then folds in place). Registering a type again replaces its fuser."""
    _FUSERS[block_type] = fuser


@torch.no_grad()
def fuse_block(block: nn.Module) -> nn.Module:
    """What ``block.fuse()`` returns for timm's ``reparameterize_model``: the registered inference form of ``block``
    (eval-mode statistics), else ``block`` itself after its own in-place ``reparameterize()`` (if it has one)."""
    fuser = _FUSERS.get(type(block))
    fused = fuser(block) if fuser is not None else None
    if fused is not None:
        return fused
    reparameterize = getattr(block, 'reparameterize', None)
    if reparameterize is not None:
        reparameterize()
    return block


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.Module) -> nn.Conv2d:
    """Return a new conv (with bias) computing ``bn(conv(x))`` with ``bn``'s running statistics.

    Shapes are those of ``conv``; ``bn`` must be a ``BatchNorm2d`` (or a ``FrozenBatchNorm2d``) over
    ``conv.out_channels`` channels.
    """
    if not isinstance(bn, FOLDABLE_NORMS):
        raise TypeError(f'bn: expected a BatchNorm2d or FrozenBatchNorm2d to fold into {conv}, got {type(bn).__name__}')
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError('bn: cannot fold a BatchNorm2d without running statistics (track_running_stats=False)')
    fused = copy.deepcopy(conv)
    weight, bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
    fused.weight = weight
    fused.bias = nn.Parameter(bias.detach(), weight.requires_grad)  # a bias made from nothing is trainable too
    return fused


def fold_sequential_conv_bn(seq: nn.Sequential) -> None:
    """Fold every ``Conv2d`` directly followed by a ``BatchNorm2d`` (or ``FrozenBatchNorm2d``) in ``seq``, in place
    (the norm becomes Identity)."""
    for i in range(len(seq) - 1):
        if isinstance(seq[i], nn.Conv2d) and isinstance(seq[i + 1], FOLDABLE_NORMS):
            seq[i] = fold_conv_bn(seq[i], seq[i + 1])
            seq[i + 1] = nn.Identity()


def to_channels_last_(conv: nn.Conv2d) -> nn.Conv2d:
    """Store ``conv``'s weight in channels_last order, in place: the conv then returns channels_last maps whatever
    the input's layout, and oneDNN computes NHWC without reordering the weight. Returns ``conv``."""
    conv.weight = nn.Parameter(conv.weight.detach().contiguous(memory_format=torch.channels_last),
                               conv.weight.requires_grad)
    if conv.bias is not None:
        conv.bias = nn.Parameter(conv.bias.detach().contiguous(), conv.bias.requires_grad)
    return conv


def _new_conv(conv: nn.Conv2d, weight: torch.Tensor, bias: Optional[torch.Tensor], groups: int) -> nn.Conv2d:
    out = nn.Conv2d(
        weight.shape[1] * groups, weight.shape[0], conv.kernel_size, stride=conv.stride, padding=conv.padding,
        dilation=conv.dilation, groups=groups, bias=bias is not None, device=weight.device, dtype=weight.dtype)
    out.weight = nn.Parameter(weight.detach().clone(), weight.requires_grad)
    if bias is not None:
        out.bias = nn.Parameter(bias.detach().clone(), bias.requires_grad)
    return to_channels_last_(out)


def split_conv_out(conv: nn.Conv2d, start: int, end: int) -> nn.Conv2d:
    """The conv computing output channels ``[start, end)`` of ``conv`` (weight in channels_last).

    A dense conv keeps all its inputs; a depthwise conv (``groups == in_channels == out_channels``) keeps the
    matching input channels, so it maps ``(N, end - start, H, W)`` to ``(N, end - start, H', W')``.
    """
    weight = conv.weight[start:end]
    bias = conv.bias[start:end] if conv.bias is not None else None
    if conv.groups == 1:
        return _new_conv(conv, weight, bias, 1)
    if conv.groups == conv.in_channels == conv.out_channels:
        return _new_conv(conv, weight, bias, end - start)
    raise ValueError(f'conv: can only split dense or depthwise convs, got groups={conv.groups} for {conv}')


def split_conv_in(conv: nn.Conv2d, start: int, end: int, keep_bias: bool) -> nn.Conv2d:
    """The dense conv applying ``conv``'s weights of input channels ``[start, end)``: ``(N, end - start, H, W)`` in.

    Summing the splits of all input ranges (one of them with ``keep_bias=True``) gives ``conv`` on their concatenation.
    """
    if conv.groups != 1:
        raise ValueError(f'conv: can only split the inputs of a dense conv, got groups={conv.groups} for {conv}')
    return _new_conv(conv, conv.weight[:, start:end], conv.bias if keep_bias else None, 1)


def linear_from_conv1x1(conv: nn.Conv2d) -> nn.Linear:
    """The ``nn.Linear`` equal to a 1x1 conv applied to ``(N, C, 1, 1)`` maps."""
    linear = nn.Linear(conv.in_channels, conv.out_channels, bias=conv.bias is not None,
                       device=conv.weight.device, dtype=conv.weight.dtype)
    linear.weight = nn.Parameter(conv.weight.detach().flatten(1).clone(), conv.weight.requires_grad)
    if conv.bias is not None:
        linear.bias = nn.Parameter(conv.bias.detach().clone(), conv.bias.requires_grad)
    return linear
