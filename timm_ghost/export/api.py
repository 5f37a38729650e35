"""Verified exports of a timm model (GhostNet folded to its deploy form) to ONNX Runtime, OpenVINO and ExecuTorch.

:func:`export_model` builds the artifact in a hidden folder beside OUT, loads it back with its runtime, checks it
against the eval-mode PyTorch model, writes ``export.json`` beside it and only then moves the folder into place.
:func:`load_export` runs an export the way it was verified (OpenVINO's precision hint included).
"""
from __future__ import annotations

import contextlib
import datetime
import importlib
import importlib.util
import io
import json
import logging
import os
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from ..errors import ExportError, MissingDependencyError
from .form import export_form

__all__ = [
    'FORMATS', 'PRECISIONS', 'FP32_ATOL', 'BF16_RTOL', 'MIN_HOLDOUT', 'ExportResult', 'export_model', 'export_module',
    'load_export', 'export_form', 'runtime_for', 'require_runtime', 'calibration_split',
]

PathLike = Union[str, os.PathLike]
_MODULES = {'onnx': '_onnxruntime', 'openvino': '_openvino', 'executorch': '_executorch'}
FORMATS = tuple(_MODULES)
PRECISIONS = ('fp32', 'bf16', 'int8')
FP32_ATOL = 1e-4  # fp32 logits must match the eval-mode PyTorch model within this, at every verified batch size
BF16_RTOL = 0.05  # bf16 logits: max |diff| within this fraction of the largest |logit|, and top-1 agreement reported
VERIFY_BATCHES = (1, 3)  # the fixed inputs' batch sizes (N(0, 1) images, seed 0)
MIN_HOLDOUT = 32  # the held-out agreement check runs on at least this many images (a step of about 3 %), or refuses
METADATA = 'export.json'


def runtime_for(fmt: str) -> ModuleType:
    """The module implementing ``fmt`` (``build``, ``load``, ``version``, ``PRECISIONS``, ``EXTRA``, ...)."""
    if fmt not in _MODULES:
        raise ValueError(f'format: expected one of {", ".join(FORMATS)}, got {fmt!r}')
    return importlib.import_module(f'{__package__}.{_MODULES[fmt]}')


def require_runtime(fmt: str) -> ModuleType:
    """:func:`runtime_for`, raising ``MissingDependencyError`` naming the extra when a package it needs is absent."""
    rt = runtime_for(fmt)
    missing = [p for p in rt.PACKAGES if sys.modules.get(p, False) is None or importlib.util.find_spec(p) is None]
    if missing:
        raise MissingDependencyError(
            f'--format {fmt} needs {", ".join(missing)} (not installed): pip install "timm-ghost[{rt.EXTRA}]"')
    need = getattr(rt, 'MIN_TORCH', None)
    have = tuple(int(part) for part in re.findall(r'\d+', torch.__version__.split('+')[0])[:2])
    if need is not None and have < need:
        wanted = '.'.join(map(str, need))
        raise MissingDependencyError(
            f'--format {fmt} needs torch >= {wanted}, this is torch {torch.__version__}: pip install "torch>={wanted}" '
            f'(or pip install "timm-ghost[{rt.EXTRA}]", which asks for it)')
    return rt


def _data_config(model: nn.Module, img_size: Optional[int] = None, input_size: Optional[Sequence[int]] = None,
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None) -> Dict[str, Any]:
    """timm's data config of ``model`` (its pretrained cfg, else timm's defaults) with the sizes / stats given."""
    from timm.data import resolve_data_config

    args: Dict[str, Any] = {}
    if img_size:
        args['input_size'] = (3, img_size, img_size)
    if input_size is not None:
        size = tuple(input_size)
        if len(size) != 3 or not all(isinstance(d, int) and d > 0 for d in size):
            raise ValueError(f'input_size: expected (channels, height, width), three positive ints, got {input_size!r}')
        args['input_size'] = size
    for key, value in (('mean', mean), ('std', std)):
        if value is not None:
            args[key] = tuple(float(v) for v in value)
            if len(args[key]) != args.get('input_size', (3,))[0]:
                raise ValueError(f'{key}: expected one value per input channel, got {value!r}')
    return resolve_data_config(args, model=model)


