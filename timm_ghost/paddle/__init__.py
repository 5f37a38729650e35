"""PaddleClas GhostNet checkpoints (``.pdparams``) mapped exactly onto timm's GhostNet state dict, one module per job:

- :mod:`.reader`: the restricted unpickler (numpy arrays only; a pickle naming any other global is refused before
  anything runs);
- :mod:`.mapping`: the exact key mapping onto timm's layout (SE width, SE gate and head norm folded in);
- :mod:`.cache`: release URLs downloaded once, converted and cached as safetensors (locked, checked on every read);
- :mod:`.card`: the pretrained cfg and model-card details of a converted file (``timm-ghost convert``).

The releases themselves (tags, files, reported accuracy) are data in :mod:`timm_ghost.releases`. The names below are
re-exported so that ``timm_ghost.paddle.<name>`` keeps working.
"""
from ..releases import PADDLECLAS_BASE_URL, PADDLECLAS_WEIGHTS, PaddleClasWeights, released_weights
from .cache import CONVERTER_VERSION, cached_paddle_weights, download_paddle_weights, paddle_cache_dir
from .card import paddle_export_cfg
from .mapping import PADDLE_BN_EPS, convert_paddle_state_dict, load_pdparams, paddle_layout
from .reader import PADDLE_SUFFIX, RestrictedUnpickler, is_pdparams, looks_like_pdparams, read_pdparams

__all__ = [
    'PADDLECLAS_BASE_URL', 'PaddleClasWeights', 'PADDLECLAS_WEIGHTS', 'RestrictedUnpickler', 'is_pdparams',
    'read_pdparams', 'paddle_layout', 'convert_paddle_state_dict', 'load_pdparams', 'paddle_cache_dir',
    'cached_paddle_weights', 'download_paddle_weights', 'released_weights', 'looks_like_pdparams',
    'paddle_export_cfg', 'CONVERTER_VERSION', 'PADDLE_SUFFIX', 'PADDLE_BN_EPS',
]
