"""The export form of a model: what exporters and quantizers get instead of the eager deploy model.

The deploy model (:mod:`timm_ghost.deploy`) is shaped for eager oneDNN; runtimes want other things:

* weights stored NCHW-contiguous (XNNPACK's layout pass rejects channels_last parameters);
* no channels_last copy after the stem (:class:`~timm_ghost.deploy.ToChannelsLast` is there for the eager in-place
  ReLU);
* the SE gate of each Ghost bottleneck without a concat, slices or 2-D tensors: the deploy block pools the two halves
  of the first Ghost module, concatenates them, runs the two SE linears and slices the gate apart again. Here each
  half is pooled with ``keepdim`` and the SE linears become 1x1 convs split by input (reduce) and output (expand)
  channel, so the gate stays 4-D and per half. XNNPACK then takes the whole network in one delegate (its mean is
  4-D only: the 2-D mean, the slices and the layout copies around them ran outside it, splitting the graph into 16
  pieces), and int8 quantizers see no concat / slice to wrap in quantize-dequantize pairs.

For ONNX Runtime a GhostNet classifier's feature maps are also padded with zero channels to multiples of
``PAD_CHANNELS`` (:func:`pad_channels`). ONNX Runtime's CPU provider runs convs in a blocked layout (NCHWc: blocks of
16 channels with AVX-512, 8 with AVX2) and takes a depthwise conv into it only when its channel count is a multiple of
the block; GhostNet's halves (8, 12, 20, 36, 60, 92, 100 channels in ghostnet_100) are not, so the layout was undone
and redone around most depthwise convs (about 100 reorder nodes, 15 % of the batch-1 time). Padded, the reorders left
are the SE gates' (ONNX Runtime multiplies by a broadcast gate outside the blocked layout). The padded channels are
zeros that every later layer reads with zero weights: the same function (``benchmarks/bench_forms.py`` measures this
form and the others tried). OpenVINO runs the unpadded form faster (0.8-0.9x padded, same benchmark); XNNPACK
(ExecuTorch) computes channels-last without channel blocks, where padding would only add work: not padded (not
measured).
"""
from __future__ import annotations

import copy
import functools
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['export_form', 'pad_channels', 'int8_weights_saturate', 'GhostBottleneckExport', 'GhostBottleneckPadded',
           'PAD_CHANNELS', 'padded_layout', 'halves_layout', 'remap_conv', 'remap_depthwise', 'frozen_conv', 'conv1x1']

PAD_CHANNELS = 16  # ONNX Runtime's NCHWc block with AVX-512 (AVX2's, 8, divides it)


@functools.lru_cache(maxsize=1)
def int8_weights_saturate() -> bool:
    """Whether int8 convolutions with full 8-bit weights can saturate on this CPU: an x86 CPU without VNNI
    (AVX512-VNNI or AVX-VNNI) multiplies uint8 activations by int8 weights with VPMADDUBSW, whose 16-bit pair sums
    overflow (ONNX Runtime's quantization docs), which cost the digits-trained ghostnet_050 2 to 4 points of top-1
    on such a CPU. The int8 exports then quantize weights to 7 bits (ONNX Runtime's ``reduce_range``, NNCF's
    ``overflow_fix``). Read from /proc/cpuinfo; False where it cannot be read or the CPU is not x86."""
    import platform

    if platform.machine().lower() not in ('x86_64', 'amd64', 'i386', 'i686'):
        return False
    try:
        text = open('/proc/cpuinfo').read()
    except OSError:
        return False
    flags = set(next((line.split(':', 1)[1].split() for line in text.splitlines() if line.startswith('flags')), []))
    return bool(flags) and not flags & {'avx512_vnni', 'avx_vnni'}


def conv1x1(weight: torch.Tensor, bias: Optional[torch.Tensor]) -> nn.Conv2d:
    """A frozen 1x1 conv with a linear layer's ``weight`` ``(out, in)`` and ``bias``."""
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], 1, bias=bias is not None)
    conv.weight = nn.Parameter(weight.detach()[:, :, None, None].contiguous(), requires_grad=False)
    if bias is not None:
        conv.bias = nn.Parameter(bias.detach().contiguous(), requires_grad=False)
    return conv


