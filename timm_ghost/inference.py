"""PyTorch-native inference at the speed the CPU allows: :func:`inference_model`.

    model = timm_ghost.inference_model(timm.create_model('ghostnet_100', pretrained=True), batch_size=1)
    logits = model(images)  # NCHW float32; no autograd

What it does, in order: folds the BatchNorms (``timm.utils.reparameterize_model``, the deploy form of
:mod:`timm_ghost.deploy`), keeps the weights channels_last, and compiles the folded model with torch's inductor under
inference mode with ``INDUCTOR_OPTIONS`` (weights frozen into the graph and prepacked for oneDNN: what measurably
helped on CPU, see ``benchmarks/bench_inference.py``). Each input shape compiles once, on its first call; that call's
seconds are kept in :attr:`InferenceModel.compile_seconds`, and its output is checked against the folded eager model
(within ``atol``). inductor keeps what it compiled in its on-disk cache, so a second process compiles faster.

Where ``torch.compile`` cannot run (no C++ compiler, an unsupported platform, an output off by more than ``atol``)
the folded eager model runs instead, after one ``RuntimeWarning`` line saying why; :attr:`InferenceModel.backend`
says which runs.

Any module holding GhostNet blocks works: a classifier, a ``features_only`` backbone, an smp segmenter with a
GhostNet encoder. A torchvision detector (``GeneralizedRCNN``, ``RetinaNet``, ``FCOS``, ``SSD``: a ``backbone``
beside a ``transform``) gets its backbone compiled and keeps its own pre- and post-processing, which vary per image
and are no work for a compiler.
"""
from __future__ import annotations

import copy
import time
import types
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ._compat import compile_config

__all__ = ['inference_model', 'InferenceModel', 'DeferredInferenceModel', 'INDUCTOR_OPTIONS', 'compile_report']

# inductor's options for the compiled CPU model, each kept because it measured faster (benchmarks/bench_compile.py):
# freezing turns weights into constants and prepacks them for oneDNN (conv + ReLU fused); the C++ wrapper calls the
# kernels without Python between them; max_autotune picks inductor's own C++ GEMM templates where they beat MKL
# (1.12x at batch 1 over the two others, within 2 % at batch 32; about 1.6x the compile time)
INDUCTOR_OPTIONS: Dict[str, Any] = {'freezing': True, 'cpp_wrapper': True, 'max_autotune': True}

Shape = Tuple[Tuple[int, ...], str, torch.dtype]


def _key(x: torch.Tensor) -> Shape:
    return tuple(x.shape), str(x.device), x.dtype


