"""Every private name timm-ghost uses, and every timm API newer than the oldest timm it supports, in one place.

Each entry says what it is for, why no public name serves, and since which release it exists. A name that has gone
fails with one message naming it and the installed version, instead of an AttributeError deep inside a call. The
model needs the first group at import; the rest are imported lazily by the function that uses them, so that
``import timm_ghost`` survives a refactor of timm's Hub code or torch's oneDNN ops.

timm-ghost supports timm ``TIMM_FLOOR`` (1.0.21) to ``TIMM_TESTED`` (1.0.31). Public timm APIs newer than the floor
are reached through the shims of the second group, each saying since which release timm has it and what stands in
for it before.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import re
import warnings
from typing import Any, Callable, ContextManager, Dict, Optional, Tuple, Union

import timm
import torch
import torch.nn as nn

__all__ = [
    'SqueezeExcite', 'feature_take_indices', 'pretrained_cfg_for_features', 'resolve_pretrained_source',
    'generate_readme', 'http_get', 'onednn_ops', 'disable_onednn', 'executorch_reset_threadpool', 'is_compiling',
    'compile_config', 'TIMM_FLOOR', 'TIMM_TESTED', 'timm_at_least', 'get_device_dtype',
    'classification_task', 'save_for_hf', 'load_state_dict_weights_only', 'timm_loads_weights_only',
]

# the oldest and the newest timm CI runs (.ci/constraints-floor.txt, .ci/constraints.txt); pyproject.toml asks for
# timm >= TIMM_FLOOR
TIMM_FLOOR = '1.0.21'
TIMM_TESTED = '1.0.31'


def _release(version: str) -> Tuple[int, ...]:
    """``'1.0.21'`` -> ``(1, 0, 21)``: the release numbers, a pre-release, dev or local suffix cut (``1.0.29.dev0``,
    ``1.0.30rc1`` and ``1.0.30+cpu`` give ``(1, 0, 29)``, ``(1, 0, 30)``, ``(1, 0, 30)``)."""
    parts = []
    for part in version.split('+')[0].split('.'):
        digits = re.match(r'\d+', part)
        if digits is None:
            break
        parts.append(int(digits.group()))
        if digits.end() < len(part):
            break
    return tuple(parts)


def timm_at_least(version: str) -> bool:
    """Whether the installed timm is ``version`` or newer (release numbers only: 1.0.29.dev0 counts as 1.0.29)."""
    return _release(timm.__version__) >= _release(version)


def _private(module: str, name: str, why: str, since: str, package: str = 'timm') -> Any:
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        version = {'timm': timm.__version__}.get(package) or _version(package)
        raise ImportError(
            f'timm-ghost needs {module}.{name} ({why}; in {package} since {since}), which {package} {version} does '
            f'not have. timm-ghost is tested with timm {TIMM_FLOOR} to {TIMM_TESTED}: install a {package} '
            f'version it supports, '
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


# ------------------------------------------------------------------------------------ timm APIs newer than TIMM_FLOOR
def _get_device_dtype(module: nn.Module, device: Any = None, dtype: Any = None) -> Dict[str, Any]:
    """``{'device': ..., 'dtype': ...}`` for new layers of ``module``: the explicit values, else those of its first
    parameter (``timm.layers.get_device_dtype``'s rule)."""
    parameter = next(module.parameters(), None)
    if parameter is not None:
        device = parameter.device if device is None else device
        dtype = parameter.dtype if dtype is None else dtype
    return {'device': device, 'dtype': dtype}


# The device / dtype of a module's parameters as factory kwargs for its new layers (reset_classifier): public as
# timm.layers.get_device_dtype since timm 1.0.29; the same rule here before.
get_device_dtype: Callable[..., Dict[str, Any]] = getattr(
    importlib.import_module('timm.layers'), 'get_device_dtype', _get_device_dtype)


class _ClassificationStep(nn.Module):
    """``task(input, target) -> {'loss', 'output'}`` around ``model`` and ``criterion``: the call of timm's
    ClassificationTask, for timm before 1.0.23 (whose train.py calls the model and its loss directly)."""

    def __init__(self, model: nn.Module, criterion: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.criterion = criterion

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        output = self.model(input)
        return {'loss': self.criterion(output, target), 'output': output}


def classification_task(model: nn.Module, smoothing: float = 0., verbose: bool = False) -> nn.Module:
    """A classification training step over ``model`` with timm's default loss (cross-entropy, label smoothing
    ``smoothing``): ``task(input, target)`` returns ``{'loss', 'output'}``.

    timm.task.ClassificationTask builds that loss itself from ``criterion_kwargs`` since timm 1.0.31; timm 1.0.23
    to 1.0.30 take the criterion, given here as 1.0.31 would create it (``LabelSmoothingCrossEntropy`` when
    smoothing, else ``nn.CrossEntropyLoss``); before 1.0.23 (no timm.task) a module with the same call stands in."""
    if not 0. <= smoothing < 1.:
        raise ValueError(f'smoothing must be in [0, 1), got {smoothing!r}')
    if timm_at_least('1.0.31'):
        from timm.task import ClassificationTask
        return ClassificationTask(model, criterion_kwargs=dict(smoothing=smoothing), verbose=verbose)
    from timm.loss import LabelSmoothingCrossEntropy
    criterion = LabelSmoothingCrossEntropy(smoothing=smoothing) if smoothing else nn.CrossEntropyLoss()
    if timm_at_least('1.0.23'):
        from timm.task import ClassificationTask
        return ClassificationTask(model, criterion, verbose=verbose)
    return _ClassificationStep(model, criterion)


def save_for_hf(
        model: nn.Module,
        save_directory: Union[str, os.PathLike],
        model_config: Optional[Dict[str, Any]] = None,
        data_config: Optional[Dict[str, Any]] = None,
) -> None:
    """``timm.models.save_for_hf`` with safetensors weights. ``data_config`` (the preprocessing the weights were
    trained and evaluated with: input_size, crop_pct, interpolation, mean, std, crop_mode) goes into config.json's
    pretrained_cfg: timm's own argument since timm 1.0.31; before, the model's pretrained_cfg carries those keys for
    the save (as 1.0.31 writes them: the test-time size and crop dropped, no pool_size for another input size)."""
    from timm.models import save_for_hf as timm_save_for_hf

    if not data_config or timm_at_least('1.0.31'):
        extra = {'data_config': data_config} if data_config else {}
        timm_save_for_hf(model, str(save_directory), model_config=model_config, safe_serialization=True, **extra)
        return
    saved = model.pretrained_cfg
    cfg = dict(saved)
    for key in ('input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode'):
        if data_config.get(key) is not None:
            value = data_config[key]
            cfg[key] = tuple(value) if isinstance(value, list) else value
    if data_config.get('input_size') is not None:
        cfg.pop('test_input_size', None)
        cfg.pop('test_pool_size', None)
        if tuple(cfg['input_size'][1:]) != tuple(saved.get('input_size', (0, 0, 0))[1:]):
            cfg['pool_size'] = None
    if data_config.get('crop_pct') is not None:
        cfg.pop('test_crop_pct', None)
    model.pretrained_cfg = cfg
    try:
        timm_save_for_hf(model, str(save_directory), model_config=model_config, safe_serialization=True)
    finally:
        model.pretrained_cfg = saved


def timm_loads_weights_only() -> bool:
    """Whether timm's own loaders (``load_state_dict``, ``load_checkpoint``, ``local-dir:``) read pickles with
    ``torch.load(weights_only=True)`` by default: since timm 1.0.26. Before, they unpickle anything, and timm-ghost
    reads local pickles itself (:func:`load_state_dict_weights_only`) before handing timm the tensors."""
    return timm_at_least('1.0.26')


def load_state_dict_weights_only(path: Union[str, os.PathLike], use_ema: bool = True) -> Dict[str, Any]:
    """The state dict of a torch checkpoint, as ``timm.models.load_state_dict(path, use_ema, weights_only=True)``
    reads it (the EMA weights if present and ``use_ema``, ``module.`` prefixes stripped), with train.py's
    ``argparse.Namespace`` allowed as timm allows it since timm 1.0.26 (torch.serialization.safe_globals, torch >=
    2.5). A file holding other Python objects is refused with an ``UnpicklingError`` naming them (torch >= 2.6); no
    code in it runs."""
    import argparse
    import pickle

    from timm.models import load_state_dict

    if timm_loads_weights_only():
        return load_state_dict(str(path), use_ema=use_ema, weights_only=True)
    safe_globals = getattr(torch.serialization, 'safe_globals', None)
    try:
        with safe_globals([argparse.Namespace]) if safe_globals is not None else contextlib.nullcontext():
            return load_state_dict(str(path), use_ema=use_ema, weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = getattr(torch.serialization, 'get_unsafe_globals_in_checkpoint', None)
        try:
            names = ', '.join(unsafe(str(path))) if unsafe is not None else ''
        except Exception:  # a file torch cannot scan: the refusal stands without the names
            names = ''
        raise pickle.UnpicklingError(
            f'weights_only=True blocked loading {path}: it holds Python objects besides tensors.'
            + (f' Unsupported globals: {names}.' if names else '') + ' No code from it was run.') from e


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
    process compiles is a recompile of the same ``forward`` code; past dynamo's ``recompile_limit`` (8 in torch 2.14;
    ``cache_size_limit`` in torch 2.6) the next model silently runs eager. Here the limit is ``recompile_limit`` and
    hitting it raises, so the caller can say so. Neither config module has a public form; ``config.patch`` is the
    context manager torch's own tests use."""
    inductor = _private('torch._inductor', 'config', why="inductor's settings (freezing must be set while dynamo "
                        'traces)', since='2.0', package='torch')
    dynamo = _private('torch._dynamo', 'config', why="dynamo's recompile limit (raise instead of running eager)",
                      since='2.0', package='torch')
    # the limit's names: recompile_limit / fail_on_recompile_limit_hit in newer torch (2.14: the old names are aliases
    # of these), cache_size_limit / fail_on_cache_limit_hit before (torch 2.6, the floor, has only those)
    new_names = hasattr(dynamo, 'recompile_limit')
    limit = 'recompile_limit' if new_names else 'cache_size_limit'
    fail = 'fail_on_recompile_limit_hit' if new_names else 'fail_on_cache_limit_hit'
    limits = {limit: max(recompile_limit, getattr(dynamo, limit)), fail: True}
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