class GhostBottleneckExport(nn.Module):
    """:class:`~timm_ghost.deploy.GhostBottleneckDeploy` with a 4-D, concat-free SE gate and standard ops only.
    ``(N, in_chs, H, W)`` in, ``(N, out_chs, H / stride, W / stride)`` out, the same function."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        for name in ('primary1', 'cheap1', 'dw_primary', 'dw_cheap', 'primary2_a', 'primary2_b', 'cheap2',
                     'shortcut_dw', 'shortcut_pw'):
            setattr(self, name, getattr(block, name))
        self.se_reduce_a = self.se_reduce_b = self.se_expand_a = self.se_expand_b = None
        if block.se_reduce is not None and block.se_expand is not None:
            half = block.split1
            reduce, expand = block.se_reduce, block.se_expand
            self.se_reduce_a = conv1x1(reduce.weight[:, :half], reduce.bias)
            self.se_reduce_b = conv1x1(reduce.weight[:, half:], None)
            self.se_expand_a = conv1x1(expand.weight[:half], expand.bias[:half] if expand.bias is not None else None)
            self.se_expand_b = conv1x1(expand.weight[half:], expand.bias[half:] if expand.bias is not None else None)
        self.gate_in_expand = False

    def fold_gate_(self) -> None:
        """Fold the SE gate's hard sigmoid, ``clamp(x / 6 + 1 / 2, 0, 1)``, into the expand convs: they are scaled by
        1/6 and shifted by 1/2, leaving ``clamp(., 0, 1)``, which quantizers fuse into the conv (a Clip after
        QLinearConv) where a HardSigmoid stays a float node between a dequantize and a quantize. Same function."""
        if self.se_expand_a is None or self.gate_in_expand:
            return
        for conv in (self.se_expand_a, self.se_expand_b):
            bias = conv.bias.data if conv.bias is not None else conv.weight.new_zeros(conv.out_channels)
            conv.weight.data = conv.weight.data / 6
            conv.bias = nn.Parameter(bias / 6 + 0.5, requires_grad=False)
        self.gate_in_expand = True

    def _gate(self, conv: nn.Conv2d, h: torch.Tensor) -> torch.Tensor:
        return torch.clamp(conv(h), 0, 1) if self.gate_in_expand else F.hardsigmoid(conv(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.primary1(x))
        b = F.relu(self.cheap1(a))
        if self.dw_primary is not None and self.dw_cheap is not None:
            a = self.dw_primary(a)
            b = self.dw_cheap(b)
        if self.se_reduce_a is not None:
            h = F.relu(self.se_reduce_a(a.mean((2, 3), keepdim=True)) + self.se_reduce_b(b.mean((2, 3), keepdim=True)))
            a = a * self._gate(self.se_expand_a, h)
            b = b * self._gate(self.se_expand_b, h)
        c = self.primary2_a(a) + self.primary2_b(b)
        y = torch.cat([c, self.cheap2(c)], dim=1)
        if self.shortcut_dw is not None and self.shortcut_pw is not None:
            return y + self.shortcut_pw(self.shortcut_dw(x))
        return y + x


class _StemCopy(nn.Module):
    """Takes :class:`~timm_ghost.deploy.ToChannelsLast`'s place outside a GhostNet classifier (a ``features_only``
    backbone, an encoder inside another network): a plain copy of the stem map, which such models hand out as a
    feature while the in-place ReLU after it acts on the copy. ``(N, C, H, W)`` in and out."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


def _holds_ghost_blocks(model: nn.Module) -> bool:
    from ..blocks import ConvBnAct, GhostBottleneck, StemNorm
    from ..deploy import ConvActDeploy, GhostBottleneckDeploy, ToChannelsLast

    kinds = (GhostBottleneck, StemNorm, ConvBnAct, GhostBottleneckDeploy, ToChannelsLast, ConvActDeploy)
    return any(isinstance(m, kinds) for m in model.modules())


# ---- channel layouts for pad_channels: position -> logical channel, -1 for a zero (padding) channel ---------------