def _max_diff(a: Any, b: Any) -> float:
    """Largest absolute difference between two outputs of the same structure (tensor, list / tuple, dict)."""
    if isinstance(a, torch.Tensor):
        return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0
    if isinstance(a, dict):
        return max((_max_diff(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, (list, tuple)):
        return max((_max_diff(u, v) for u, v in zip(a, b)), default=0.0)
    return 0.0


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f'{type(e).__name__}: {text[0] if text else ""}'[:300]


def _own_code(model: nn.Module) -> Any:
    """``model``'s call as a function with a code object of its own. dynamo keeps what it compiled per code object,
    guarded: an entry compiled elsewhere in the process for the same architecture (a plain ``torch.compile`` of
    another GhostNet, whose weights are graph inputs) would match this model too and run unfrozen. Its own code object
    gives each inference model its own entries (one per input shape) and its own recompile budget."""
    def forward(x: Any) -> Any:
        return model(x)

    code = forward.__code__.replace(co_name=f'inference_model_{id(model):x}')
    return types.FunctionType(code, forward.__globals__, code.co_name, None, forward.__closure__)


class InferenceModel(nn.Module):
    """The folded model, compiled per input shape on first use (see the module's doc). Forward runs under
    ``torch.inference_mode``; inputs are made channels_last when ``channels_last``. Other attributes
    (``pretrained_cfg``, ``num_classes``, ``feature_info`` ...) are the wrapped model's."""

    def __init__(self, model: nn.Module, channels_last: bool = True, compile: bool = True,
                 options: Optional[Dict[str, Any]] = None, atol: float = 1e-4) -> None:
        super().__init__()
        self.model = model
        self.channels_last = channels_last
        self.atol = atol
        self.options = dict(INDUCTOR_OPTIONS if options is None else options)
        self.backend = 'inductor' if compile else 'eager'
        self.fallback_reason: Optional[str] = None
        self.compile_seconds: Dict[Tuple[int, ...], float] = {}
        self._compiled: Any = None
        self._seen: Dict[Shape, bool] = {}

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules['model'], name)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> InferenceModel:
        super()._apply(fn, *args, **kwargs)
        self._compiled, self._seen = None, {}  # frozen weights of another device / dtype: compile again
        return self

    def train(self, mode: bool = True) -> InferenceModel:
        if mode:
            raise RuntimeError('an inference model does not train: its BatchNorms are folded; train the model you '
                               'gave inference_model and call it again')
        return super().train(False)

    def fall_back(self, reason: str) -> None:
        """Run the folded eager model from now on, after one warning line with ``reason``."""
        self.backend, self.fallback_reason, self._compiled = 'eager', reason, None
        warnings.warn(f'timm-ghost: inference_model runs the folded eager model: {reason}', RuntimeWarning,
                      stacklevel=3)

    def _prepare(self, x: Any) -> Any:
        if self.channels_last and isinstance(x, torch.Tensor) and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, x: Any) -> Any:
        with torch.inference_mode():
            x = self._prepare(x)
            if self.backend != 'inductor':
                return self.model(x)
            key = _key(x) if isinstance(x, torch.Tensor) else None
            if key is not None and key in self._seen:
                return self._compiled(x)
            return self._first_call(x, key)

    def _first_call(self, x: Any, key: Optional[Shape]) -> Any:
        """Compile for ``x``'s shape, time it, and check the result against the folded eager model."""
        expected = self.model(x)
        try:
            if self._compiled is None:
                self._compiled = torch.compile(_own_code(self.model), dynamic=False)
            start = time.perf_counter()
            with compile_config(self.options):  # while dynamo traces: freezing is decided there
                out = self._compiled(x)
            seconds = time.perf_counter() - start
        except Exception as e:  # inductor raises many kinds (no compiler, a lowering it lacks ...): all mean eager
            self.fall_back(f'torch.compile failed ({_one_line(e)})')
            return expected
        diff = _max_diff(out, expected)
        if not diff <= self.atol:
            self.fall_back(f'the compiled model differs from the eager one by {diff:.3g} > atol {self.atol:g}')
            return expected
        if key is not None:
            self._seen[key] = True
            self.compile_seconds[key[0]] = round(seconds, 3)
        return out

    def warm_up(self, example: torch.Tensor) -> float:
        """Compile (and check) for ``example``'s shape now; returns the seconds it took (0 where it ran before or
        the eager model runs)."""
        before = dict(self.compile_seconds)
        self(example)
        return sum(v for k, v in self.compile_seconds.items() if k not in before)


def _is_detector(model: nn.Module) -> bool:
    return isinstance(getattr(model, 'backbone', None), nn.Module) and isinstance(
        getattr(model, 'transform', None), nn.Module)


