"""The pretrained cfg and model-card details of a converted PaddleClas checkpoint (``timm-ghost convert``)."""
from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple, Union

from ..releases import released_weights

__all__ = ['paddle_export_cfg']


def paddle_export_cfg(model_name: str, src: Union[str, os.PathLike], cfg: Dict[str, Any],
                      tag: Optional[str] = None) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The pretrained cfg and model-card details of a converted PaddleClas checkpoint (``timm-ghost convert``).

    Args:
        model_name: the width the checkpoint was converted for.
        src: the ``.pdparams`` file; named like a PaddleClas release of that width (``GhostNet_x0_5_pretrained``), it
            takes that release's tag, transform, notes and reported accuracy; otherwise PaddleClas's eval transform
            only (the accuracy of other weights is not known here).
        cfg: the model's pretrained cfg to start from.
        tag: a tag given by the user, kept over the release's.
    Returns:
        ``(cfg, details)``: the cfg for config.json, and entries for the card's Model Details.
    """
    from timm.models import get_pretrained_cfg

    release = released_weights(src)
    if release is not None and release.tag.split('.')[0] == model_name:
        known = get_pretrained_cfg(release.tag).to_dict()
        cfg = {**cfg, **{k: known[k] for k in ('interpolation', 'crop_pct', 'crop_mode', 'mean', 'std', 'license',
                                                'origin_url', 'description', 'notes')}, 'tag': tag or known['tag']}
        details = {
            'Original': f'PaddleClas, {release.url} (Apache-2.0), converted exactly to timm\'s layout',
            'Accuracy (reported by PaddleClas, not measured here)': {
                'top-1': release.top1, 'top-5': release.top5, 'dataset': 'imagenet-1k (val)',
                'eval transform': 'resize short side 256, centre crop 224, bilinear, ImageNet mean / std'},
        }
        return cfg, details
    cfg = {**cfg, 'interpolation': 'bilinear', 'crop_pct': 0.875, 'origin_url': 'https://github.com/PaddlePaddle/'
           'PaddleClas', 'tag': tag}
    return cfg, {'Original': f'a PaddleClas GhostNet checkpoint ({os.path.basename(str(src))}), converted exactly to '
                             f'timm\'s layout; its accuracy is not recorded here'}
