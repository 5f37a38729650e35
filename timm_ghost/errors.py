"""The errors timm-ghost raises. Library code raises these (or plain ``ValueError`` / ``OSError``); only the command
line turns them into one-line messages, and anything else keeps its traceback."""
from __future__ import annotations

__all__ = [
    'TimmGhostError', 'PretrainedWeightsError', 'ConversionError', 'ExportError', 'MissingDependencyError',
    'UnsupportedPoolError',
]


class TimmGhostError(Exception):
    """Base class of timm-ghost's own errors: a problem with the user's input or environment, not a bug."""


class PretrainedWeightsError(TimmGhostError, RuntimeError):
    """Pretrained weights could not be found, fetched, read or matched to the model."""


class ConversionError(TimmGhostError, ValueError):
    """A checkpoint or folder could not be converted or validated (``timm-ghost convert`` / ``push``)."""


class ExportError(TimmGhostError, RuntimeError):
    """An export could not be made or did not pass its verification; nothing was written."""


class MissingDependencyError(TimmGhostError, ImportError):
    """An optional package is not installed; the message names the extra that installs it."""


class UnsupportedPoolError(ValueError, AssertionError):
    """A ``global_pool`` GhostNet cannot take. A ``ValueError`` with a clear message, and an ``AssertionError``
    because that is what timm's own code catches to detect models without concat pooling."""
