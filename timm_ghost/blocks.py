"""GhostNet building blocks: the Ghost module, the Ghost bottleneck and the 1x1 head conv.

Module and attribute names follow timm's built-in ``timm.models.ghostnet`` so that state dicts move between the
two key for key. Every conv + BatchNorm pair can be folded by :func:`timm.utils.reparameterize_model`: the blocks'
``fuse()`` hooks return the inference form registered in :mod:`timm_ghost.fold` (by :mod:`timm_ghost.deploy`, which
builds on these blocks), and fold in place where none is registered.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable, Optional

import torch
import torch.nn as nn
from timm.layers import DropPath, create_conv2d, make_divisible

from ._compat import SqueezeExcite
from .fold import fold_conv_bn, fold_sequential_conv_bn, fuse_block

__all__ = ['GhostModule', 'GhostBottleneck', 'ConvBnAct', 'StemNorm']

NormLayer = Callable[..., nn.Module]
ActLayer = Callable[..., nn.Module]

# SE as in the paper: reduce to make_divisible(C / 4, 4), gate relu6(x + 3) / 6
_se_layer = partial(SqueezeExcite, gate_layer='hard_sigmoid', rd_round_fn=partial(make_divisible, divisor=4))


class GhostModule(nn.Module):
    """``ceil(out_chs / ratio)`` intrinsic maps from a 1x1 conv, the rest from a cheap depthwise conv on them.

    Input ``(N, in_chs, H, W)``, output ``(N, out_chs, H, W)``. ``act_layer=None`` gives the linear
    (projection) variant used as the second module of a bottleneck.
    """

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            ratio: int = 2,
            dw_size: int = 3,
            dilation: int = 1,
            act_layer: Optional[ActLayer] = nn.ReLU,
            norm_layer: NormLayer = nn.BatchNorm2d,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ) -> None:
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.out_chs = out_chs
        init_chs = math.ceil(out_chs / ratio)
        new_chs = init_chs * (ratio - 1)
        act = (lambda: act_layer(inplace=True)) if act_layer is not None else nn.Identity
        self.primary_conv = nn.Sequential(
            create_conv2d(in_chs, init_chs, 1, **dd),
            norm_layer(init_chs, **dd),
            act(),
        )
        self.cheap_operation = nn.Sequential(
            create_conv2d(init_chs, new_chs, dw_size, dilation=dilation, groups=init_chs, **dd),
            norm_layer(new_chs, **dd),
            act(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary_conv(x)
        x2 = self.cheap_operation(x1)
        return torch.cat([x1, x2], dim=1)[:, :self.out_chs]

    @torch.jit.ignore
    def reparameterize(self) -> None:
        """Fold both BatchNorms into their convolutions (inference only)."""
        fold_sequential_conv_bn(self.primary_conv)
        fold_sequential_conv_bn(self.cheap_operation)


class GhostBottleneck(nn.Module):
    """Ghost module (expand) -> [depthwise conv + BN if downsampling] -> [SE] -> Ghost module (project) + shortcut.

    ``downsample`` fixes the structure (the depthwise conv and a conv shortcut exist), ``stride`` the stride it
    applies: a downsampling block turned into a dilated one for output_stride 16/8 keeps its parameters.
    """

    def __init__(
            self,
            in_chs: int,
            mid_chs: int,
            out_chs: int,
            dw_kernel_size: int = 3,
            stride: int = 1,
            dilation: int = 1,
            downsample: Optional[bool] = None,
            se_ratio: float = 0.,
            act_layer: ActLayer = nn.ReLU,
            norm_layer: NormLayer = nn.BatchNorm2d,
            drop_path_rate: float = 0.,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ) -> None:
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        downsample = stride > 1 if downsample is None else downsample
        self.stride = stride
        conv_kw = dict(stride=stride, dilation=dilation, **dd)

        self.ghost1 = GhostModule(in_chs, mid_chs, dilation=dilation, act_layer=act_layer, norm_layer=norm_layer, **dd)
        if downsample:
            self.conv_dw: Optional[nn.Module] = create_conv2d(
                mid_chs, mid_chs, dw_kernel_size, depthwise=True, **conv_kw)
            self.bn_dw: Optional[nn.Module] = norm_layer(mid_chs, **dd)
        else:
            self.conv_dw = None
            self.bn_dw = None
        self.se = _se_layer(mid_chs, rd_ratio=se_ratio, act_layer=act_layer, **dd) if se_ratio > 0. else None
        self.ghost2 = GhostModule(mid_chs, out_chs, dilation=dilation, act_layer=None, norm_layer=norm_layer, **dd)

        if in_chs == out_chs and not downsample:
            self.shortcut = nn.Sequential()
        else:
            self.shortcut = nn.Sequential(
                create_conv2d(in_chs, in_chs, dw_kernel_size, depthwise=True, **conv_kw),
                norm_layer(in_chs, **dd),
                create_conv2d(in_chs, out_chs, 1, **dd),
                norm_layer(out_chs, **dd),
            )
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.ghost1(x)
        if self.conv_dw is not None and self.bn_dw is not None:
            x = self.bn_dw(self.conv_dw(x))
        if self.se is not None:
            x = self.se(x)
        x = self.drop_path(self.ghost2(x))
        x += self.shortcut(shortcut)  # in place, as timm's built-in: one activation less alive while training
        return x

    @torch.jit.ignore
    def fuse(self) -> nn.Module:
        """The inference form of this block (:class:`~timm_ghost.deploy.GhostBottleneckDeploy`, every BatchNorm
        folded); a block whose structure it does not cover is folded in place and returned."""
        return fuse_block(self)

    @torch.jit.ignore
    def reparameterize(self) -> None:
        """Fold the depthwise and shortcut BatchNorms in place (the Ghost modules fold their own)."""
        if self.conv_dw is not None and self.bn_dw is not None:
            self.conv_dw = fold_conv_bn(self.conv_dw, self.bn_dw)
            self.bn_dw = nn.Identity()
        if len(self.shortcut):
            fold_sequential_conv_bn(self.shortcut)


class ConvBnAct(nn.Module):
    """Conv -> BN -> act, keyed ``conv`` / ``bn1`` like timm's block of the same name. ``(N, C, H, W)`` in and out."""

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            kernel_size: int = 1,
            act_layer: ActLayer = nn.ReLU,
            norm_layer: NormLayer = nn.BatchNorm2d,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ) -> None:
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.conv = create_conv2d(in_chs, out_chs, kernel_size, **dd)
        self.bn1 = norm_layer(out_chs, **dd)
        self.act1 = act_layer(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act1(self.bn1(self.conv(x)))

    @torch.jit.ignore
    def fuse(self) -> nn.Module:
        """The folded conv + ReLU (:class:`~timm_ghost.deploy.ConvActDeploy`); other activations fold in place."""
        return fuse_block(self)

    @torch.jit.ignore
    def reparameterize(self) -> None:
        """Fold ``bn1`` into ``conv`` in place (inference only)."""
        self.conv = fold_conv_bn(self.conv, self.bn1)
        self.bn1 = nn.Identity()


class StemNorm(nn.BatchNorm2d):
    """The stem's BatchNorm. It keeps a plain reference to the conv before it, so that timm's
    ``reparameterize_model`` (which only visits children) can fold the two even though both are direct children of
    the network (their names are fixed by the state-dict layout). The reference is not a submodule: no extra
    state-dict keys, and ``copy.deepcopy`` of the network maps it to the copied conv.
    """

    def __init__(self, num_features: int, conv: nn.Conv2d, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        self.__dict__['_folds_into'] = conv

    @torch.jit.ignore
    def folds_into(self) -> nn.Conv2d:
        """The stem conv this norm follows."""
        return self.__dict__['_folds_into']

    @torch.jit.ignore
    def fuse(self) -> nn.Module:
        """Fold into the stem conv in place and return what replaces this norm
        (:class:`~timm_ghost.deploy.ToChannelsLast`, a copy of the folded stem map). Without :mod:`timm_ghost.deploy`
        imported, the norm stays as it is: a plain in-place fold would let the in-place ReLU after it overwrite the
        stem feature map that ``features_only`` models hand out."""
        return fuse_block(self)
