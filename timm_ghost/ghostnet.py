"""GhostNet (Han et al., CVPR 2020, arXiv:1911.11907) registered in timm as ghostnet_050 / _100 / _130.

The state-dict layout is that of timm's built-in ``timm.models.ghostnet`` key for key, so timm's Hub weights load
unchanged and checkpoints trained here load into plain timm. Beyond the built-in: stochastic depth
(``drop_path_rate``), output stride 16 / 8 by dilation, BN folding through ``timm.utils.reparameterize_model``,
safetensors-only remote weights, end-of-resolution feature taps (``feature_location='bottleneck'``) and argument
checks with clear errors.
"""
# No ``from __future__ import annotations`` here: fx copies forward()'s annotations into its generated code, and
# string annotations there are names TorchScript cannot resolve (timm scripts fx-traced models).
import warnings
from functools import partial
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    Linear,
    SelectAdaptivePool2d,
    create_conv2d,
    make_divisible,
    register_notrace_module,
)
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model

from ._compat import feature_take_indices, get_device_dtype, pretrained_cfg_for_features
from .arch import GHOSTNET_STAGES, HEAD_CHS, PAPER_RESULTS, STEM_CHS, WIDTHS, BlockCfg, PaperResult
from .blocks import ConvBnAct, GhostBottleneck, StemNorm
from .errors import UnsupportedPoolError
from .hub import checkpoint_filter_fn, prepare_pretrained
from .releases import PADDLECLAS_WEIGHTS

# the table and the paper's numbers live in .arch (a leaf both the model and the converters read); re-exported here
__all__ = ['GhostNet', 'BlockCfg', 'GHOSTNET_STAGES', 'PaperResult', 'PAPER_RESULTS', 'WIDTHS']


_POOL_TYPES = ('', 'avg', 'max', 'avgmax', 'fast', 'fastavg', 'fastmax', 'fastavgmax')
_FEATURE_LOCATIONS = ('', 'bottleneck')


