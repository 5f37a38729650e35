"""Released weights beside the code: PaddleClas's GhostNet files and the accuracy PaddleClas reports for them. Plain
data (a leaf module): the pretrained cfgs, the converter and the model cards read it."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Optional, Union

__all__ = ['PADDLECLAS_BASE_URL', 'PaddleClasWeights', 'PADDLECLAS_WEIGHTS', 'released_weights']

PADDLECLAS_BASE_URL = 'https://paddle-imagenet-models-name.bj.bcebos.com/dygraph/'


@dataclass(frozen=True)
class PaddleClasWeights:
    """One released PaddleClas GhostNet file and the accuracy PaddleClas reports for it (ImageNet-1k val, 224 px,
    resize 256 / centre crop 224), not measured here."""
    tag: str
    filename: str
    top1: float
    top5: float

    @property
    def url(self) -> str:
        return PADDLECLAS_BASE_URL + self.filename


# PaddleClas's model-zoo table (docs/zh_CN/models/ImageNet1k/GhostNet.md), beside the files it describes.
PADDLECLAS_WEIGHTS: Dict[str, PaddleClasWeights] = {w.tag: w for w in (
    PaddleClasWeights('ghostnet_050.paddle_in1k', 'GhostNet_x0_5_pretrained.pdparams', 66.8, 86.9),
    PaddleClasWeights('ghostnet_100.paddle_in1k', 'GhostNet_x1_0_pretrained.pdparams', 74.0, 91.6),
    PaddleClasWeights('ghostnet_130.paddle_in1k', 'GhostNet_x1_3_pretrained.pdparams', 75.7, 92.5),
    PaddleClasWeights('ghostnet_130.ssld_in1k', 'GhostNet_x1_3_ssld_pretrained.pdparams', 79.4, 94.5),
)}


def released_weights(path_or_url: Union[str, os.PathLike]) -> Optional[PaddleClasWeights]:
    """The released PaddleClas file this path or URL is named like (by file name only), else None."""
    name = os.path.basename(str(path_or_url).split('?')[0])
    return next((w for w in PADDLECLAS_WEIGHTS.values() if w.filename == name), None)
