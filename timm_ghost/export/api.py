"""Verified exports of a timm model (GhostNet folded to its deploy form) to ONNX Runtime, OpenVINO and ExecuTorch.

:func:`export_model` builds the artifact in a hidden folder beside OUT, loads it back with its runtime, checks it
against the eval-mode PyTorch model, writes ``export.json`` beside it and only then moves the folder into place.
:func:`load_export` runs an export the way it was verified (OpenVINO's precision hint included). An int8 export also
times itself against the same model in fp32 on this CPU (``speed`` in ``export.json``, and one warning line where
int8 is the slower); ``format='auto'`` / ``precision='auto'`` build every installed candidate, verify and time each,
and keep the fastest.
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
import shutil
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
    'load_export', 'export_form', 'runtime_for', 'require_runtime', 'calibration_split', 'AUTO',
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
AUTO = 'auto'  # format / precision: every installed candidate built, verified and timed; the fastest kept


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
        batch: int = 1,
        speed_check: bool = True,
        force: bool = False,
        model_name: Optional[str] = None,
        weights_source: Optional[str] = None,
        verbose: bool = False,
        progress: bool = False,
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
    output is swallowed and ``log`` gets the steps.

    ``speed_check`` (int8): also build the fp32 export in the work folder and time both with the runtime on this
    CPU at batch 1 and ``max_batch`` (:func:`timm_ghost.export.speed.measure_speeds`, a few seconds); the speeds go
    into ``export.json`` (``speed``), and where int8 is the slower at either batch a ``RuntimeWarning`` says so in
    one line with the ratio and the faster choice.

    ``format='auto'`` (every installed runtime) and / or ``precision='auto'`` (fp32 and int8, which needs ``calib``;
    bf16 too where the runtime and CPU have it): builds and verifies every candidate as above, times each at batch 1
    and ``batch``, keeps the fastest at ``batch`` in ``out`` and records the table of all in ``export.json``
    (``auto``); runtimes not installed and candidates that fail are rows of the table, not errors, unless none is
    left. ``progress``: a progress bar over the candidates on stderr (where it is a terminal).

    Raises ``ValueError`` / ``FileNotFoundError`` / ``FileExistsError`` for bad arguments,
    ``MissingDependencyError`` when the runtime is not installed, ``ExportError`` when the export fails or does not
    verify; nothing is left in ``out`` then. Any other image module: :func:`export_module`.
    """
    _check_module(model)
    if format != AUTO:
        require_runtime(format)
    data_config = _data_config(model, img_size)
    name = model_name or (getattr(model, 'pretrained_cfg', None) or {}).get('architecture') or type(model).__name__
    return _dispatch(
        model, out, format, precision, data_config, name=name, labels=True, calib=calib, calib_size=calib_size,
        holdout_size=holdout_size, min_agreement=min_agreement, fold=fold, max_batch=max_batch, batch=batch,
        speed_check=speed_check, force=force, weights_source=weights_source, verbose=verbose, progress=progress,
        log=log)


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
        batch: int = 1,
        speed_check: bool = True,
        force: bool = False,
        name: Optional[str] = None,
        weights_source: Optional[str] = None,
        verbose: bool = False,
        progress: bool = False,
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
    Other arguments (``format='auto'`` and ``precision='auto'`` included) and errors as :func:`export_model`.
    """
    _check_module(module)
    if format != AUTO:
        require_runtime(format)
    data_config = _data_config(module, input_size=input_size, mean=mean, std=std)
    return _dispatch(
        module, out, format, precision, data_config, name=name or type(module).__name__, labels=False, calib=calib,
        calib_size=calib_size, holdout_size=holdout_size, min_agreement=min_agreement, fold=fold,
        max_batch=max_batch, batch=batch, speed_check=speed_check, force=force, weights_source=weights_source,
        verbose=verbose, progress=progress, log=log)


def _check_module(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module (e.g. timm.create_model('ghostnet_100', pretrained=True)),"
                        f' got {type(model).__name__} {model!r:.60}')


def _export(
        model: nn.Module, out: PathLike, format: str, precision: str, data_config: Dict[str, Any], *, name: str,
        labels: bool, calib: Optional[PathLike], calib_size: int, holdout_size: int, min_agreement: float,
        fold: bool, max_batch: int, speed_check: bool, force: bool, weights_source: Optional[str], verbose: bool,
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
    exportable = export_form(model, fold, **_form_options(rt, precision))
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
        if precision == 'int8' and speed_check:
            log('timing int8 against fp32 on this CPU ...')
            metadata['speed'] = _int8_speed(model, fold, rt, inputs[-1], Path(work), run, input_size, max_batch,
                                            verbose, format, name)
            _warn_if_slower(metadata['speed'], format)
        (tmp / METADATA).write_text(json.dumps(metadata, indent=2) + '\n')
    log(f'wrote {out}: {", ".join(files)} + {METADATA}')
    return ExportResult(Path(out).expanduser(), files + [METADATA], metadata)


def _form_options(rt: ModuleType, precision: str) -> Dict[str, Any]:
    """The ``export_form`` keywords of ``rt``'s exports at ``precision`` (its ``form_options``; none by default)."""
    options = getattr(rt, 'form_options', None)
    return options(precision) if options is not None else {}