def _check_input_channels(x: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Return ``x`` unchanged if it is ``(N, in_chans, H, W)``, else raise a ValueError saying what was expected.
    Scriptable: fx graphs of the model call it, and timm scripts those graphs."""
    if torch.jit.is_tracing():  # shapes are constants to the tracer; checking would only add warnings
        return x
    if x.dim() != 4 or x.shape[1] != in_chans:
        got = str(x.shape[1]) if x.dim() > 1 else 'no'
        shape = ', '.join([str(s) for s in x.shape])
        raise ValueError(
            f'GhostNet input: expected a (N, {in_chans}, H, W) tensor ({in_chans} channels, in_chans={in_chans}), '
            f'got shape ({shape}) ({got} channels)')
    return x


# a leaf in fx graphs (timm's feature extraction), still checked at run time; it returns its input so that dead-code
# elimination of the traced graph keeps it
torch.fx.wrap('_check_input_channels')
register_notrace_module(StemNorm)  # a BatchNorm2d, traced as a leaf like torch's own


class GhostNet(nn.Module):
    """GhostNet v1.

    Input ``(N, in_chans, H, W)``; ``forward`` returns logits ``(N, num_classes)`` (pooled ``(N, 1280)`` pre-logits
    when ``num_classes=0``). ``forward_features`` returns ``(N, num_features, H / s, W / s)`` with
    ``s = output_stride``.
    """

    def __init__(
            self,
            stages: Sequence[Sequence[BlockCfg]] = GHOSTNET_STAGES,
            num_classes: int = 1000,
            width: float = 1.0,
            in_chans: int = 3,
            output_stride: int = 32,
            global_pool: str = 'avg',
            drop_rate: float = 0.2,
            drop_path_rate: float = 0.,
            drop_block_rate: Optional[float] = None,
            bn_momentum: Optional[float] = None,
            bn_eps: Optional[float] = None,
            feature_location: str = '',
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ) -> None:
        """
        Args:
            stages: the architecture table, grouped into stages.
            num_classes: classifier outputs; 0 removes the classifier (forward returns pooled 1280-d features).
            width: channel multiplier (0.5, 1.0, 1.3 for the registered variants).
            in_chans: input image channels.
            output_stride: 32, or 16 / 8 to dilate the last stages instead of striding (dense prediction).
            global_pool: one of '', 'avg', 'max', 'avgmax' and their 'fast' variants.
            drop_rate: dropout before the classifier.
            drop_path_rate: stochastic depth, rising linearly over the blocks to this rate.
            drop_block_rate: not supported by GhostNet; only None or 0 are accepted (timm's train.py passes None).
            bn_momentum, bn_eps: BatchNorm overrides (None keeps torch's defaults).
            feature_location: which map of each resolution ``feature_info`` (``features_only``,
                ``forward_intermediates``, ``prune_intermediate_layers``) taps. '' (default): timm's built-in taps,
                the stem conv and the first (downsampling) stage of each resolution, ``blocks.1/3/5/7``.
                'bottleneck' (as timm's mobilenetv3 names it): the last map of each resolution, ``blocks.0/2/4/6/9``,
                what detection and segmentation necks take (at width 1.0: 16, 24, 40, 112, 960 channels at
                /2 /4 /8 /16 /32).
        """
        super().__init__()
        if not width > 0:
            raise ValueError(f'width must be > 0, got {width!r}')
        if in_chans < 1:
            raise ValueError(f'in_chans must be >= 1, got {in_chans!r}')
        if num_classes < 0:
            raise ValueError(f'num_classes must be >= 0 (0 removes the classifier), got {num_classes!r}')
        if output_stride not in (8, 16, 32):
            raise ValueError(f'output_stride must be one of 8, 16, 32, got {output_stride!r}')
        if feature_location not in _FEATURE_LOCATIONS:
            raise ValueError(f"feature_location must be '' (timm's built-in taps) or 'bottleneck' (the last map of "
                             f"each resolution), got {feature_location!r}")
        _check_global_pool(global_pool)
        if not 0. <= drop_rate < 1. or not 0. <= drop_path_rate < 1.:
            raise ValueError(f'drop_rate and drop_path_rate must be in [0, 1), got {drop_rate!r}, {drop_path_rate!r}')
        if drop_block_rate:
            raise ValueError(f'drop_block_rate is not supported by GhostNet (got {drop_block_rate!r}); '
                             f'use drop_path_rate for stochastic depth')
        dd = {'device': device, 'dtype': dtype}
        bn_kwargs: Dict[str, float] = {}
        if bn_momentum is not None:
            bn_kwargs['momentum'] = bn_momentum
        if bn_eps is not None:
            bn_kwargs['eps'] = bn_eps
        norm_layer = partial(nn.BatchNorm2d, **bn_kwargs)

        self.num_classes = num_classes
        self.in_chans = in_chans
        self.width = width
        self.output_stride = output_stride
        self.feature_location = feature_location
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        stem_chs = make_divisible(STEM_CHS * width, 4)
        self.conv_stem = create_conv2d(in_chans, stem_chs, 3, stride=2, **dd)
        self.bn1 = StemNorm(stem_chs, self.conv_stem, **bn_kwargs, **dd)
        self.act1 = nn.ReLU(inplace=True)

        num_blocks = sum(len(s) for s in stages)
        prev_chs, net_stride, dilation, block_idx = stem_chs, 2, 1, 0
        stage_modules: List[nn.Module] = []
        stage_outs: List[Tuple[int, int]] = []  # (channels, reduction) of each stage's output
        for stage in stages:
            blocks = []
            for cfg in stage:
                stride, next_dilation = cfg.stride, dilation
                if stride > 1:
                    if net_stride * stride > output_stride:
                        next_dilation, stride = dilation * stride, 1  # dilate instead of striding
                    else:
                        net_stride *= stride
                out_chs = make_divisible(cfg.out_chs * width, 4)
                blocks.append(GhostBottleneck(
                    prev_chs, make_divisible(cfg.exp_chs * width, 4), out_chs, cfg.kernel_size,
                    stride=stride, dilation=dilation, downsample=cfg.stride > 1, se_ratio=cfg.se_ratio,
                    norm_layer=norm_layer, drop_path_rate=drop_path_rate * block_idx / max(num_blocks - 1, 1), **dd,
                ))
                prev_chs, dilation, block_idx = out_chs, next_dilation, block_idx + 1
            stage_modules.append(nn.Sequential(*blocks))
            stage_outs.append((prev_chs, net_stride))
        out_chs = make_divisible(stages[-1][-1].exp_chs * width, 4)
        stage_modules.append(nn.Sequential(ConvBnAct(prev_chs, out_chs, 1, norm_layer=norm_layer, **dd)))
        stage_outs.append((out_chs, net_stride))
        self.blocks = nn.Sequential(*stage_modules)
        # the stage (index into blocks, -1: the stem conv) of each feature_info entry
        self.stage_ends = _feature_stages(stages, feature_location)
        self.feature_info: List[Dict[str, Any]] = [
            dict(num_chs=stem_chs, reduction=2, module='conv_stem') if i < 0 else
            dict(num_chs=stage_outs[i][0], reduction=stage_outs[i][1], module=f'blocks.{i}')
            for i in self.stage_ends
        ]

        self.num_features = out_chs
        self.head_hidden_size = HEAD_CHS
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool)
        self.conv_head = nn.Conv2d(out_chs, HEAD_CHS, 1, bias=True, **dd)
        self.act2 = nn.ReLU(inplace=True)
        self.flatten = nn.Flatten(1) if global_pool else nn.Identity()
        self.classifier = Linear(HEAD_CHS, num_classes, **dd) if num_classes > 0 else nn.Identity()

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^conv_stem|bn1',
            blocks=[
                (r'^blocks\.(\d+)' if coarse else r'^blocks\.(\d+)\.(\d+)', None),
                (r'conv_head', (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the classifier with a fresh one of ``num_classes`` outputs (0 removes it)."""
        if num_classes < 0:
            raise ValueError(f'num_classes must be >= 0, got {num_classes!r}')
        if global_pool is not None:
            _check_global_pool(global_pool)  # before anything changes
        dd = get_device_dtype(self)
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool)
            self.flatten = nn.Flatten(1) if global_pool else nn.Identity()
        self.classifier = Linear(self.head_hidden_size, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.classifier.train(self.training)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward returning the feature maps of ``feature_info`` (see ``feature_location``).

        Args:
            x: ``(N, in_chans, H, W)`` images.
            indices: take the last n if int, all if None, else these indices of ``feature_info``.
            norm: unused (no final norm in GhostNet), kept for the timm contract.
            stop_early: stop after the last requested feature map.
            output_fmt: only 'NCHW'.
            intermediates_only: return only the list of feature maps.
        Returns:
            ``(final_features, [feature maps])`` or just the list.
        """
        if output_fmt != 'NCHW':
            raise ValueError(f"output_fmt must be 'NCHW', got '{output_fmt}'")  # no !r: TorchScript compiles this
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stage_ends), indices)
        take_indices = [self.stage_ends[i] + 1 for i in take_indices]
        max_index = self.stage_ends[max_index]

        if not torch.jit.is_scripting():
            x = _check_input_channels(x, self.in_chans)
        x = self.conv_stem(x)
        if 0 in take_indices:
            intermediates.append(x)
        x = self.act1(self.bn1(x))
        # the blocks after the last tap (incl. the final conv) belong to the final features
        if torch.jit.is_scripting() or not stop_early or max_index == self.stage_ends[-1]:
            stages = self.blocks
        else:
            stages = self.blocks[:max_index + 1]
        for feat_idx, stage in enumerate(stages, start=1):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint_seq(stage, x)
            else:
                x = stage(x)
            if feat_idx in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the layers not needed for the ``feature_info`` maps at ``indices``; returns the kept indices."""
        take_indices, max_index = feature_take_indices(len(self.stage_ends), indices)
        num_chs = self.feature_info[max_index]['num_chs']
        max_index = self.stage_ends[max_index]
        if not (prune_norm or prune_head or max_index < self.stage_ends[-1]):
            return take_indices
        self.blocks = self.blocks[:max_index + 1]
        if max_index < 0:
            self.bn1 = nn.Identity()  # the stem feature is the conv output
            self.act1 = nn.Identity()
        self.num_features = self.head_hidden_size = num_chs
        self.conv_head = nn.Identity()
        self.act2 = nn.Identity()
        self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            x = _check_input_channels(x, self.in_chans)
        x = self.conv_stem(x)
        x = self.bn1(x)
        x = self.act1(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x, flatten=True)
        else:
            x = self.blocks(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        x = self.conv_head(x)
        x = self.act2(x)
        x = self.flatten(x)
        if self.drop_rate > 0.:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        x = self.forward_head(x)
        return x


def _feature_stages(stages: Sequence[Sequence[BlockCfg]], feature_location: str) -> List[int]:
    """The stages (indices into ``GhostNet.blocks``; -1 is the stem conv, ``len(stages)`` the final 1x1 conv) whose
    outputs ``feature_info`` lists, one per resolution: the built-in's (stem conv, then each stage holding a
    downsampling block) for '', the last stage of each resolution for 'bottleneck'. Strides are the table's, so
    dilation (output_stride 16 / 8) keeps the taps in place."""
    if feature_location == 'bottleneck':
        return [i for i in range(len(stages) - 1) if stages[i + 1][0].stride > 1] + [len(stages)]
    return [-1] + [i for i, stage in enumerate(stages) if any(cfg.stride > 1 for cfg in stage)]


def _check_global_pool(global_pool: str) -> None:
    """Raise :class:`~timm_ghost.errors.UnsupportedPoolError` (a ValueError, and the AssertionError by which timm
    recognises a model without concat pooling) unless GhostNet can take ``global_pool``."""
    if global_pool not in _POOL_TYPES:
        why = (' (concat pooling doubles the pooled width, and the conv_head after the pool takes num_features '
               'channels)' if 'cat' in global_pool else '')
        raise UnsupportedPoolError(f'global_pool must be one of {_POOL_TYPES}, got {global_pool!r}{why}')


def _create_ghostnet(variant: str, pretrained: bool = False, **kwargs: Any) -> GhostNet:
    pretrained_cfg = kwargs.pop('pretrained_cfg', None)
    overlay = kwargs.pop('pretrained_cfg_overlay', None)
    # weights are resolved here (safetensors only over the network) and handed to timm's loader as a local file
    pretrained_cfg, overlay, reported_cfg = prepare_pretrained(
        variant, pretrained, pretrained_cfg, overlay, cache_dir=kwargs.get('cache_dir'))
    model = build_model_with_cfg(
        GhostNet,
        variant,
        pretrained,
        pretrained_cfg=pretrained_cfg,
        pretrained_cfg_overlay=overlay,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True),
        width=WIDTHS[variant],
        **kwargs,
    )
    if reported_cfg is not None:  # report the weights' origin (Hub id, URL), not the local copy loaded
        if not isinstance(model, GhostNet):
            reported_cfg = pretrained_cfg_for_features(reported_cfg)
        model.pretrained_cfg = model.default_cfg = reported_cfg
    return model


def _cfg(variant: str, paddleclas: str = '', **kwargs: Any) -> Dict[str, Any]:
    """The pretrained cfg of ``variant``; ``paddleclas`` names a PaddleClas release (tag ``paddle_in1k`` /
    ``ssld_in1k``), whose URL, evaluation transform and reported accuracy it then carries."""
    paper = PAPER_RESULTS[variant]
    notes = [f'paper (ImageNet-1k, 224 px): params {paper.params_m}M, MACs {paper.macs_m:g}M, '
             f'top-1 {paper.top1}, top-5 {paper.top5}']
    if paddleclas:
        weights = PADDLECLAS_WEIGHTS[f'{variant}.{paddleclas}']
        notes.insert(0, f'PaddleClas reported (ImageNet-1k val, resize 256 / centre crop 224; not measured here): '
                        f'top-1 {weights.top1}, top-5 {weights.top5}')
        kwargs = {
            'url': weights.url,
            'interpolation': 'bilinear',  # PaddleClas's eval transform: resize short side 256, centre crop 224
            'origin_url': 'https://github.com/PaddlePaddle/PaddleClas',
            'description': (
                'distilled by PaddleClas with its SSLD recipe (semi-supervised label distillation from a larger '
                'teacher)' if paddleclas == 'ssld_in1k' else 'trained on ImageNet-1k by PaddleClas') + (
                f'; {weights.filename}, converted exactly to timm\'s layout on first use'),
            **kwargs,
        }
    return {
        'url': '', 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'conv_stem', 'classifier': 'classifier',
        'license': 'apache-2.0',
        'paper_name': 'GhostNet: More Features from Cheap Operations',
        'paper_ids': 'arXiv:1911.11907',
        'notes': tuple(notes),
        **kwargs,
    }


# The first tag of a model is its default (timm's rule). ghostnet_100 keeps the authors' weights (timm's Hub copy,
# safetensors, no conversion); PaddleClas's plain ImageNet-1k training comes before its SSLD distillation, as in
# timm's own PaddleClas-origin weights (hgnet_tiny / hgnet_small: paddle_in1k, then ssld_in1k).
default_cfgs = generate_default_cfgs({
    'ghostnet_050.paddle_in1k': _cfg('ghostnet_050', paddleclas='paddle_in1k'),
    'ghostnet_100.in1k': _cfg(
        'ghostnet_100',
        hf_hub_id='timm/',
        origin_url='https://github.com/huawei-noah/Efficient-AI-Backbones',
    ),
    'ghostnet_100.paddle_in1k': _cfg('ghostnet_100', paddleclas='paddle_in1k'),
    'ghostnet_130.paddle_in1k': _cfg('ghostnet_130', paddleclas='paddle_in1k'),
    'ghostnet_130.ssld_in1k': _cfg('ghostnet_130', paddleclas='ssld_in1k'),
})


# Replacing timm's built-in entries of these names is the point of this package: keep timm's warning quiet.
with warnings.catch_warnings():
    warnings.filterwarnings('ignore', message='Overwriting ghostnet_', category=UserWarning)

    @register_model
    def ghostnet_050(pretrained: bool = False, **kwargs: Any) -> GhostNet:
        """GhostNet-0.5x"""
        return _create_ghostnet('ghostnet_050', pretrained=pretrained, **kwargs)

    @register_model
    def ghostnet_100(pretrained: bool = False, **kwargs: Any) -> GhostNet:
        """GhostNet-1.0x"""
        return _create_ghostnet('ghostnet_100', pretrained=pretrained, **kwargs)

    @register_model
    def ghostnet_130(pretrained: bool = False, **kwargs: Any) -> GhostNet:
        """GhostNet-1.3x"""
        return _create_ghostnet('ghostnet_130', pretrained=pretrained, **kwargs)
