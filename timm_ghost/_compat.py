"""Every private name timm-ghost uses, in one place.

Each entry says what it is for, why no public name serves, and since which release it exists. A name that has gone
fails with one message naming it and the installed version, instead of an AttributeError deep inside a call. The
model needs the first group at import; the rest are imported lazily by the function that uses them, so that
``import timm_ghost`` survives a refactor of timm's Hub code or torch's oneDNN ops.
"""
from __future__ import annotations

import contextlib
import importlib
import warnings
from typing import Any, Callable, ContextManager, Dict, Optional, Tuple

import timm
import torch

__all__ = [
    'SqueezeExcite', 'feature_take_indices', 'pretrained_cfg_for_features', 'resolve_pretrained_source',
    'generate_readme', 'http_get', 'onednn_ops', 'disable_onednn', 'executorch_reset_threadpool', 'is_compiling',
    'compile_config',
]

_TESTED_TIMM = '1.0.31'


def _private(module: str, name: str, why: str, since: str, package: str = 'timm') -> Any:
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        version = {'timm': timm.__version__}.get(package) or _version(package)
        raise ImportError(
            f'timm-ghost needs {module}.{name} ({why}; in {package} since {since}), which {package} {version} does '
            f'not have. timm-ghost is tested with timm {_TESTED_TIMM}: install a {package} version it supports, '
            f'or a timm-ghost release made for {package} {version}') from e


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(package)
    except PackageNotFoundError:
        return '(not installed)'


# ---------------------------------------------------------------------------------------------- needed by the model
# timm's built-in GhostNet uses this SE block; its conv_reduce / conv_expand keys are part of the state-dict layout we
# promise (timm.layers.SqueezeExcite is another block with other keys).
SqueezeExcite = _private(
    'timm.models._efficientnet_blocks', 'SqueezeExcite',
    why="the SE block of timm's built-in GhostNet, whose keys fix the state-dict layout", since='0.8.2')
# forward_intermediates' index rule (negative / int / list), shared by every timm model; not exported by timm.models.
feature_take_indices = _private(
    'timm.models._features', 'feature_take_indices',
    why='the index rule of forward_intermediates shared by all timm models', since='1.0.3')
# what build_model_with_cfg does to a features_only model's pretrained_cfg, applied to the cfg we report.
pretrained_cfg_for_features = _private(
    'timm.models._builder', 'pretrained_cfg_for_features',
    why="the pretrained_cfg timm reports for features_only models", since='0.6')


# Whether torch.compile (dynamo) is tracing: public as torch.compiler.is_compiling since torch 2.3; older torch has only
# torch._dynamo.is_compiling (since 2.0), which the public one now calls. (torch.compiler itself is new in 2.1.)
is_compiling: Callable[[], bool] = getattr(getattr(torch, 'compiler', None), 'is_compiling', None) or _private(
    'torch._dynamo', 'is_compiling', why='whether torch.compile is tracing, before torch.compiler.is_compiling (2.3)',
    since='2.0', package='torch')


# ---------------------------------------------------------------------------------------------- Hub and export only
def resolve_pretrained_source() -> Callable[[Any], Tuple[str, Any]]:
    """timm's rule for which source (hf-hub, url, file, state_dict) a pretrained cfg loads from; no public form."""
    return _private('timm.models._builder', '_resolve_pretrained_source',
                    why='which weight source timm would load a pretrained_cfg from', since='0.6')


def generate_readme() -> Callable[..., str]:
    """timm's Hub model-card writer (the cards of timm's own weights); not exported by timm.models."""
    return _private('timm.models._hub', 'generate_readme', why="timm's Hub model-card writer", since='0.9.0')


def http_get() -> Callable[..., None]:
    """huggingface_hub's streaming download with its timeouts, retries and progress bar, for plain URLs; it is not in
    huggingface_hub's top-level API (hf_hub_download serves only Hub repositories)."""
    return _private('huggingface_hub.file_download', 'http_get', why='streaming URL download with progress and '
                    'timeouts', since='0.10', package='huggingface_hub')


def executorch_reset_threadpool() -> Callable[[int], None]:
    """ExecuTorch's resize of its shared threadpool (XNNPACK's workers): its Python runtime has no public setting for
    the thread count, which benchmarks need to match the other runtimes'."""
    return _private('executorch.extension.pybindings.portable_lib', '_unsafe_reset_threadpool',
                    why="the thread count of ExecuTorch's XNNPACK threadpool", since='0.4', package='executorch')


def compile_config(options: Dict[str, Any], recompile_limit: int = 64) -> ContextManager[Any]:
    """torch's compiler settings for the duration of one compile: inductor's config patched with ``options``, and
    dynamo told to raise where it would quietly run eager.

    ``torch.compile(options=...)`` hands options to inductor only when the graph reaches it, which is too late for
    ``freezing``: dynamo decides at trace time, from the global ``torch._inductor.config.freezing``, whether
    parameters are frozen constants (torch 2.14: ``torch._dynamo.utils.is_parameter_freezing``), so
    ``options={'freezing': True}`` alone freezes nothing. Frozen parameters are guarded by identity, so every model a
    process compiles is a recompile of the same ``forward`` code; past dynamo's ``recompile_limit`` (8 in torch 2.14)
    the next model silently runs eager. Here the limit is ``recompile_limit`` and hitting it raises, so the caller can
    say so. Neither config module has a public form; ``config.patch`` is the context manager torch's own tests use."""
    inductor = _private('torch._inductor', 'config', why="inductor's settings (freezing must be set while dynamo "
                        'traces)', since='2.0', package='torch')
    dynamo = _private('torch._dynamo', 'config', why="dynamo's recompile limit (raise instead of running eager)",
                      since='2.0', package='torch')
    limits = {'recompile_limit': max(recompile_limit, dynamo.recompile_limit), 'fail_on_recompile_limit_hit': True}
    stack = contextlib.ExitStack()
    stack.enter_context(inductor.patch(options))
    stack.enter_context(dynamo.patch(**{k: v for k, v in limits.items() if hasattr(dynamo, k)}))
    return stack


_ONEDNN: Optional[Tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]] = None
_ONEDNN_OFF = False


def onednn_ops() -> Optional[Tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]]:
    """``(convolution_pointwise, reorder_convolution_weight)``: the oneDNN ops torch's inductor uses for packed-weight
    CPU convolutions (``torch.ops.mkldnn``, private to torch). None where they are absent or have been switched off
    by :func:`disable_onednn`; the deploy model then runs standard ops only."""
    global _ONEDNN
    if _ONEDNN_OFF or not torch.backends.mkldnn.is_available():
        return None
    if _ONEDNN is None:
        ops = torch.ops.mkldnn
        if not (hasattr(ops, '_convolution_pointwise') and hasattr(ops, '_reorder_convolution_weight')):
            disable_onednn('torch.ops.mkldnn._convolution_pointwise / _reorder_convolution_weight are missing in '
                           f'torch {torch.__version__}')
            return None
        _ONEDNN = (ops._convolution_pointwise, ops._reorder_convolution_weight)
    return _ONEDNN


def disable_onednn(reason: str) -> None:
    """Switch the oneDNN fast path off for this process, warning once with ``reason``."""
    global _ONEDNN_OFF
    if not _ONEDNN_OFF:
        _ONEDNN_OFF = True
        warnings.warn(f'timm-ghost: the deploy model\'s oneDNN fast path is off ({reason}); standard ops run instead '
                      f'(same results, slower on CPU)', RuntimeWarning, stacklevel=3)
