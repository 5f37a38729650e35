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
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['export_form', 'GhostBottleneckExport']


def _conv1x1(weight: torch.Tensor, bias: Optional[torch.Tensor]) -> nn.Conv2d:
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
            self.se_reduce_a = _conv1x1(reduce.weight[:, :half], reduce.bias)
            self.se_reduce_b = _conv1x1(reduce.weight[:, half:], None)
            self.se_expand_a = _conv1x1(expand.weight[:half], expand.bias[:half] if expand.bias is not None else None)
            self.se_expand_b = _conv1x1(expand.weight[half:], expand.bias[half:] if expand.bias is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.primary1(x))
        b = F.relu(self.cheap1(a))
        if self.dw_primary is not None and self.dw_cheap is not None:
            a = self.dw_primary(a)
            b = self.dw_cheap(b)
        if self.se_reduce_a is not None:
            h = F.relu(self.se_reduce_a(a.mean((2, 3), keepdim=True)) + self.se_reduce_b(b.mean((2, 3), keepdim=True)))
            a = a * F.hardsigmoid(self.se_expand_a(h))
            b = b * F.hardsigmoid(self.se_expand_b(h))
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


@torch.no_grad()
def export_form(model: nn.Module, fold: bool = True) -> nn.Module:
    """A copy of ``model`` in eval mode, shaped for exporters and quantizers (see the module docstring).

    With ``fold`` a timm-ghost GhostNet becomes its deploy model (``timm.utils.reparameterize_model``: BatchNorm
    folded, the first Ghost module's concat never built), then its export form: NCHW weights, no stem copy, each
    deploy bottleneck a :class:`GhostBottleneckExport`. Any other module holding timm-ghost blocks (a
    ``features_only`` GhostNet, a network with a GhostNet encoder, folded already or not) gets the same treatment,
    except that the stem copy stays a plain copy (such models hand the stem map out as a feature). Other modules, or
    ``fold=False``, are copied as they are. Same input and output as ``model``.
    """
    from timm.utils import reparameterize_model

    from ..deploy import GhostBottleneckDeploy, ToChannelsLast
    from ..ghostnet import GhostNet

    out = copy.deepcopy(model).eval()
    classifier = isinstance(out, GhostNet)
    if not (fold and (classifier or _holds_ghost_blocks(out))):
        return out
    out = reparameterize_model(out)
    for module in list(out.modules()):
        for name, param in list(module.named_parameters(recurse=False)):
            setattr(module, name, nn.Parameter(param.detach().contiguous(), requires_grad=False))
        for name, child in list(module.named_children()):
            if isinstance(child, ToChannelsLast):
                setattr(module, name, nn.Identity() if classifier else _StemCopy())
            elif isinstance(child, GhostBottleneckDeploy):
                setattr(module, name, GhostBottleneckExport(child))
    return out