def padded_layout(n: int, align: int) -> torch.Tensor:
    size = -(-n // align) * align
    return torch.cat([torch.arange(n), torch.full((size - n,), -1)])


def halves_layout(n: int, align: int) -> torch.Tensor:
    """The layout of a Ghost module's output ``[primary (n), cheap (n)]``, each half padded to ``align``."""
    first = padded_layout(n, align)
    return torch.cat([first, torch.where(first >= 0, first + n, -1)])


def frozen_conv(conv: nn.Conv2d, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> nn.Conv2d:
    conv.weight = nn.Parameter(weight.contiguous(), requires_grad=False)
    conv.bias = None if bias is None else nn.Parameter(bias.contiguous(), requires_grad=False)
    return conv


def remap_conv(conv: nn.Conv2d, lin: torch.Tensor, lout: torch.Tensor) -> nn.Conv2d:
    """``conv`` (groups 1) reading channels laid out as ``lin`` and writing them as ``lout`` (position -> channel of
    ``conv``, -1 for a zero channel): zero weights (and bias) wherever either side is padding."""
    w = conv.weight.detach()
    weight = w.new_zeros(len(lout), len(lin), *w.shape[2:])
    o, i = (lout >= 0).nonzero().flatten(), (lin >= 0).nonzero().flatten()
    weight[o[:, None], i[None, :]] = w[lout[o][:, None], lin[i][None, :]]
    bias = None
    if conv.bias is not None:
        bias = w.new_zeros(len(lout))
        bias[o] = conv.bias.detach()[lout[o]]
    new = nn.Conv2d(len(lin), len(lout), conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    bias=bias is not None)
    return frozen_conv(new, weight, bias)


def remap_depthwise(conv: nn.Conv2d, layout: torch.Tensor) -> nn.Conv2d:
    """The depthwise ``conv`` over channels laid out as ``layout``: zero kernels (and bias) at the padding."""
    w = conv.weight.detach()
    weight = w.new_zeros(len(layout), 1, *w.shape[2:])
    i = (layout >= 0).nonzero().flatten()
    weight[i] = w[layout[i]]
    bias = w.new_zeros(len(layout))
    if conv.bias is not None:
        bias[i] = conv.bias.detach()[layout[i]]
    new = nn.Conv2d(len(layout), len(layout), conv.kernel_size, conv.stride, conv.padding, conv.dilation, len(layout))
    return frozen_conv(new, weight, bias)


class GhostBottleneckPadded(nn.Module):
    """:class:`~timm_ghost.deploy.GhostBottleneckDeploy` on channel-padded maps (see :func:`pad_channels`): input laid
    out as ``lin``, output as ``lout`` (:func:`halves_layout` of the second Ghost module's half width). The same ops as
    :class:`GhostBottleneckExport` (per-half depthwise convs and 4-D SE gate), each on a multiple of ``align``
    channels."""

    def __init__(self, block: nn.Module, lin: torch.Tensor, lout: torch.Tensor, align: int) -> None:
        super().__init__()
        c1 = block.split1
        la, lc = padded_layout(c1, align), padded_layout(block.split2, align)
        self.primary1 = remap_conv(block.primary1, lin, la)
        self.cheap1 = remap_depthwise(block.cheap1, la)
        self.dw_primary = remap_depthwise(block.dw_primary, la) if block.dw_primary is not None else None
        self.dw_cheap = remap_depthwise(block.dw_cheap, la) if block.dw_cheap is not None else None
        self.se_reduce_a = self.se_reduce_b = self.se_expand_a = self.se_expand_b = None
        if block.se_reduce is not None and block.se_expand is not None:
            lr = padded_layout(block.se_reduce.out_features, align)
            reduce, expand = block.se_reduce, block.se_expand
            self.se_reduce_a = remap_conv(conv1x1(reduce.weight[:, :c1], reduce.bias), la, lr)
            self.se_reduce_b = remap_conv(conv1x1(reduce.weight[:, c1:], None), la, lr)
            self.se_expand_a = remap_conv(conv1x1(expand.weight[:c1], expand.bias[:c1]), lr, la)
            self.se_expand_b = remap_conv(conv1x1(expand.weight[c1:], expand.bias[c1:]), lr, la)
        self.primary2_a = remap_conv(block.primary2_a, la, lc)
        self.primary2_b = remap_conv(block.primary2_b, la, lc)
        self.cheap2 = remap_depthwise(block.cheap2, lc)
        self.shortcut_dw = self.shortcut_pw = None
        if block.shortcut_dw is not None and block.shortcut_pw is not None:
            self.shortcut_dw = remap_depthwise(block.shortcut_dw, lin)
            self.shortcut_pw = remap_conv(block.shortcut_pw, lin, lout)
        elif not torch.equal(lin, lout):
            raise ValueError('a Ghost bottleneck adding its input back needs the same channel layout in and out')
        self.gate_in_expand = False

    fold_gate_ = GhostBottleneckExport.fold_gate_
    _gate = GhostBottleneckExport._gate
    forward = GhostBottleneckExport.forward


def _pads(model: nn.Module) -> bool:
    """Whether ``model`` (a deploy GhostNet classifier) has the structure :func:`pad_channels` pads: a stem conv,
    deploy Ghost bottlenecks, and the final 1x1 conv block restoring the plain channel order before the head."""
    from ..deploy import ConvActDeploy, GhostBottleneckDeploy, ToChannelsLast

    blocks = [b for stage in model.blocks for b in stage]
    return (
        isinstance(getattr(model, 'bn1', None), ToChannelsLast) and len(blocks) > 1
        and all(isinstance(b, GhostBottleneckDeploy) for b in blocks[:-1]) and isinstance(blocks[-1], ConvActDeploy)
    )


@torch.no_grad()
def pad_channels(model: nn.Module, align: int = PAD_CHANNELS) -> nn.Module:
    """The deploy GhostNet classifier ``model`` (``timm.utils.reparameterize_model`` output), every feature map
    between its stem conv and its final 1x1 conv padded with zero channels to a multiple of ``align``, each Ghost
    bottleneck a :class:`GhostBottleneckPadded`. A Ghost module's output keeps its two halves, each padded; a block
    that adds its input back reads the layout it writes, and the stem writes the first block's layout when that block
    adds its input back. Same function, same input and output; ``model`` itself is not changed. A model of another
    structure (:func:`_pads`) raises ``ValueError``."""
    from ..deploy import GhostBottleneckDeploy

    if not _pads(model):
        raise ValueError('pad_channels: expected a deploy GhostNet classifier (timm.utils.reparameterize_model of a '
                         'timm-ghost GhostNet)')
    out = copy.deepcopy(model).eval()
    blocks = [b for stage in out.blocks for b in stage]
    first = blocks[0]
    stem_chs = out.conv_stem.out_channels
    lx = halves_layout(first.split2, align) if first.shortcut_dw is None else padded_layout(stem_chs, align)
    out.conv_stem = remap_conv(out.conv_stem, torch.arange(out.conv_stem.in_channels), lx)
    out.bn1 = nn.Identity()
    for stage in out.blocks:
        for i, block in enumerate(stage):
            if isinstance(block, GhostBottleneckDeploy):
                lout = halves_layout(block.split2, align)
                stage[i] = GhostBottleneckPadded(block, lx, lout, align)
                lx = lout
            else:  # the final 1x1 conv block: back to the plain channel order
                block.conv = remap_conv(block.conv, lx, torch.arange(block.conv.out_channels))
    return out


@torch.no_grad()
def export_form(model: nn.Module, fold: bool = True, pad: Optional[int] = None, fold_gates: bool = False) -> nn.Module:
    """A copy of ``model`` in eval mode, shaped for exporters and quantizers (see the module docstring).

    With ``fold`` a timm-ghost GhostNet becomes its deploy model (``timm.utils.reparameterize_model``: BatchNorm
    folded, the first Ghost module's concat never built), then its export form: NCHW weights, no stem copy, each
    deploy bottleneck a :class:`GhostBottleneckExport`. Any other module holding timm-ghost blocks (a
    ``features_only`` GhostNet, a network with a GhostNet encoder, folded already or not) gets the same treatment,
    except that the stem copy stays a plain copy (such models hand the stem map out as a feature). ``pad``: a
    GhostNet classifier's feature maps padded to multiples of ``pad`` channels instead (:func:`pad_channels`; the
    ONNX Runtime exports' form); other modules are not padded (their feature maps are outputs). ``fold_gates``: each
    SE gate's hard sigmoid folded into its expand conv (:meth:`GhostBottleneckExport.fold_gate_`; the ONNX Runtime
    int8 form). Other modules, or ``fold=False``, are copied as they are. Same input and output as ``model``.
    """
    from timm.utils import reparameterize_model

    from ..deploy import GhostBottleneckDeploy, ToChannelsLast
    from ..ghostnet import GhostNet

    out = copy.deepcopy(model).eval()
    classifier = isinstance(out, GhostNet)
    if not (fold and (classifier or _holds_ghost_blocks(out))):
        return out
    out = reparameterize_model(out)
    if pad and classifier and _pads(out):
        out = pad_channels(out, pad)
    for module in list(out.modules()):
        for name, param in list(module.named_parameters(recurse=False)):
            setattr(module, name, nn.Parameter(param.detach().contiguous(), requires_grad=False))
        for name, child in list(module.named_children()):
            if isinstance(child, ToChannelsLast):
                setattr(module, name, nn.Identity() if classifier else _StemCopy())
            elif isinstance(child, GhostBottleneckDeploy):
                setattr(module, name, GhostBottleneckExport(child))
    if fold_gates:
        for module in out.modules():
            if isinstance(module, (GhostBottleneckExport, GhostBottleneckPadded)):
                module.fold_gate_()
    return out
