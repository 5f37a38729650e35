"""Shared test utilities (imported by the test modules; pytest puts tests/ on sys.path)."""
from __future__ import annotations

import torch
import torch.nn as nn

import timm_ghost

MODEL_NAMES = list(timm_ghost.MODEL_NAMES)


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every float tensor of ``model`` random values, BatchNorm running statistics included, so that two models
    agreeing on an input agree on their weights rather than on an init that hides differences. Returns ``model``."""
    gen = torch.Generator().manual_seed(seed)
    for name, t in model.state_dict().items():
        if not t.is_floating_point():
            continue
        if name.endswith('running_var'):
            t.copy_(torch.rand(t.shape, generator=gen) * 1.5 + 0.5)
        elif name.endswith('running_mean') or name.endswith('bias'):
            t.copy_(torch.randn(t.shape, generator=gen) * 0.1)
        elif t.ndim == 1:  # norm weight
            t.copy_(torch.rand(t.shape, generator=gen) * 0.5 + 0.75)
        else:  # conv / linear weight: LeCun-scaled so activations stay O(1) through the depth
            fan_in = t[0].numel()
            t.copy_(torch.randn(t.shape, generator=gen) * (1.0 / fan_in) ** 0.5)
    return model


def builtin_model(name: str, **kwargs) -> nn.Module:
    """timm's own built-in GhostNet of ``name`` (its entrypoint function, bypassing the registry we replace)."""
    from timm.models import ghostnet as timm_ghostnet
    return getattr(timm_ghostnet, name)(**kwargs)
