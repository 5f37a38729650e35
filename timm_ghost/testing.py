"""Helpers for tests and benchmarks that compare models: random weights that exercise every tensor."""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ['randomize_']


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every float tensor of ``model`` random values, BatchNorm running statistics included, so that two models
    agreeing on an input agree on their weights rather than on an init that hides differences. Returns ``model``.

    Norm weights land in [0.75, 1.25], running variances in [0.5, 2], biases and means ~ N(0, 0.1), conv / linear
    weights LeCun-scaled (activations stay O(1) through the depth). The same ``seed`` gives the same values.
    """
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
        else:
            fan_in = t[0].numel()
            t.copy_(torch.randn(t.shape, generator=gen) * (1.0 / fan_in) ** 0.5)
    return model
