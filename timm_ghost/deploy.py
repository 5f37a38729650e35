"""Deploy-time form of GhostNet: BatchNorm folded into the convolutions, and a faster inference forward.

``timm.utils.reparameterize_model(model)`` walks the network and calls the ``fuse()`` / ``reparameterize()`` hooks of
:mod:`timm_ghost.blocks`, which land here:

* the stem BatchNorm folds into ``conv_stem``; its place is taken by a channels_last copy of the stem map
  (:class:`ToChannelsLast`);
* every :class:`~timm_ghost.blocks.GhostBottleneck` becomes a :class:`GhostBottleneckDeploy`;
* the final 1x1 conv block becomes a :class:`ConvActDeploy`.

The folding arithmetic is torch's own (``torch.nn.utils.fusion.fuse_conv_bn_weights``). The result is an inference
model with no normalisation left: training it would train a network without BatchNorm.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_weights

__all__ = [
    'fold_conv_bn', 'fold_sequential_conv_bn', 'split_conv_out', 'split_conv_in',
    'to_channels_last_', 'GhostBottleneckDeploy', 'ConvActDeploy', 'ToChannelsLast', 'fast_path_enabled',
]

_CL = torch.channels_last
# the oneDNN ops torch's inductor uses for packed-weight convs; without them the portable path runs everywhere
_MKLDNN = (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, '_convolution_pointwise')
           and hasattr(torch.ops.mkldnn, '_reorder_convolution_weight'))
# The eager CPU path runs a block on slices of the batch whose widest intermediate map stays under this size: the
# slice's intermediates stay in cache from one conv to the next instead of streaming through memory.
CHUNK_BYTES = 4 << 20
# 1x1 convs on at most this many pixels (N x H x W) and at least this many input channels run as a GEMM
LINEAR_MAX_PIXELS = 4096
LINEAR_MIN_CHANNELS = 32


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
    fused.weight = weight
    fused.bias = nn.Parameter(bias.detach(), weight.requires_grad)  # a bias made from nothing is trainable too
    return fused


def fold_sequential_conv_bn(seq: nn.Sequential) -> None:
    """Fold every ``Conv2d`` directly followed by a ``BatchNorm2d`` in ``seq``, in place (the norm becomes Identity)."""
    for i in range(len(seq) - 1):
        if isinstance(seq[i], nn.Conv2d) and isinstance(seq[i + 1], nn.BatchNorm2d):
            seq[i] = fold_conv_bn(seq[i], seq[i + 1])
            seq[i + 1] = nn.Identity()


def to_channels_last_(conv: nn.Conv2d) -> nn.Conv2d:
    """Store ``conv``'s weight in channels_last order, in place: the conv then returns channels_last maps whatever
    the input's layout, and oneDNN computes NHWC without reordering the weight. Returns ``conv``."""
    conv.weight = nn.Parameter(conv.weight.detach().contiguous(memory_format=_CL), conv.weight.requires_grad)
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
    """The conv computing output channels ``[start, end)`` of ``conv``.

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


def _linear_from_conv1x1(conv: nn.Conv2d) -> nn.Linear:
    """The ``nn.Linear`` equal to a 1x1 conv applied to ``(N, C, 1, 1)`` maps."""
    linear = nn.Linear(conv.in_channels, conv.out_channels, bias=conv.bias is not None,
                       device=conv.weight.device, dtype=conv.weight.dtype)
    linear.weight = nn.Parameter(conv.weight.detach().flatten(1).clone(), conv.weight.requires_grad)
    if conv.bias is not None:
        linear.bias = nn.Parameter(conv.bias.detach().clone(), conv.bias.requires_grad)
    return linear


def fast_path_enabled(x: torch.Tensor) -> bool:
    """Whether the eager oneDNN path may run on ``x``: an fp32 CPU tensor, autograd off, and no compiler, tracer or
    exporter watching (they get the portable path of standard ops, which they optimise themselves)."""
    return (
        isinstance(x, torch.Tensor)  # not an fx Proxy
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and not torch.onnx.is_in_onnx_export()
        and _MKLDNN
        and not torch.is_grad_enabled()
        and x.device.type == 'cpu'
        and x.dtype == torch.float32
    )


class _PackedWeights:
    """oneDNN-packed copies of a module's depthwise conv weights for the eager CPU path, rebuilt whenever a weight
    changes (new tensor or in-place update). A cache, not state: copies and pickles of the module start empty."""

    def __init__(self) -> None:
        self.key: Optional[Tuple[Tuple[int, int], ...]] = None
        self.weights: Dict[str, torch.Tensor] = {}

    def __deepcopy__(self, memo: Dict[int, Any]) -> _PackedWeights:
        return _PackedWeights()

    def __getstate__(self) -> Dict[str, Any]:
        return {}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__()

    def get(self, module: nn.Module, names: Tuple[str, ...]) -> Dict[str, torch.Tensor]:
        """``{name: packed weight}`` for the depthwise convs ``module.<name>``, packing them if any changed."""
        convs = [module._modules[name] for name in names]
        key = tuple((c.weight.data_ptr(), c.weight._version) for c in convs)
        if key != self.key:
            self.weights = {
                name: torch.ops.mkldnn._reorder_convolution_weight(
                    c.weight.detach(), c.padding, c.stride, c.dilation, c.groups, None)
                for name, c in zip(names, convs)
            }
            self.key = key
        return self.weights


def _dw_fast(x: torch.Tensor, conv: nn.Conv2d, packed: torch.Tensor, attr: str) -> torch.Tensor:
    """Depthwise conv through oneDNN with a pre-packed weight and the unary post-op ``attr`` ('none', 'relu') fused:
    the per-call weight reorder and the separate activation pass are what dominate small depthwise convs."""
    return torch.ops.mkldnn._convolution_pointwise(
        x, packed, conv.bias, conv.padding, conv.stride, conv.dilation, conv.groups, attr, [], None)


def _pw_fast(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """1x1 conv of an NHWC map. Small maps with enough input channels go to a GEMM on the ``(N, H, W, C)`` view
    (``F.linear``; the result is channels_last again): at batch 1, oneDNN's conv costs up to twice that."""
    n, c, h, w = x.shape
    if c >= LINEAR_MIN_CHANNELS and n * h * w <= LINEAR_MAX_PIXELS:
        return F.linear(x.permute(0, 2, 3, 1), conv.weight.flatten(1), conv.bias).permute(0, 3, 1, 2)
    return F.conv2d(x, conv.weight, conv.bias)