def _int8_speed(model: nn.Module, fold: bool, rt: ModuleType, example: torch.Tensor, work: Path,
                run_int8: Callable[[np.ndarray], np.ndarray], input_size: Sequence[int], max_batch: int,
                verbose: bool, fmt: str, name: str) -> Dict[str, Any]:
    """Build ``model`` in fp32 for ``rt`` in ``work`` and time it beside the int8 export: ``export.json``'s
    ``speed`` record (images/s of both at batch 1 and ``max_batch``, int8 / fp32, the faster per batch)."""
    from . import speed

    folder = work / 'fp32-speed'
    folder.mkdir()
    try:
        with _quiet(verbose):
            rt.build(export_form(model, fold, **_form_options(rt, 'fp32')), example, folder, work, 'fp32', None,
                     max_batch)
            run_fp32 = rt.load(folder, 'fp32')
    except Exception as e:
        raise ExportError(f'{fmt} int8 export of {name}: the fp32 build it is timed against failed: '
                          f'{type(e).__name__}: {_first_line(e)} (speed_check=False, or --no-speed-check, skips it)'
                          ) from e
    batches = sorted({1, max_batch})
    with _quiet(verbose):
        speeds = speed.measure_speeds({'fp32': run_fp32, 'int8': run_int8}, batches, input_size)
    return speed_record(speeds, batches)


def speed_record(speeds: Dict[str, Dict[str, float]], batches: Sequence[int]) -> Dict[str, Any]:
    """``export.json``'s ``speed`` from :func:`~timm_ghost.export.speed.measure_speeds` of ``fp32`` and ``int8``."""
    from .speed import METHOD

    ratios = {str(b): round(speeds['int8'][str(b)] / speeds['fp32'][str(b)], 3) for b in batches}
    return {
        'images_per_s': {'fp32': speeds['fp32'], 'int8': speeds['int8']},
        'int8_vs_fp32': ratios,
        'faster': {b: 'int8' if r >= 1 else 'fp32' for b, r in ratios.items()},
        'threads': torch.get_num_threads(),
        'method': METHOD,
    }


def _warn_if_slower(record: Dict[str, Any], fmt: str) -> None:
    slower = {b: r for b, r in record['int8_vs_fp32'].items() if r < 1}
    if slower:
        at = ', '.join(f'{r:.2f}x at batch {b}' for b, r in slower.items())
        warnings.warn(f'{fmt} int8 runs slower than its fp32 on this CPU ({at}; export.json: speed): the faster '
                      f'choice here is --precision fp32', RuntimeWarning, stacklevel=3)


def _dispatch(model: nn.Module, out: PathLike, format: str, precision: str, data_config: Dict[str, Any], *,
              batch: int, progress: bool, **kwargs: Any) -> ExportResult:
    if batch < 1:
        raise ValueError(f'batch: expected a positive batch size, got {batch}')
    if AUTO in (format, precision):
        return _export_auto(model, out, format, precision, data_config, batch=batch, progress=progress, **kwargs)
    return _export(model, out, format, precision, data_config, **kwargs)


def _candidates(format: str, precision: str, calib: Optional[PathLike]) -> List[Tuple[str, str, Optional[str]]]:
    """``(format, precision, why not)`` of every candidate of ``--format`` / ``--precision`` (``auto`` or one)."""
    if format != AUTO:
        runtime_for(format)  # an unknown format is a ValueError naming it
    if precision not in PRECISIONS + (AUTO,):
        raise ValueError(f'precision: expected one of {", ".join(PRECISIONS + (AUTO,))}, got {precision!r}')
    if precision == AUTO and calib is None:
        raise ValueError('--precision auto needs --calib DIR: it compares fp32 with int8, which calibrates on those '
                         'images')
    rows: List[Tuple[str, str, Optional[str]]] = []
    for fmt in (FORMATS if format == AUTO else (format,)):
        rt = runtime_for(fmt)
        try:
            require_runtime(fmt)
        except MissingDependencyError as e:
            if format != AUTO:
                raise
            rows.append((fmt, precision if precision != AUTO else '-', f'not installed: {_first_line(e)}'))
            continue
        if precision != AUTO:
            if precision in rt.PRECISIONS:
                rows.append((fmt, precision, None))
            elif format != AUTO:
                raise ValueError(f'--precision {precision}: {fmt} exports support {", ".join(rt.PRECISIONS)}')
            else:
                rows.append((fmt, precision, f'{fmt} exports support {", ".join(rt.PRECISIONS)}'))
            continue
        for prec in rt.PRECISIONS:
            if prec == 'bf16' and not rt.bf16_supported():
                continue
            rows.append((fmt, prec, None))
    return rows