def _keep_stem_taps(model: nn.Module) -> None:
    """Where a ``features_only`` model hands out the stem conv's output (timm's feature 0, the raw conv before its
    BatchNorm), swap its stem norm for a plain BatchNorm2d that the fold leaves alone: folded, the stem conv would
    hand out the normalised map instead (see :class:`timm_ghost.blocks.StemNorm`)."""
    from .blocks import StemNorm

    for module in model.modules():
        taps = getattr(module, 'return_layers', None)
        bn = module._modules.get('bn1')
        if isinstance(bn, StemNorm) and isinstance(taps, dict) and 'conv_stem' in taps:
            plain = nn.BatchNorm2d(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
            plain.load_state_dict(bn.state_dict())
            module._modules['bn1'] = plain.eval()


def _example(model: nn.Module, batch_size: int, img_size: Optional[Sequence[int]]) -> torch.Tensor:
    if img_size is None:
        cfg = getattr(model, 'pretrained_cfg', None) or {}
        size = cfg.get('input_size')
        if size is None:
            raise ValueError('inference_model: batch_size needs an input size: pass img_size=(H, W), or a model '
                             'whose pretrained_cfg has input_size')
        chans, h, w = size
    else:
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        chans = getattr(model, 'in_chans', 3)
    gen = torch.Generator().manual_seed(0)
    return torch.randn(batch_size, chans, h, w, generator=gen)


def inference_model(model: nn.Module, *, batch_size: Optional[int] = None, channels_last: bool = True,
                    compile: bool = True, img_size: Optional[Sequence[int]] = None,
                    options: Optional[Dict[str, Any]] = None, atol: float = 1e-4) -> nn.Module:
    """``model`` (not changed) as a fast inference module: folded, channels_last, compiled by inductor on CPU.

    ``batch_size``: compile and check for that batch now (at ``img_size``, default the pretrained cfg's input size),
    checking the folded model against ``model`` in eval mode too (within ``atol``); else each input shape compiles
    on its first call. ``compile=False``: the folded eager model. ``options``: inductor's options instead of
    ``INDUCTOR_OPTIONS``. Returns an :class:`InferenceModel`; for a torchvision detector, a copy of the detector whose
    backbone is one.
    """
    from timm.utils import reparameterize_model

    if not isinstance(model, nn.Module):
        raise TypeError(f'inference_model: model must be a torch.nn.Module, got {type(model).__name__}')
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f'inference_model: batch_size must be an int >= 1, got {batch_size!r}')
    if _is_detector(model):
        if batch_size is not None:
            raise ValueError('inference_model: a detector takes images of any size: leave batch_size out (its '
                             'backbone compiles per input shape on first use)')
        detector = copy.deepcopy(model).eval().requires_grad_(False)  # an inference tensor takes no autograd
        detector.backbone = inference_model(detector.backbone, channels_last=channels_last, compile=compile,
                                            options=options, atol=atol)
        return detector
    was_training = model.training
    with torch.inference_mode(False), torch.no_grad():  # plain tensors, even when called under inference mode
        folded = copy.deepcopy(model).eval().requires_grad_(False)
        _keep_stem_taps(folded)
        folded = reparameterize_model(folded)
        if channels_last:
            folded = folded.to(memory_format=torch.channels_last)
    wrapped = InferenceModel(folded, channels_last=channels_last, compile=compile, options=options, atol=atol).eval()
    if batch_size is not None:
        example = _example(model, batch_size, img_size)
        model.eval()
        try:
            with torch.inference_mode():
                reference = model(example)
        finally:
            model.train(was_training)
        out = wrapped(example)
        diff = _max_diff(out, reference)
        if not diff <= atol:
            raise RuntimeError(f'inference_model: the folded model differs from the eval model by {diff:.3g} > atol '
                               f'{atol:g} (a block the fold does not cover?)')
    return wrapped


class DeferredInferenceModel(nn.Module):
    """``model`` as it is until its first forward in eval mode, then its :func:`inference_model` (rebuilt after
    ``.to()``). ``state_dict`` / ``load_state_dict`` are the model's own, key for key, so a script can load a
    checkpoint into it after creating it (what ``python -m timm_ghost.run --inference-model`` gives timm's
    ``validate.py`` / ``inference.py``). In train mode the model itself runs."""

    def __init__(self, model: nn.Module, **kwargs: Any) -> None:
        super().__init__()
        self.source = model
        self.kwargs = kwargs
        self.fast: Optional[nn.Module] = None

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules['source'], name)

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        return self.source.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        self.fast = None
        return self.source.load_state_dict(state_dict, strict=strict, assign=assign)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> DeferredInferenceModel:
        self.source._apply(fn, *args, **kwargs)
        self.fast = None
        return self

    def forward(self, x: Any) -> Any:
        if self.training:
            return self.source(x)
        if self.fast is None:
            # kept out of the module tree (parameters() stays the source's): the fast model is a derived copy
            object.__setattr__(self, 'fast', inference_model(self.source, **self.kwargs))
        return self.fast(x)


def compile_report(model: nn.Module) -> List[str]:
    """Lines saying what ``model`` (an :func:`inference_model` result) runs and what each shape took to compile."""
    inner = getattr(model, 'backbone', model)
    if isinstance(inner, DeferredInferenceModel):
        inner = inner.fast
    if not isinstance(inner, InferenceModel):
        return []
    if inner.backend != 'inductor':
        return [f'backend: eager ({inner.fallback_reason or "compile=False"})']
    return ['backend: inductor'] + [f'compiled {"x".join(map(str, k))} in {v:.1f} s'
                                    for k, v in inner.compile_seconds.items()]
