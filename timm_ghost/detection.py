"""GhostNet as a torchvision detection backbone: ``ghostnet_fpn_backbone``, the counterpart of torchvision's
``resnet_fpn_backbone`` / ``mobilenet_backbone`` (``torchvision.models.detection.backbone_utils``).

The backbone is timm's ``features_only`` GhostNet with the end-of-resolution taps (``feature_location='bottleneck'``)
wrapped in torchvision's own :class:`~torchvision.models.detection.backbone_utils.BackboneWithFPN`; it returns the
``OrderedDict`` of FPN maps, with ``out_channels``, that ``FasterRCNN``, ``RetinaNet``, ``FCOS``, ``MaskRCNN`` and
``KeypointRCNN`` take. ``timm.utils.reparameterize_model`` folds the GhostNet inside a whole detector.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Type

import torch.nn as nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool

__all__ = ['ghostnet_fpn_backbone', 'NUM_LEVELS']

# feature levels of timm's feature_info: strides 2, 4, 8, 16, 32 (output_stride 16 / 8 keeps the later ones at 16 / 8)
NUM_LEVELS = 5


def ghostnet_fpn_backbone(
        name: str = 'ghostnet_100',
        pretrained: bool = False,
        trainable_layers: int = 3,
        returned_layers: Optional[Sequence[int]] = None,
        extra_blocks: Optional[ExtraFPNBlock] = None,
        norm_layer: Optional[Type[nn.Module]] = FrozenBatchNorm2d,
        out_channels: int = 256,
        fpn_norm_layer: Optional[Type[nn.Module]] = None,
        **kwargs: Any,
) -> BackboneWithFPN:
    """A GhostNet + FPN backbone for torchvision's detectors.

    Args:
        name: a timm model name or tag (``'ghostnet_100'``, ``'ghostnet_130.ssld_in1k'``, ``'local-dir:PATH'``).
        pretrained: load the tag's weights through timm's pretrained path (Hub or PaddleClas), as ``create_model``.
        trainable_layers: how many of the 5 resolution levels, counted from the deepest, keep trainable weights
            (0 to 5; torchvision's default 3). Level ``k`` holds the blocks from tap ``k - 1`` to tap ``k``; level 0
            the stem and ``blocks.0``.
        returned_layers: the levels (1 to 4 for strides 4 / 8 / 16 / 32) handed to the FPN, default ``[1, 2, 3, 4]``
            like ``resnet_fpn_backbone``; RetinaNet / FCOS use ``[2, 3, 4]`` with ``LastLevelP6P7``.
        extra_blocks: the FPN's extra levels (default ``LastLevelMaxPool()``, a ``'pool'`` map at twice the last
            stride, as Faster R-CNN expects).
        norm_layer: what the backbone's BatchNorms become: ``FrozenBatchNorm2d`` (default, as torchvision does for
            detection: batches of 2 to 16 images make BatchNorm statistics useless; converted by
            ``timm.layers.freeze_batch_norm_2d``), or ``nn.BatchNorm2d`` / None to keep them training.
        out_channels: channels of every FPN map (torchvision's 256).
        fpn_norm_layer: norm inside the FPN's convs (torchvision's ``BackboneWithFPN(norm_layer=...)``), default none.
        **kwargs: passed to ``timm.create_model`` (``output_stride``, ``drop_path_rate``, ``pretrained_cfg_overlay``,
            ...).

    Returns:
        torchvision's ``BackboneWithFPN``: ``(N, 3, H, W)`` images in, an ``OrderedDict`` ``{'0': ..., '1': ...,
        'pool': ...}`` of ``(N, out_channels, H / s, W / s)`` maps out, one per returned level (then the extras);
        ``.out_channels == out_channels``.
    """
    import timm
    from timm.layers import freeze_batch_norm_2d

    from . import ghostnet  # noqa: F401  (registers our ghostnet_* in timm)

    if not isinstance(trainable_layers, int) or not 0 <= trainable_layers <= NUM_LEVELS:
        raise ValueError(f'trainable_layers must be an integer in [0, {NUM_LEVELS}], got {trainable_layers!r}')
    returned_layers = [1, 2, 3, 4] if returned_layers is None else list(returned_layers)
    if not returned_layers or any(not isinstance(k, int) or not 1 <= k < NUM_LEVELS for k in returned_layers) \
            or sorted(set(returned_layers)) != returned_layers:
        raise ValueError(f'returned_layers must be increasing levels in [1, {NUM_LEVELS - 1}] '
                         f'(strides 4, 8, 16, 32), got {returned_layers!r}')
    if norm_layer not in (FrozenBatchNorm2d, nn.BatchNorm2d, None):
        raise ValueError(f'norm_layer must be FrozenBatchNorm2d (torchvision.ops), nn.BatchNorm2d or None, '
                         f'got {norm_layer!r}')
    for key in ('features_only', 'feature_location', 'out_indices'):
        if key in kwargs:
            raise ValueError(f'{key} is set by ghostnet_fpn_backbone (end-of-resolution taps of returned_layers), '
                             f'got {key}={kwargs[key]!r}')

    # every level up to the deepest returned one is built; the layers after it are left out
    body = timm.create_model(name, pretrained=pretrained, features_only=True, feature_location='bottleneck',
                             out_indices=tuple(range(max(returned_layers) + 1)), **kwargs)
    if not hasattr(body, 'feature_info') or len(body.feature_info) != max(returned_layers) + 1:
        raise ValueError(f'name: expected a GhostNet (ghostnet_050 / 100 / 130), got {name!r}')
    if norm_layer is FrozenBatchNorm2d:
        body = freeze_batch_norm_2d(body)

    # torchvision's IntermediateLayerGetter takes children by name: the features_only model's flattened stages
    module_names = [info['module'].replace('.', '_') for info in body.feature_info.get_dicts()]
    children = [n for n, _ in body.named_children()]
    level_of_child, level = {}, 0
    for child in children:
        level_of_child[child] = level
        if level < len(module_names) and child == module_names[level]:
            level += 1
    first_trainable = NUM_LEVELS - trainable_layers
    for child_name, child in body.named_children():
        if level_of_child[child_name] < first_trainable:
            child.requires_grad_(False)

    return_layers = {module_names[k]: str(i) for i, k in enumerate(returned_layers)}
    in_channels_list = [body.feature_info.channels()[k] for k in returned_layers]
    return BackboneWithFPN(
        body, return_layers, in_channels_list, out_channels,
        extra_blocks=extra_blocks if extra_blocks is not None else LastLevelMaxPool(), norm_layer=fpn_norm_layer)