def _export_auto(model: nn.Module, out: PathLike, format: str, precision: str, data_config: Dict[str, Any], *,
                 batch: int, progress: bool, force: bool, log: Callable[[str], None], verbose: bool,
                 speed_check: bool, **kwargs: Any) -> ExportResult:
    """``format`` and / or ``precision`` ``auto``: every candidate exported and verified in a work folder, the
    verified ones timed side by side at batch 1 and ``batch``, the fastest at ``batch`` moved into ``out``. With one
    precision given, int8 candidates keep their own fp32 speed check (``speed_check``); ``precision='auto'`` times
    fp32 beside int8 in the table itself."""
    from tqdm.auto import tqdm

    from .._io import atomic_output_dir, check_output_dir
    from . import speed

    check_output_dir(out, force)
    rows = [{'format': f, 'precision': p, 'status': why or 'verified'}
            for f, p, why in _candidates(format, precision, kwargs['calib'])]
    todo = [row for row in rows if row['status'] == 'verified']
    if not todo:
        raise MissingDependencyError('--format auto: no runtime installed: ' + '; '.join(
            f'{r["format"]}: {r["status"]}' for r in rows))
    batches = sorted({1, batch})
    if batch > kwargs['max_batch']:
        raise ValueError(f'batch: {batch} is more than max_batch ({kwargs["max_batch"]}); raise max_batch to time it')
    with atomic_output_dir(out, force) as tmp, tempfile.TemporaryDirectory(prefix='timm-ghost-auto-') as work:
        bar = tqdm(total=len(todo) + 1, desc='export auto', unit='step', disable=None if progress else True,
                   file=sys.stderr, leave=False)
        results: Dict[str, ExportResult] = {}
        runs: Dict[str, Callable[[np.ndarray], np.ndarray]] = {}
        with bar:
            for row in todo:
                key = f'{row["format"]} {row["precision"]}'
                bar.set_postfix_str(f'{key}: build and verify')
                log(f'auto: {key} ...')
                try:
                    results[key] = _export(model, Path(work) / key.replace(' ', '-'), row['format'],
                                           row['precision'], data_config, force=False,
                                           speed_check=speed_check and precision != AUTO,
                                           verbose=verbose, log=log, **kwargs)
                    with _quiet(verbose):
                        runs[key] = load_export(results[key].out, verbose=verbose)
                except (ExportError, ValueError) as e:
                    row['status'] = f'failed: {_first_line(e)}'
                bar.update(1)
            if not runs:
                raise ExportError('--format auto: no candidate verified: ' + '; '.join(
                    f'{r["format"]} {r["precision"]}: {r["status"]}' for r in rows))
            bar.set_postfix_str(f'timing {len(runs)} exports at batch {" and ".join(map(str, batches))}')
            log(f'auto: timing {", ".join(runs)} at batch {" and ".join(map(str, batches))} ...')
            with _quiet(verbose):
                speeds = speed.measure_speeds(runs, batches, tuple(data_config['input_size']))
            bar.update(1)
        for row in rows:
            row['images_per_s'] = speeds.get(f'{row["format"]} {row["precision"]}')
        chosen = max(runs, key=lambda k: speeds[k][str(batch)])
        for row in rows:
            row['chosen'] = f'{row["format"]} {row["precision"]}' == chosen
        result = results[chosen]
        for file in result.files:
            shutil.move(str(result.out / file), str(tmp / file))
        metadata = result.metadata
        metadata['auto'] = {'batch': batch, 'chosen': chosen, 'table': rows, 'method': speed.METHOD,
                            'threads': torch.get_num_threads()}
        (tmp / METADATA).write_text(json.dumps(metadata, indent=2) + '\n')
    log(f'auto: kept {chosen} (fastest at batch {batch}) in {out}')
    return ExportResult(Path(out).expanduser(), result.files, metadata)


def auto_table(metadata: Dict[str, Any]) -> str:
    """The ``auto`` table of an export's metadata as text: one row per candidate, images/s per timed batch."""
    auto = metadata['auto']
    batches = sorted({1, auto['batch']})
    header = ['format', 'precision'] + [f'batch {b} img/s' for b in batches] + ['']
    lines = [header]
    for row in auto['table']:
        speeds = row.get('images_per_s') or {}
        lines.append([row['format'], row['precision']] + [f'{speeds[str(b)]:.1f}' if speeds else '-'
                                                          for b in batches]
                     + ['<- kept' if row['chosen'] else ('' if row['status'] == 'verified' else row['status'])])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return '\n'.join('  '.join(cell.ljust(w) if i < 2 else cell.rjust(w) if i < len(header) - 1 else cell
                                for i, (cell, w) in enumerate(zip(line, widths))).rstrip() for line in lines)


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
        text = 'timm-ghost deploy (BN folded)'
        if any(isinstance(m, GhostBottleneckPadded) for m in exportable.modules()):
            text += f', feature maps padded to multiples of {PAD_CHANNELS} channels'
        if any(getattr(m, 'gate_in_expand', False) for m in exportable.modules()):
            text += ', SE gates folded into their convs'
        return text
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
