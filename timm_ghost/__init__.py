"""GhostNet for timm: ``import timm_ghost`` registers ghostnet_050 / ghostnet_100 / ghostnet_130 in timm's model
registry, replacing timm's built-in entries of those names with a weight-compatible superset."""
from . import deploy  # noqa: F401  (registers the deploy forms the blocks' fuse() hooks return)
from .arch import GHOSTNET_STAGES, PAPER_RESULTS, WIDTHS, BlockCfg, PaperResult
from .blocks import ConvBnAct, GhostBottleneck, GhostModule
from .errors import PretrainedWeightsError
from .ghostnet import GhostNet
from .inference import InferenceModel, inference_model

__version__ = '0.1.0'
MODEL_NAMES = tuple(WIDTHS)

__all__ = [
    'GhostNet', 'GhostModule', 'GhostBottleneck', 'ConvBnAct', 'BlockCfg', 'GHOSTNET_STAGES', 'PAPER_RESULTS',
    'PaperResult', 'WIDTHS', 'MODEL_NAMES', 'PretrainedWeightsError', 'inference_model', 'InferenceModel',
    '__version__',
]