def _labels(model: nn.Module) -> Optional[List[str]]:
    """The class names of the model (its pretrained cfg's, else ImageNet's where timm recognises the head), or None."""
    from ..predict import class_labels

    labels = class_labels(model)
    return labels[0] if labels else None


def calibration_split(
        root: PathLike, data_config: Dict[str, Any], calib_size: int, holdout_size: int,
) -> Tuple[Any, List[int], List[int]]:
    """``(dataset, calibration indices, held-out indices)`` of the ImageFolder ``root`` under timm's eval transform
    for ``data_config``. The images are shuffled with seed 0; the first ``calib_size`` calibrate and up to
    ``holdout_size`` of the rest are held out. A folder with ``calib_size`` images or fewer keeps a fifth, at least
    ``MIN_HOLDOUT``, for the held-out check and calibrates on the rest.

    The held-out check needs at least ``MIN_HOLDOUT`` images: a smaller ``holdout_size``, or a folder that leaves
    fewer after calibration, raises ``ValueError`` naming the parameter (an agreement on a handful of images would
    pass a broken export)."""
    from timm.data import create_transform
    from torchvision.datasets import ImageFolder

    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f'--calib {root}: no such folder (expected an ImageFolder: DIR/<class>/<image>)')
    try:
        dataset = ImageFolder(str(root), transform=create_transform(**data_config))
    except FileNotFoundError:
        raise ValueError(f'--calib {root}: no images found (expected an ImageFolder: DIR/<class>/<image>)') from None
    n = len(dataset)
    if calib_size < 1:
        raise ValueError(f'--calib-size: expected a positive number of images, got {calib_size}')
    if holdout_size < MIN_HOLDOUT:
        raise ValueError(f'holdout_size: expected at least {MIN_HOLDOUT} held-out images for the agreement check, '
                         f'got {holdout_size}')
    if n < MIN_HOLDOUT + 1:
        raise ValueError(f'--calib {root}: {n} images found; calibration and the held-out check need at least '
                         f'{MIN_HOLDOUT + 1} ({MIN_HOLDOUT} held out)')
    if n > calib_size:
        k = calib_size
        if n - k < MIN_HOLDOUT:
            raise ValueError(
                f'--calib-size {calib_size}: {root} has {n} images, which leaves {n - k} for the held-out check; '
                f'it needs at least {MIN_HOLDOUT} (lower --calib-size to {n - MIN_HOLDOUT} or add images)')
    else:
        k = n - min(holdout_size, max(MIN_HOLDOUT, n // 5))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()
    return dataset, order[:k], order[k:k + holdout_size]


def _batches(dataset: Any, indices: Sequence[int], batch_size: int) -> List[torch.Tensor]:
    from torch.utils.data import DataLoader, Subset

    loader = DataLoader(Subset(dataset, list(indices)), batch_size=batch_size, shuffle=False)
    return [images for images, _ in loader]


def _verification_inputs(input_size: Sequence[int]) -> List[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(n, *input_size, generator=gen) for n in VERIFY_BATCHES]


@dataclass
class ExportResult:
    """What :func:`export_model` wrote: the folder, its files and the metadata written to ``export.json``."""
    out: Path
    files: List[str]
    metadata: Dict[str, Any] = field(default_factory=dict)


def export_model(
        model: nn.Module,
        out: PathLike,
        format: str = 'onnx',
        precision: str = 'fp32',
        *,
        calib: Optional[PathLike] = None,
        calib_size: int = 256,
        holdout_size: int = 500,
        min_agreement: float = 0.9,
        img_size: Optional[int] = None,
        fold: bool = True,
        max_batch: int = 32,
        force: bool = False,
        model_name: Optional[str] = None,
        weights_source: Optional[str] = None,
        verbose: bool = False,
        log: Callable[[str], None] = lambda msg: None,
) -> ExportResult:
    """Export ``model`` to ``out`` (a new or empty folder; replaced with ``force``) and verify it.

    ``format``: ``onnx`` (ONNX Runtime), ``openvino`` (IR) or ``executorch`` (``.pte``, XNNPACK). ``precision``:
    ``fp32`` (logits within ``FP32_ATOL`` of the eval-mode model at batch 1 and 3), ``bf16`` (OpenVINO on a CPU with
    native bf16; max |diff| within ``BF16_RTOL`` of the largest |logit|) or ``int8`` (post-training static
    quantization with the runtime's own tool, calibrated on ``calib_size`` images of the ImageFolder ``calib``; the
    export must agree with the fp32 model's top-1 on at least ``min_agreement`` of up to ``holdout_size`` held-out
    images). ``calib`` given for fp32 / bf16 adds the same held-out agreement to the report.

    ``fold``: export a timm-ghost GhostNet's deploy form (:func:`export_form`). ``img_size``: input size (default:
    the model's pretrained cfg). ``max_batch``: ExecuTorch's largest batch (at least 17; ONNX and OpenVINO take any).
    ``verbose``: let the exporters, quantizers and runtimes print (progress bars, logs, warnings); by default their
    output is swallowed and ``log`` gets the steps. Raises ``ValueError`` / ``FileNotFoundError`` /
    ``FileExistsError`` for bad arguments, ``MissingDependencyError`` when the runtime is not installed,
    ``ExportError`` when the export fails or does not verify; nothing is left in ``out`` then.
    Any other image module: :func:`export_module`.
    """
    _check_module(model)
    require_runtime(format)
    data_config = _data_config(model, img_size)
    name = model_name or (getattr(model, 'pretrained_cfg', None) or {}).get('architecture') or type(model).__name__
    return _export(
        model, out, format, precision, data_config, name=name, labels=True, calib=calib, calib_size=calib_size,
        holdout_size=holdout_size, min_agreement=min_agreement, fold=fold, max_batch=max_batch, force=force,
        weights_source=weights_source, verbose=verbose, log=log)


def export_module(
        module: nn.Module,
        out: PathLike,
        format: str = 'onnx',
        precision: str = 'fp32',
        *,
        input_size: Sequence[int],
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        calib: Optional[PathLike] = None,
        calib_size: int = 256,
        holdout_size: int = 500,
        min_agreement: float = 0.9,
        fold: bool = True,
        max_batch: int = 32,
        force: bool = False,
        name: Optional[str] = None,
        weights_source: Optional[str] = None,
        verbose: bool = False,
        log: Callable[[str], None] = lambda msg: None,
) -> ExportResult:
    """Export any image module (one ``(N, *input_size)`` float tensor in, one tensor out: logits ``(N, K)``, a dense
    map ``(N, C, H, W)``, ...) to ``out`` through the same verified path as :func:`export_model`.

    ``input_size``: ``(channels, height, width)`` the artifact is exported and verified at (the batch stays dynamic).
    ``mean`` / ``std``: the normalisation recorded in ``export.json`` and used for ``calib`` images (default: the
    module's pretrained cfg, else timm's ImageNet defaults). ``fold``: timm-ghost blocks anywhere in the module (a
    GhostNet encoder, folded by ``timm.utils.reparameterize_model`` or not) are exported in their export form
    (:func:`export_form`). fp32 output must match the eval-mode module within ``FP32_ATOL`` at batch 1 and 3; for
    int8 the top-1 agreement with fp32 is counted per output position (the argmax over dim 1: per image for logits,
    per pixel for a segmentation map). ``name``: recorded in ``export.json`` (default: the module's class name).
    Other arguments and errors as :func:`export_model`.
    """
    _check_module(module)
    require_runtime(format)
    data_config = _data_config(module, input_size=input_size, mean=mean, std=std)
    return _export(
        module, out, format, precision, data_config, name=name or type(module).__name__, labels=False, calib=calib,
        calib_size=calib_size, holdout_size=holdout_size, min_agreement=min_agreement, fold=fold,
        max_batch=max_batch, force=force, weights_source=weights_source, verbose=verbose, log=log)


def _check_module(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module (e.g. timm.create_model('ghostnet_100', pretrained=True)),"
                        f' got {type(model).__name__} {model!r:.60}')


def _export(
        model: nn.Module, out: PathLike, format: str, precision: str, data_config: Dict[str, Any], *, name: str,
        labels: bool, calib: Optional[PathLike], calib_size: int, holdout_size: int, min_agreement: float,
        fold: bool, max_batch: int, force: bool, weights_source: Optional[str], verbose: bool,
        log: Callable[[str], None],
) -> ExportResult:
    from .._io import atomic_output_dir, check_output_dir

    rt = require_runtime(format)
    if precision not in PRECISIONS:
        raise ValueError(f'precision: expected one of {", ".join(PRECISIONS)}, got {precision!r}')
    if precision not in rt.PRECISIONS:
        raise ValueError(f'--precision {precision}: {format} exports support {", ".join(rt.PRECISIONS)}')
    if precision == 'bf16' and not rt.bf16_supported():
        raise ValueError(f'--precision bf16: {rt.RUNTIME} reports no native bf16 on this CPU')
    if precision == 'int8' and calib is None:
        raise ValueError('--precision int8 needs --calib DIR (an ImageFolder of calibration images)')
    if max_batch < max(VERIFY_BATCHES):
        raise ValueError(f'max_batch: expected at least {max(VERIFY_BATCHES)}, got {max_batch}')
    check_output_dir(out, force)
    model = model.eval()
    input_size = tuple(data_config['input_size'])
    split = calibration_split(calib, data_config, calib_size, holdout_size) if calib is not None else None

    log(f'preparing {name} ({"deploy form" if fold else "as given"}, {input_size[1]}x{input_size[2]} px)')
    exportable = export_form(model, fold, pad=getattr(rt, 'PAD_CHANNELS', None))
    inputs = _verification_inputs(input_size)
    with torch.no_grad():
        references = [_single_output(model(x), name).float() for x in inputs]
    calib_batches = _batches(split[0], split[1], 8) if split and precision == 'int8' else None

    with atomic_output_dir(out, force) as tmp, tempfile.TemporaryDirectory(prefix='timm-ghost-export-') as work:
        log(f'exporting to {format} ({precision}) ...')
        try:
            with _quiet(verbose):
                files = rt.build(exportable, inputs[-1], tmp, Path(work), precision, calib_batches, max_batch)
                run = rt.load(tmp, precision)
        except Exception as e:  # any exporter / converter / quantizer failure becomes one line
            hint = '' if verbose else ' (verbose=True, or --verbose, shows the exporter\'s own output)'
            raise ExportError(
                f'{format} {precision} export of {name} failed: {type(e).__name__}: {_first_line(e)}{hint}') from e
        log('verifying with the runtime ...')
        with _quiet(verbose):
            verification = _verify(run, inputs, references, precision)
            if split is not None:
                verification.update(_heldout_agreement(run, model, split, min(max_batch, 16)))
        _check(verification, precision, min_agreement, format, name)
        metadata = _metadata(
            model, name, weights_source, data_config, format, rt, precision, files, _form_text(model, fold, exportable),
            max_batch, calib, split, verification, labels, list(references[-1].shape[1:]))
        (tmp / METADATA).write_text(json.dumps(metadata, indent=2) + '\n')
    log(f'wrote {out}: {", ".join(files)} + {METADATA}')
    return ExportResult(Path(out).expanduser(), files + [METADATA], metadata)


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """Swallow what runs inside prints, unless ``verbose``: Python's ``sys.stdout`` / ``sys.stderr``, the process's
    file descriptors 1 and 2 (C++ libraries print there: ExecuTorch's ``cpuinfo_utils.cpp`` lines), warnings, and
    log records below ERROR (NNCF's progress and info lines, torch's export notes)."""
    if verbose:
        yield
        return
    previous_disable = logging.root.manager.disable
    with contextlib.ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter('ignore')
        logging.disable(logging.WARNING)
        stack.callback(logging.disable, previous_disable)
        _redirect_fds(stack)
        stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
        yield


def _redirect_fds(stack: contextlib.ExitStack) -> None:
    """Point file descriptors 1 and 2 at a temporary file until ``stack`` closes (skipped where they are not open)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:
        return
    sink = stack.enter_context(tempfile.TemporaryFile())

    def restore() -> None:
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)

    stack.callback(restore)
    os.dup2(sink.fileno(), 1)
    os.dup2(sink.fileno(), 2)


def _single_output(output: Any, name: str) -> torch.Tensor:
    if not isinstance(output, torch.Tensor):
        raise ValueError(f'{name}: expected a module returning one tensor, got {type(output).__name__} '
                         '(wrap it in a module that returns the tensor to export)')
    return output


def _verify(run: Callable[[np.ndarray], np.ndarray], inputs: List[torch.Tensor], references: List[torch.Tensor],
            precision: str) -> Dict[str, Any]:
    diffs, agree, total, scale = {}, 0, 0, 0.0
    for x, ref in zip(inputs, references):
        try:
            got = torch.from_numpy(np.asarray(run(x.numpy()), dtype=np.float32))
        except Exception as e:  # the runtime refused the artifact at this batch size
            return {'inputs': _INPUTS_TEXT, 'error': f'batch {len(x)}: {type(e).__name__}: {_first_line(e)}'}
        if got.shape != ref.shape:
            return {'inputs': _INPUTS_TEXT, 'error': f'output shape {tuple(got.shape)} != {tuple(ref.shape)}'}
        diffs[str(len(x))] = float((got - ref).abs().max())
        same = got.argmax(1) == ref.argmax(1) if ref.dim() > 1 else got == ref
        agree += int(same.sum())
        total += same.numel()
        scale = max(scale, float(ref.abs().max()))
    result: Dict[str, Any] = {
        'inputs': _INPUTS_TEXT, 'max_abs_diff': diffs, 'fixed_input_top1_agreement': agree / total}
    if precision == 'fp32':
        result['tolerance'] = FP32_ATOL
    elif precision == 'bf16':
        result['tolerance'] = BF16_RTOL * scale
        result['tolerance_rule'] = f'{BF16_RTOL} x max |logit| ({scale:.3g})'
    return result


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ''


_INPUTS_TEXT = f'N(0, 1) images, seed 0, batch sizes {" and ".join(map(str, VERIFY_BATCHES))}'


@torch.no_grad()
def _heldout_agreement(run: Callable[[np.ndarray], np.ndarray], model: nn.Module, split: Tuple[Any, List[int],
                       List[int]], batch_size: int) -> Dict[str, Any]:
    dataset, _, heldout = split
    agree = total = images_seen = 0
    for images in _batches(dataset, heldout, batch_size):
        got = torch.from_numpy(np.asarray(run(images.numpy())).argmax(1))
        same = got == model(images).argmax(1)  # per image for logits, per position for a dense map
        agree += int(same.sum())
        total += same.numel()
        images_seen += len(images)
    return {'heldout_images': images_seen, 'heldout_top1_agreement': agree / total if total else None}


def _check(verification: Dict[str, Any], precision: str, min_agreement: float, fmt: str, name: str) -> None:
    what = f'{fmt} {precision} export of {name} did not verify'
    if 'error' in verification:
        raise ExportError(f'{what}: {verification["error"]}')
    if precision != 'int8':
        worst = max(verification['max_abs_diff'].values())
        if not worst <= verification['tolerance']:
            raise ExportError(f'{what}: max |logit diff| {worst:.3g} > tolerance {verification["tolerance"]:.3g} '
                              f'({verification["inputs"]})')
    agreement = verification.get('heldout_top1_agreement')
    if precision == 'int8' and agreement is not None and agreement < min_agreement:
        raise ExportError(f'{what}: top-1 agreement with fp32 {agreement:.3f} on {verification["heldout_images"]} '
                          f'held-out images < {min_agreement}')
    verification['passed'] = True


def _metadata(model: nn.Module, name: str, weights_source: Optional[str], data_config: Dict[str, Any], fmt: str,
              rt: ModuleType, precision: str, files: List[str], form: str, max_batch: int,
              calib: Optional[PathLike], split: Optional[Tuple[Any, List[int], List[int]]],
              verification: Dict[str, Any], labels: bool, output_size: List[int]) -> Dict[str, Any]:
    import timm

    from .. import __version__
    meta: Dict[str, Any] = {
        'model': name,
        'weights': weights_source,
        'form': form,
        'format': fmt,
        'files': files,
        'input_name': 'input',
        'input_size': list(data_config['input_size']),
        'output_size': output_size,
        'batch': {'dynamic': True, 'max': rt.batch_bound(max_batch) if fmt == 'executorch' else None},
        'mean': list(data_config['mean']),
        'std': list(data_config['std']),
        'interpolation': data_config['interpolation'],
        'crop_pct': data_config['crop_pct'],
        'crop_mode': data_config.get('crop_mode', 'center'),
        'num_classes': getattr(model, 'num_classes', None),
        'labels': _labels(model) if labels else None,
        'runtime': {'name': rt.RUNTIME, 'version': rt.version()},
        'precision': precision,
        'verification': verification,
        'created_with': {'torch': torch.__version__, 'timm': timm.__version__, 'timm_ghost': __version__},
        'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
    }
    if fmt == 'openvino':
        meta['runtime']['compile_config'] = rt.compile_config(precision)
    if precision == 'int8':
        meta['quantization'] = {
            'method': rt.QUANT_METHOD, 'calib_dir': str(calib), 'calib_images': len(split[1]),
            'transform': 'timm eval transform of the data config above'}
    return meta


def _form_text(model: nn.Module, fold: bool, exportable: nn.Module) -> str:
    from ..ghostnet import GhostNet
    from .form import PAD_CHANNELS, GhostBottleneckPadded, _holds_ghost_blocks

    if fold and isinstance(model, GhostNet):
        if any(isinstance(m, GhostBottleneckPadded) for m in exportable.modules()):
            return f'timm-ghost deploy (BN folded), feature maps padded to multiples of {PAD_CHANNELS} channels'
        return 'timm-ghost deploy (BN folded)'
    if fold and _holds_ghost_blocks(model):
        return 'eval module, its timm-ghost blocks in deploy form (BN folded)'
    return 'eval model as given'


def load_export(out: PathLike, threads: Optional[int] = None, verbose: bool = False, spin: bool = True,
                ) -> Callable[[np.ndarray], np.ndarray]:
    """A function running the export in ``out`` on an ``(N, 3, H, W)`` float32 array (normalised as ``export.json``
    says) and returning logits, with the runtime configured as when it was verified. ``threads``: intra-op threads.
    ``verbose``: let the runtime print while it loads (ExecuTorch's CPU probe lines). ``spin`` (ONNX Runtime): idle
    worker threads spin between nodes, ONNX Runtime's default and what small networks need at batch 1; ``False``
    lets them sleep, giving the cores back to other work between calls (slower: about 1.3x at batch 1 for
    ghostnet_100 on 2 threads, see docs/export.md).

    An export with a batch bound (ExecuTorch: ``batch.max`` in ``export.json``, from ``max_batch``) refuses a larger
    batch with a ``ValueError`` naming the bound, before the runtime sees it."""
    out = Path(out).expanduser()
    try:
        meta = json.loads((out / METADATA).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f'{out}: no {METADATA} (not a timm-ghost export folder)') from None
    rt = require_runtime(meta['format'])
    with _quiet(verbose):
        run = rt.load(out, meta['precision'], threads, spin)
    bound = (meta.get('batch') or {}).get('max')
    if bound is None:
        return run

    def bounded(x: np.ndarray) -> np.ndarray:
        if len(x) > bound:
            raise ValueError(f'a batch of {len(x)} images is more than this export takes: max_batch {bound} '
                             f'(batch.max in {out / METADATA}); split the batch, or export with max_batch >= {len(x)}')
        return run(x)

    return bounded
