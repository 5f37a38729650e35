"""Deploy-time form of GhostNet: BatchNorm folded into the convolutions, and a faster inference forward.

The deploy blocks build on the training blocks of :mod:`timm_ghost.blocks` (never the other way round): importing
this module registers them as the blocks' inference forms (:func:`timm_ghost.fold.register_fuser`), and
``timm.utils.reparameterize_model(model)``, which calls the blocks' ``fuse()`` hooks, lands here:

* the stem BatchNorm folds into ``conv_stem``; its place is taken by a channels_last copy of the stem map
  (:class:`ToChannelsLast`);
* every :class:`~timm_ghost.blocks.GhostBottleneck` becomes a :class:`GhostBottleneckDeploy`;
* the final 1x1 conv block becomes a :class:`ConvActDeploy`.

The result is an inference model with no normalisation left (training it would train a network without BatchNorm).
Its feature maps are channels_last. On CPU, fp32 inference without autograd runs an eager fast path through the
oneDNN ops torch's inductor uses (:func:`timm_ghost._compat.onednn_ops`); they are probed once per process, and a
failure switches the fast path off with one ``RuntimeWarning`` (the portable path of standard ops gives the same
results).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import _compat
from .blocks import ConvBnAct, GhostBottleneck, StemNorm
from .fold import (
    FOLDABLE_NORMS,
    fold_conv_bn,
    linear_from_conv1x1,
    register_fuser,
    split_conv_in,
    split_conv_out,
    to_channels_last_,
)

__all__ = ['GhostBottleneckDeploy', 'ConvActDeploy', 'ToChannelsLast', 'fast_path_enabled', 'check_onednn',
           'probe_onednn']

_CL = torch.channels_last
# The eager CPU path runs a block on slices of the batch whose widest intermediate map stays under this size: the
# slice's intermediates stay in cache from one conv to the next instead of streaming through memory.
CHUNK_BYTES = 4 << 20
# 1x1 convs on at most this many pixels (N x H x W) and at least this many input channels run as a GEMM
LINEAR_MAX_PIXELS = 4096
LINEAR_MIN_CHANNELS = 32

OneDnnOps = Tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]
_PROBED = False
# (convolution_pointwise, reorder_convolution_weight) once they passed the probe; the fast path's helpers call these
_OPS: Optional[OneDnnOps] = None


def probe_onednn(ops: OneDnnOps, dtype: torch.dtype = torch.float32) -> Optional[str]:
    """Run the fast path's two oneDNN calls once on a tiny ``dtype`` map: pack a depthwise 3x3 weight
    (``reorder_convolution_weight``), convolve with it and the fused ReLU (``convolution_pointwise``), and compare
    with ``F.conv2d``. Returns None if they agree, else why not (the error, or the difference)."""
    convolution_pointwise, reorder_convolution_weight = ops
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 5, 5, generator=gen).to(dtype).contiguous(memory_format=_CL)
    weight = torch.randn(8, 1, 3, 3, generator=gen).to(dtype)
    bias = torch.randn(8, generator=gen).to(dtype)
    try:
        packed = reorder_convolution_weight(weight, [1, 1], [1, 1], [1, 1], 8, None)
        out = convolution_pointwise(x, packed, bias, [1, 1], [1, 1], [1, 1], 8, 'relu', [], None)
    except RuntimeError as e:
        return f'its probe failed: {type(e).__name__}: {str(e).strip().splitlines()[0]}'
    diff = (out - F.relu(F.conv2d(x, weight, bias, 1, 1, 1, 8))).abs().max().item()
    if not diff <= 1e-4:
        return f'its probe computed a depthwise conv off by {diff:.3g}'
    return None


def check_onednn(dtype: torch.dtype = torch.float32) -> bool:
    """Whether the fast path's oneDNN ops are usable. The first call in a process runs :func:`probe_onednn` in
    ``dtype`` (the fast path's is fp32); if the probe fails, the fast path is switched off for the process with one
    ``RuntimeWarning`` naming the failure (:func:`timm_ghost._compat.disable_onednn`) and the portable path runs."""
    global _PROBED, _OPS
    ops = _compat.onednn_ops()
    if ops is None:
        return False
    if not _PROBED:
        _PROBED = True
        reason = probe_onednn(ops, dtype)
        if reason is not None:
            _compat.disable_onednn(reason)
            return False
        _OPS = ops
    return True


def fast_path_enabled(x: torch.Tensor) -> bool:
    """Whether the eager oneDNN path may run on ``x``: an fp32 CPU tensor, autograd off, and no compiler, tracer or
    exporter watching (they get the portable path of standard ops, which they optimise themselves)."""
    return (
        isinstance(x, torch.Tensor)  # not an fx Proxy
        and not _compat.is_compiling()
        and not torch.jit.is_tracing()
        and not torch.onnx.is_in_onnx_export()
        and not torch.is_grad_enabled()
        and x.device.type == 'cpu'
        and x.dtype == torch.float32
        and check_onednn()
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
        # an inference tensor has no version counter; it cannot change outside inference mode either
        key = tuple((c.weight.data_ptr(), -1 if c.weight.is_inference() else c.weight._version) for c in convs)
        if key != self.key:
            self.weights = {
                name: _OPS[1](
                    c.weight.detach(), c.padding, c.stride, c.dilation, c.groups, None)
                for name, c in zip(names, convs)
            }
            self.key = key
        return self.weights


def _dw_fast(x: torch.Tensor, conv: nn.Conv2d, packed: torch.Tensor, attr: str) -> torch.Tensor:
    """Depthwise conv through oneDNN with a pre-packed weight and the unary post-op ``attr`` ('none', 'relu') fused:
    the per-call weight reorder and the separate activation pass are what dominate small depthwise convs."""
    return _OPS[0](
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

    @classmethod
    def from_stem_norm(cls, norm: StemNorm) -> ToChannelsLast:
        """Fold a :class:`~timm_ghost.blocks.StemNorm` into its stem conv in place (the conv gains a bias, its weight
        goes channels_last) and return what takes the norm's place."""
        conv = norm.folds_into()
        fused = fold_conv_bn(conv, norm)
        conv.weight, conv.bias = fused.weight, fused.bias
        to_channels_last_(conv)
        return cls()


class ConvActDeploy(nn.Module):
    """Folded conv -> ReLU (the final 1x1 conv of the network). ``(N, C, H, W)`` in, ``(N, out_chs, H, W)`` out."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = to_channels_last_(conv)

    @classmethod
    def from_block(cls, block: ConvBnAct) -> Optional[ConvActDeploy]:
        """Fold a :class:`~timm_ghost.blocks.ConvBnAct` with a ReLU; None for other activations (folded in place)."""
        if type(block.act1) is nn.ReLU and isinstance(block.bn1, FOLDABLE_NORMS):
            return cls(fold_conv_bn(block.conv, block.bn1))
        return None

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
    def from_block(cls, block: GhostBottleneck) -> Optional[GhostBottleneckDeploy]:
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
        se_reduce = linear_from_conv1x1(se.conv_reduce) if se is not None else None
        se_expand = linear_from_conv1x1(se.conv_expand) if se is not None else None
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
        _is_plain_conv(primary[0]) and isinstance(primary[1], FOLDABLE_NORMS)
        and _is_plain_conv(cheap[0]) and isinstance(cheap[1], FOLDABLE_NORMS)
        and type(primary[2]) is act_type and type(cheap[2]) is act_type
        and primary[0].out_channels == cheap[0].out_channels and module.out_chs == 2 * primary[0].out_channels
        and cheap[0].groups == cheap[0].in_channels
    )


# the inference forms of the training blocks, for their fuse() hooks (timm's reparameterize_model)
register_fuser(GhostBottleneck, GhostBottleneckDeploy.from_block)
register_fuser(ConvBnAct, ConvActDeploy.from_block)
register_fuser(StemNorm, ToChannelsLast.from_stem_norm)
