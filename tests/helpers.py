"""Shared test utilities (imported by the test modules; pytest puts tests/ on sys.path)."""
from __future__ import annotations

from typing import List

import torch
import torch.nn as nn

import timm_ghost
from timm_ghost.testing import randomize_

__all__ = ['MODEL_NAMES', 'END_OF_RESOLUTION_CHANNELS', 'randomize_', 'builtin_model', 'stage_outputs']

MODEL_NAMES = list(timm_ghost.MODEL_NAMES)
# feature_location='bottleneck': channels of the last map at /2 /4 /8 /16 /32 (blocks.0/2/4/6/9), from the table:
# make_divisible(c * width, 4) of 16, 24, 40, 112 and the final conv's 960
END_OF_RESOLUTION_CHANNELS = {
    'ghostnet_050': [8, 12, 20, 56, 480],
    'ghostnet_100': [16, 24, 40, 112, 960],
    'ghostnet_130': [20, 32, 52, 144, 1248],
}


def builtin_model(name: str, **kwargs) -> nn.Module:
    """timm's own built-in GhostNet of ``name`` (its entrypoint function, bypassing the registry we replace)."""
    from timm.models import ghostnet as timm_ghostnet
    return getattr(timm_ghostnet, name)(**kwargs)


def stage_outputs(model: nn.Module, x: torch.Tensor) -> List[torch.Tensor]:
    """The output of every stage of a GhostNet (``blocks.0`` .. ``blocks.9``), computed module by module."""
    x = model.act1(model.bn1(model.conv_stem(x)))
    outs = []
    for stage in model.blocks:
        x = stage(x)
        outs.append(x)
    return outs
