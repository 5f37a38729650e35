"""Deploy-time folding of BatchNorm into the preceding convolution.

``timm.utils.reparameterize_model(model)`` walks the network and calls the ``reparameterize()`` / ``fuse()``
hooks of :mod:`timm_ghost.blocks`, which use these helpers. The arithmetic is torch's own
(``torch.nn.utils.fusion.fuse_conv_bn_weights``); the result is an inference model with no normalisation left.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

__all__ = ['fold_conv_bn', 'fold_sequential_conv_bn']


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.Module) -> nn.Conv2d:
    """Return a new conv (with bias) computing ``bn(conv(x))`` with ``bn``'s running statistics.

    Shapes are those of ``conv``; ``bn`` must be a ``BatchNorm2d`` over ``conv.out_channels`` channels.
    """
    if not isinstance(bn, nn.BatchNorm2d):
        raise TypeError(f'bn: expected a BatchNorm2d to fold into {conv}, got {type(bn).__name__}')
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError('bn: cannot fold a BatchNorm2d without running statistics (track_running_stats=False)')
    fused = copy.deepcopy(conv)
    weight, bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
    fused.weight, fused.bias = weight, bias
    return fused


def fold_sequential_conv_bn(seq: nn.Sequential) -> None:
    """Fold every ``Conv2d`` directly followed by a ``BatchNorm2d`` in ``seq``, in place (the norm becomes Identity)."""
    for i in range(len(seq) - 1):
        if isinstance(seq[i], nn.Conv2d) and isinstance(seq[i + 1], nn.BatchNorm2d):
            seq[i] = fold_conv_bn(seq[i], seq[i + 1])
            seq[i + 1] = nn.Identity()
