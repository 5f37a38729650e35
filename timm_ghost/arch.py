"""GhostNet's architecture table and the paper's numbers: plain data that the model, the weight converters and the
tools all read. A leaf module: it imports nothing of timm_ghost, so every layer above may depend on it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

__all__ = ['BlockCfg', 'GHOSTNET_STAGES', 'STEM_CHS', 'HEAD_CHS', 'WIDTHS', 'PaperResult', 'PAPER_RESULTS']


@dataclass(frozen=True)
class BlockCfg:
    """One row of the paper's table (width 1.0)."""
    kernel_size: int
    exp_chs: int
    out_chs: int
    se_ratio: float
    stride: int


# The paper's table, row for row. Rows are grouped into stages the way timm's built-in groups them: the grouping
# fixes the state-dict keys ``blocks.{stage}.{block}``.
#   k, exp, out, SE, s
_B = BlockCfg
GHOSTNET_STAGES: Tuple[Tuple[BlockCfg, ...], ...] = (
    (_B(3, 16, 16, 0., 1),),
    (_B(3, 48, 24, 0., 2),),
    (_B(3, 72, 24, 0., 1),),
    (_B(5, 72, 40, .25, 2),),
    (_B(5, 120, 40, .25, 1),),
    (_B(3, 240, 80, 0., 2),),
    (_B(3, 200, 80, 0., 1), _B(3, 184, 80, 0., 1), _B(3, 184, 80, 0., 1), _B(3, 480, 112, .25, 1),
     _B(3, 672, 112, .25, 1)),
    (_B(5, 672, 160, .25, 2),),
    (_B(5, 960, 160, 0., 1), _B(5, 960, 160, .25, 1), _B(5, 960, 160, 0., 1), _B(5, 960, 160, .25, 1)),
)
STEM_CHS = 16
HEAD_CHS = 1280  # the pre-logits conv, not scaled by width
WIDTHS: Dict[str, float] = {'ghostnet_050': 0.5, 'ghostnet_100': 1.0, 'ghostnet_130': 1.3}


@dataclass(frozen=True)
class PaperResult:
    """ImageNet-1k numbers from the paper (224 px, single crop)."""
    params_m: float
    macs_m: float
    top1: float
    top5: float


PAPER_RESULTS: Dict[str, PaperResult] = {
    'ghostnet_050': PaperResult(params_m=2.6, macs_m=42, top1=66.2, top5=86.6),
    'ghostnet_100': PaperResult(params_m=5.2, macs_m=141, top1=73.9, top5=91.4),
    'ghostnet_130': PaperResult(params_m=7.3, macs_m=226, top1=75.7, top5=92.7),
}