class ToChannelsLast(nn.Module):
    """Takes the stem BatchNorm's place in the deploy model: a channels_last copy of the stem conv's output (BN folded
    in, before the ReLU). A copy, because ``features_only`` models and ``forward_intermediates`` hand that map out as
    feature 0 while the network's in-place ReLU acts next; channels_last, the layout every deploy block computes in.
    ``(N, C, H, W)`` in and out."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone(memory_format=torch.channels_last)


class ConvActDeploy(nn.Module):
    """Folded conv -> ReLU (the final 1x1 conv of the network). ``(N, C, H, W)`` in, ``(N, out_chs, H, W)`` out."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = to_channels_last_(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return F.relu(self.conv(x))
        if fast_path_enabled(x):
            return _pw_fast(x.contiguous(memory_format=_CL), self.conv).relu_()
        return F.relu(self.conv(x))


class GhostBottleneckDeploy(nn.Module):
    """Inference form of :class:`~timm_ghost.blocks.GhostBottleneck`, computing the same function with BN folded.

    Input ``(N, in_chs, H, W)``, output ``(N, out_chs, H / stride, W / stride)`` in channels_last memory format.
    The first Ghost module's output ``[primary, cheap]`` is never concatenated: the ops after it act on the two
    halves (the depthwise conv and the SE scale split by channel, the projecting 1x1 conv by input channel, its two
    halves summed).
    """

    def __init__(
            self,
            primary1: nn.Conv2d,
            cheap1: nn.Conv2d,
            dw_primary: Optional[nn.Conv2d],
            dw_cheap: Optional[nn.Conv2d],
            se_reduce: Optional[nn.Linear],
            se_expand: Optional[nn.Linear],
            primary2_a: nn.Conv2d,
            primary2_b: nn.Conv2d,
            cheap2: nn.Conv2d,
            shortcut_dw: Optional[nn.Conv2d],
            shortcut_pw: Optional[nn.Conv2d],
    ) -> None:
        super().__init__()
        self.primary1 = to_channels_last_(primary1)
        self.cheap1 = to_channels_last_(cheap1)
        self.dw_primary = to_channels_last_(dw_primary) if dw_primary is not None else None
        self.dw_cheap = to_channels_last_(dw_cheap) if dw_cheap is not None else None
        self.se_reduce = se_reduce
        self.se_expand = se_expand
        self.primary2_a = to_channels_last_(primary2_a)
        self.primary2_b = to_channels_last_(primary2_b)
        self.cheap2 = to_channels_last_(cheap2)
        self.shortcut_dw = to_channels_last_(shortcut_dw) if shortcut_dw is not None else None
        self.shortcut_pw = to_channels_last_(shortcut_pw) if shortcut_pw is not None else None
        self.split1 = primary1.out_channels
        self.split2 = primary2_a.out_channels
        self._packed = _PackedWeights()
        self._dw_names = tuple(name for name in ('cheap1', 'cheap2', 'dw_primary', 'dw_cheap', 'shortcut_dw')
                               if getattr(self, name) is not None)

    @classmethod
    @torch.no_grad()
    def from_block(cls, block: nn.Module) -> Optional[GhostBottleneckDeploy]:
        """Fold a :class:`~timm_ghost.blocks.GhostBottleneck` (eval-mode statistics). None where its structure is not
        GhostNet's (Ghost modules that do not split evenly, activations other than ReLU, an SE gate other than
        hard-sigmoid): the caller then folds it in place instead."""
        g1, g2 = block.ghost1, block.ghost2
        if not (_is_even_ghost(g1, nn.ReLU) and _is_even_ghost(g2, nn.Identity)):
            return None
        convs = [block.conv_dw, *block.shortcut[0::2]] if len(block.shortcut) else [block.conv_dw]
        if not all(conv is None or _is_plain_conv(conv) for conv in convs):
            return None
        se = block.se
        if se is not None and not (type(se.act1) is nn.ReLU and type(se.gate) is nn.Hardsigmoid):
            return None
        primary1 = fold_conv_bn(g1.primary_conv[0], g1.primary_conv[1])
        cheap1 = fold_conv_bn(g1.cheap_operation[0], g1.cheap_operation[1])
        mid, half1 = g1.out_chs, primary1.out_channels
        dw_primary = dw_cheap = None
        if block.conv_dw is not None:
            conv_dw = fold_conv_bn(block.conv_dw, block.bn_dw)
            dw_primary, dw_cheap = split_conv_out(conv_dw, 0, half1), split_conv_out(conv_dw, half1, mid)
        se_reduce = _linear_from_conv1x1(se.conv_reduce) if se is not None else None
        se_expand = _linear_from_conv1x1(se.conv_expand) if se is not None else None
        primary2 = fold_conv_bn(g2.primary_conv[0], g2.primary_conv[1])
        cheap2 = fold_conv_bn(g2.cheap_operation[0], g2.cheap_operation[1])
        primary2_a = split_conv_in(primary2, 0, half1, keep_bias=True)
        primary2_b = split_conv_in(primary2, half1, mid, keep_bias=False)
        shortcut_dw = shortcut_pw = None
        if len(block.shortcut):
            shortcut_dw = fold_conv_bn(block.shortcut[0], block.shortcut[1])
            shortcut_pw = fold_conv_bn(block.shortcut[2], block.shortcut[3])
        return cls(primary1, cheap1, dw_primary, dw_cheap, se_reduce, se_expand, primary2_a, primary2_b, cheap2,
                   shortcut_dw, shortcut_pw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self._forward_portable(x)
        if fast_path_enabled(x):
            return self._forward_fast(x)
        return self._forward_portable(x)

    def _forward_portable(self, x: torch.Tensor) -> torch.Tensor:
        """Standard ops only, for autograd, other devices and dtypes, TorchScript, torch.compile and ONNX."""
        a = F.relu(self.primary1(x))
        b = F.relu(self.cheap1(a))
        if self.dw_primary is not None and self.dw_cheap is not None:
            a = self.dw_primary(a)
            b = self.dw_cheap(b)
        if self.se_reduce is not None and self.se_expand is not None:
            s = torch.cat([a.mean((2, 3)), b.mean((2, 3))], dim=1)
            s = F.hardsigmoid(self.se_expand(F.relu(self.se_reduce(s))))
            a = a * s[:, :self.split1, None, None]
            b = b * s[:, self.split1:, None, None]
        c = self.primary2_a(a) + self.primary2_b(b)
        y = torch.cat([c, self.cheap2(c)], dim=1)
        if self.shortcut_dw is not None and self.shortcut_pw is not None:
            return y + self.shortcut_pw(self.shortcut_dw(x))
        return y + x

    @torch.jit.unused
    def _forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        """The eager CPU path: NHWC throughout, packed depthwise weights with the ReLU fused, in-place activations
        and SE scaling. Large batches run the Ghost modules slice by slice (see ``CHUNK_BYTES``), each slice adding
        its result into the block output in place."""
        x = x.contiguous(memory_format=_CL)
        packed = self._packed.get(self, self._dw_names)
        n, _, h, w = x.shape
        chunk = max(1, CHUNK_BYTES // (self.split1 * h * w * x.element_size()))
        if self.shortcut_dw is not None and self.shortcut_pw is not None:
            y = _pw_fast(_dw_fast(x, self.shortcut_dw, packed['shortcut_dw'], 'none'), self.shortcut_pw)
            for i in range(0, n, chunk):
                c, d = self._ghosts_fast(x[i:i + chunk], packed)
                y[i:i + chunk, :self.split2] += c
                y[i:i + chunk, self.split2:] += d
            return y
        y = torch.empty_like(x)
        for i in range(0, n, chunk):
            xi = x[i:i + chunk]
            c, d = self._ghosts_fast(xi, packed)
            torch.add(xi[:, :self.split2], c, out=y[i:i + chunk, :self.split2])
            torch.add(xi[:, self.split2:], d, out=y[i:i + chunk, self.split2:])
        return y

    @torch.jit.unused
    def _ghosts_fast(self, x: torch.Tensor, packed: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Both Ghost modules (and the depthwise conv and SE between them) on ``x``: the halves ``(c, d)`` of the
        second module's output, before the shortcut is added."""
        a = _pw_fast(x, self.primary1).relu_()
        b = _dw_fast(a, self.cheap1, packed['cheap1'], 'relu')
        if self.dw_primary is not None:
            a = _dw_fast(a, self.dw_primary, packed['dw_primary'], 'none')
            b = _dw_fast(b, self.dw_cheap, packed['dw_cheap'], 'none')
        if self.se_reduce is not None and self.se_expand is not None:
            s = torch.cat([a.mean((2, 3)), b.mean((2, 3))], dim=1)
            s = F.linear(s, self.se_reduce.weight, self.se_reduce.bias).relu_()
            s = F.hardsigmoid(F.linear(s, self.se_expand.weight, self.se_expand.bias), inplace=True)
            a = a.mul_(s[:, :self.split1, None, None])
            b = b.mul_(s[:, self.split1:, None, None])
        c = _pw_fast(a, self.primary2_a).add_(_pw_fast(b, self.primary2_b))
        return c, _dw_fast(c, self.cheap2, packed['cheap2'], 'none')


def _is_plain_conv(module: nn.Module) -> bool:
    """An ``nn.Conv2d`` itself (not a subclass such as timm's dynamically padded ``Conv2dSame``) with static padding."""
    return type(module) is nn.Conv2d and isinstance(module.padding, tuple) and module.padding_mode == 'zeros'


def _is_even_ghost(module: nn.Module, act_type: type) -> bool:
    """A Ghost module whose primary and cheap halves have equal widths and whose activation is ``act_type``."""
    primary, cheap = module.primary_conv, module.cheap_operation
    return (
        _is_plain_conv(primary[0]) and isinstance(primary[1], nn.BatchNorm2d)
        and _is_plain_conv(cheap[0]) and isinstance(cheap[1], nn.BatchNorm2d)
        and type(primary[2]) is act_type and type(cheap[2]) is act_type
        and primary[0].out_channels == cheap[0].out_channels and module.out_chs == 2 * primary[0].out_channels
        and cheap[0].groups == cheap[0].in_channels
    )
