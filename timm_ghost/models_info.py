"""Parameter and MAC counts of the registered variants (torch.utils.flop_counter)."""
from __future__ import annotations

from typing import Any, Dict, List

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, img_size: int = 224) -> int:
    """Multiply-accumulates of one ``(1, 3, img_size, img_size)`` eval-mode forward (FLOPs / 2, as the paper counts).

    Counted with autograd on, so that a deploy model runs its standard convolutions (which the counter knows) rather
    than its oneDNN fast path."""
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    x = torch.zeros(1, getattr(model, 'in_chans', 3), img_size, img_size, device=param.device, dtype=param.dtype)
    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() // 2


def variant_table(img_size: int = 224) -> List[Dict[str, Any]]:
    """One row per registered variant: width, params, MACs, pretrained tags and the paper's top-1."""
    import timm

    from .ghostnet import PAPER_RESULTS, WIDTHS

    rows = []
    for name, width in WIDTHS.items():
        model = timm.create_model(name)
        rows.append(dict(
            model=name, width=width, params_m=count_params(model) / 1e6, macs_m=count_macs(model, img_size) / 1e6,
            paper_top1=PAPER_RESULTS[name].top1, pretrained=timm.list_pretrained(f'{name}.*'),
        ))
    return rows


def _cmd_info(args: Any) -> int:
    import timm

    rows = variant_table(img_size=args.img_size)
    header = f'{"model":<14}{"width":>6}{"params (M)":>12}{"MACs (M)":>10}{"paper top-1":>13}  pretrained tags'
    print(header)
    print('-' * len(header))
    for r in rows:
        print(f'{r["model"]:<14}{r["width"]:>6}{r["params_m"]:>12.2f}{r["macs_m"]:>10.1f}{r["paper_top1"]:>13.1f}'
              f'  {", ".join(r["pretrained"]) or "none"}')
    print(f'\ntimm {timm.__version__}; MACs at {args.img_size} px; paper numbers from arXiv:1911.11907')
    return 0


def register_cli(sub: Any) -> None:
    """Add ``timm-ghost info``."""
    p = sub.add_parser('info', help='table of the variants: params, MACs, pretrained tags, paper top-1')
    p.add_argument('--img-size', type=int, default=224, help='input size for the MAC count (default 224)')
    p.set_defaults(func=_cmd_info)
