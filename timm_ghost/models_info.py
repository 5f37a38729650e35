"""Parameter and MAC counts of the registered variants (torch.utils.flop_counter), and what the weight caches hold."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

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
        model = timm.create_model(name, device='meta')  # the counts need shapes only: no init, no arithmetic (10x)
        rows.append(dict(
            model=name, width=width, params_m=count_params(model) / 1e6, macs_m=count_macs(model, img_size) / 1e6,
            paper_top1=PAPER_RESULTS[name].top1, pretrained=timm.list_pretrained(f'{name}.*'),
        ))
    return rows


def weights_table(cache_dir: Optional[Union[str, os.PathLike]] = None) -> List[Dict[str, Any]]:
    """One row per pretrained tag: its source, and what the cache holds for it (nothing is fetched).

    Hub weights: the cached file, the sha256 the Hub advertised (the blob's name; checked at every load) and its size.
    URL weights (PaddleClas's, converted; safetensors URLs): the sha256 and size of the download as recorded when it
    was first made (not pinned anywhere: compare them with another machine's), and whether the cached file still
    matches its record. ``cache_dir`` as ``timm.create_model`` takes it.
    """
    import timm
    from huggingface_hub import try_to_load_from_cache

    from . import _cache, hub, paddle
    from .hub_download import SAFE_WEIGHTS_NAME
    from .paddle.cache import paddle_cache_entry

    rows = []
    for tag in timm.list_pretrained('ghostnet_*'):
        cfg = timm.models.get_pretrained_cfg(tag)
        row: Dict[str, Any] = dict(tag=tag, cached=None, sha256=None, size=None, status='not cached')
        if cfg.hf_hub_id:
            repo_id, _, revision = cfg.hf_hub_id.partition('@')
            filename = cfg.hf_hub_filename or SAFE_WEIGHTS_NAME
            row['source'] = f'{cfg.hf_hub_id} ({filename})'
            found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision or None)
            if isinstance(found, str):
                blob = Path(found).resolve()
                row.update(cached=found, sha256=blob.name, size=blob.stat().st_size,
                           status='cached (sha256 advertised by the Hub)')
        elif cfg.url:
            row['source'] = cfg.url
            entry = (paddle_cache_entry(cfg.url, cache_dir) if paddle.is_pdparams(cfg.url) else
                     hub.url_cache_entry(cfg.url, cache_dir))
            record = _cache.entry_record(entry)
            if record is not None:
                problem = _cache.read_entry(entry)[1]
                row.update(cached=str(entry.path), sha256=record['download']['sha256'],
                           size=record['download']['size'], status=(
                               f'cached ({"sha256 recorded at first download" if not problem else problem})'))
        rows.append(row)
    return rows


def _print_weights(cache_dir: Optional[str]) -> None:
    for row in weights_table(cache_dir):
        print(f'{row["tag"]}: {row["source"]}')
        if row['cached'] is None:
            print('  not cached')
            continue
        print(f'  {row["status"]}: {row["cached"]}')
        print(f'  sha256 {row["sha256"]}, {row["size"]} bytes')
    print("\nFor PaddleClas's files (and other URLs) the sha256 and size are those of the download, recorded when it "
          "was first made, not pinned: compare them with another machine's `timm-ghost info --weights`.")


def _cmd_info(args: Any) -> int:
    import timm

    if args.weights:
        _print_weights(args.cache_dir)
        return 0
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
    p.add_argument('--weights', action='store_true',
                   help='instead: each pretrained tag, its source, and the sha256 / size of what the cache holds')
    p.add_argument('--cache-dir', default=None,
                   help='with --weights: the cache folder, as timm.create_model(cache_dir=...) takes it')
    p.set_defaults(func=_cmd_info)
