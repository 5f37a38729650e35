"""Which small CNN on my CPU: GhostNet's three widths against the small CNNs users pick instead, side by side in one
run, on every runtime (ONNX Runtime, OpenVINO, ExecuTorch with XNNPACK), fp32 and int8, batch 1 and 32.

GhostNet goes through timm-ghost's own export path (``export_model(..., fold=True)``); every other model through
``timm.utils.reparameterize_model`` and then the same ``export_model(..., fold=False)``. A baseline row keeps
timm's legacy ONNX export (``torch.onnx.export(dynamo=False)``) of ``reparameterize_model(ghostnet_100)``, run in
ONNX Runtime and (converted by ``openvino.convert_model``) in OpenVINO, in the runtimes' settings the exports use.
Per (runtime, precision, batch) all models are timed in interleaved rounds (A, B, C, A, B, C, ...); images/s is the
batch over the median per-call wall time. Top-1 is the publishers' ImageNet-1k figure at 224 px (``TOP1`` below,
with its source); the weights here are random (timm_ghost.testing.randomize_), which does not change the speed (same
operators, same shapes).

    python benchmarks/bench_peers.py                                # everything (about 30 min on 2 cores)
    python benchmarks/bench_peers.py --formats onnx,openvino        # split a run by runtime ...
    python benchmarks/bench_peers.py --precisions fp32 --out /tmp/peers_fp32.json   # ... or by precision
    python benchmarks/bench_peers.py --short                        # smoke run: 3 rows, ONNX Runtime, 64 px, batch 1
    python benchmarks/bench_peers.py --short --models efficientnet_b0 --formats executorch   # one route, smoke size

``--profile`` adds per-node-type times of ghostnet_100's export and the baseline in ONNX Runtime and OpenVINO, fp32,
batch 1. Writes ``results/peers.json`` and one chart per runtime, ``results/peers_<format>.png``: top-1 against
images/s with the Pareto front drawn.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from bench_export import FORMAT_LABELS as EXPORT_LABELS
from bench_export import _quiet, _runtime_versions, profile_onnxruntime, profile_openvino
from benchlib import (
    gpu_section,
    interleaved_latencies,
    machine_info,
    now_iso,
    parse_int_list,
    percentile,
    save_figure_atomic,
    versions,
    write_json_atomic,
)
from report import peers_goal_lines

RESULTS = Path(__file__).resolve().parent / 'results'
CSV = ("timm's results/results-imagenet.csv (huggingface/pytorch-image-models, as of commit 4e5207c, 2025-10-30), "
       "row {row}")
PADDLE = "PaddleClas's model zoo (docs/zh_CN/models/ImageNet1k/GhostNet.md; timm_ghost.releases), tag {tag}"


@dataclass(frozen=True)
class Published:
    """A model's published ImageNet-1k top-1 at 224 px and where it comes from (not measured here)."""
    tag: str
    top1: float
    source: str
    note: str = ''


# The pretrained tag timm.create_model(name, pretrained=True) loads (timm 1.0.31; timm-ghost's for GhostNet, except
# ghostnet_130, whose SSLD release is the one at 79 %), and its row at 224 px.
TOP1: Dict[str, Published] = {
    'ghostnet_050': Published('paddle_in1k', 66.8, PADDLE.format(tag='ghostnet_050.paddle_in1k')),
    'ghostnet_100': Published('in1k', 73.958, CSV.format(row='ghostnet_100.in1k,224')),
    'ghostnet_130': Published('ssld_in1k', 79.4, PADDLE.format(tag='ghostnet_130.ssld_in1k'),
                              "not timm-ghost's default tag for ghostnet_130, which is paddle_in1k at 75.7"),
    'mobilenetv3_small_100': Published('lamb_in1k', 67.636, CSV.format(row='mobilenetv3_small_100.lamb_in1k,224')),
    'mobilenetv3_large_100': Published('ra_in1k', 75.784, CSV.format(row='mobilenetv3_large_100.ra_in1k,224'),
                                       'timm also has ra4_e3600_r224_in1k: 76.310 at 224'),
    'mobilenetv4_conv_small': Published('e2400_r224_in1k', 73.756,
                                        CSV.format(row='mobilenetv4_conv_small.e2400_r224_in1k,224')),
    'mobilenetv4_conv_medium': Published('e500_r224_in1k', 79.092,
                                         CSV.format(row='mobilenetv4_conv_medium.e500_r224_in1k,224'),
                                         'timm\'s default tag e500_r256_in1k has no 224 px row, it scores 79.916 '
                                         'at 256; this is the tag trained at 224'),
    'efficientnet_b0': Published('ra_in1k', 77.698, CSV.format(row='efficientnet_b0.ra_in1k,224'),
                                 'timm also has ra4_e3600_r224_in1k: 78.568 at 224'),
    'repghostnet_100': Published('in1k', 74.208, CSV.format(row='repghostnet_100.in1k,224')),
}
GHOSTNETS = ('ghostnet_050', 'ghostnet_100', 'ghostnet_130')
MODELS = tuple(TOP1)
BASELINE = 'baseline'  # the --models name of the baseline row
BASELINE_KEY = 'ghostnet_100_baseline'
BASELINE_LABEL = "ghostnet_100, timm's legacy ONNX export"
BASELINE_FORMATS = {'onnx': ('fp32', 'int8'), 'openvino': ('fp32',)}
FORMATS = ('onnx', 'openvino', 'executorch', 'torch')
NATIVE = 'torch'  # PyTorch itself: every model through timm_ghost.inference_model (fold, channels_last, inductor)
FORMAT_LABELS = {**EXPORT_LABELS, NATIVE: 'PyTorch inference_model'}
PRECISIONS = ('fp32', 'int8')
SHORT_MODELS = ('ghostnet_100', 'mobilenetv3_small_100', BASELINE)
TOP1_GOAL = 79.0  # goal (d): the fastest model at this published top-1 or above should be ghostnet_130
FP32_ATOL = 1e-4


class BaselineError(RuntimeError):
    """The baseline's export does not match its PyTorch model."""


def pareto_front(points: Sequence[Tuple[str, float, float]]) -> List[str]:
    """The names in ``points`` (``(name, images/s, top-1)``) on the Pareto front, in the order given: no other point
    is faster and at least as accurate (nor as fast and more accurate, which settles an exact tie in speed)."""
    return [name for name, speed, top1 in points
            if not any(s >= speed and t >= top1 and (s > speed or t > top1) for n, s, t in points if n != name)]


def _label(name: str) -> str:
    return f'{name} ({TOP1[name].tag})'


def _rows(models: Sequence[str]) -> List[Dict[str, Any]]:
    """The rows to build, in table order: ``{key, model, route ('export' | 'baseline'), label, top1}``."""
    rows = [{'key': m, 'model': m, 'route': 'export', 'label': _label(m), 'top1': TOP1[m].top1}
            for m in MODELS if m in models]
    if BASELINE in models:
        rows.append({'key': BASELINE_KEY, 'model': 'ghostnet_100', 'route': 'baseline', 'label': BASELINE_LABEL,
                     'top1': TOP1['ghostnet_100'].top1})
    return rows


LOGIT_SCALE = 10.0  # every model's largest |logit| on the probe images, so that the exports' absolute checks mean alike


def eval_models(names: Sequence[str], img_size: int) -> Dict[str, torch.nn.Module]:
    """``{name: eval-mode model}``, every one with random weights by timm_ghost.testing.randomize_ (seed 0), its
    classifier then scaled so that its largest |logit| on three N(0, 1) images (seed 0) is ``LOGIT_SCALE``. Not
    timm's default init: it leaves mobilenetv4_conv_medium's logits near 800 and efficientnet_b0's near 0 (an int8
    top-1 agreement of nothing); and randomize_ alone leaves repghostnet_100's near 100, where fp32 rounding alone
    passes the exports' absolute 1e-4 check (ghostnet_100's are near 11). Scaling the last layer changes no speed."""
    import timm

    import timm_ghost  # noqa: F401  (registers timm-ghost's ghostnet_*)
    from timm_ghost.testing import randomize_

    probe = torch.randn(3, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    models = {}
    for name in names:
        model = randomize_(timm.create_model(name), seed=0).eval()
        with torch.no_grad():
            scale = LOGIT_SCALE / float(model(probe).abs().max())
            head = model.get_classifier()
            head.weight.mul_(scale)
            if head.bias is not None:
                head.bias.mul_(scale)
        models[name] = model
    return models


def _int8_batches(model: torch.nn.Module, calib: Path, args: argparse.Namespace) -> List[List[torch.Tensor]]:
    """Calibration and held-out batches of ``calib`` as ``export_model`` takes them (its split, batches of 8)."""
    from timm.data import resolve_data_config
    from torch.utils.data import DataLoader, Subset

    from timm_ghost.export import calibration_split

    config = resolve_data_config({'input_size': (3, args.img_size, args.img_size)}, model=model)
    dataset, calib_idx, heldout_idx = calibration_split(calib, config, args.calib_size, args.holdout_size)
    return [[x for x, _ in DataLoader(Subset(dataset, idx), batch_size=8)] for idx in (calib_idx, heldout_idx)]


def build_baseline(deploy: torch.nn.Module, fmt: str, precision: str, out: Path, calib: Optional[Path],
                   args: argparse.Namespace) -> Dict[str, Any]:
    """timm's legacy ONNX export of ``deploy`` (``reparameterize_model``'s output) in ``out/model.onnx``, run in ONNX
    Runtime; for OpenVINO converted by ``openvino.convert_model`` into ``out/model.xml``; int8 (ONNX Runtime only)
    by ``quantize_static`` with the settings of timm-ghost's ONNX Runtime int8 export. Checked against ``deploy``:
    fp32 within 1e-4 at batch 1 and 3, int8 by its top-1 agreement on the held-out images. Returns the row's
    ``fn`` (NCHW float32 array -> logits) and its verification."""
    from timm_ghost.export import runtime_for

    out.mkdir(parents=True)
    example = torch.randn(1, 3, args.img_size, args.img_size, generator=torch.Generator().manual_seed(0))
    onnx_path = out / 'model.onnx'
    with _silenced():
        torch.onnx.export(deploy, (example,), str(onnx_path), dynamo=False, input_names=['input'],
                          output_names=['logits'], dynamic_axes={'input': {0: 'batch'}, 'logits': {0: 'batch'}},
                          opset_version=17)
    verification: Dict[str, Any] = {'export': 'torch.onnx.export(dynamo=False, opset_version=17), dynamic batch'}
    if fmt == 'openvino':
        import openvino as ov

        ov.save_model(ov.convert_model(onnx_path), out / 'model.xml', compress_to_fp16=False)
        verification['convert'] = 'openvino.convert_model(model.onnx)'
    if precision == 'int8':
        from timm_ghost.export._onnxruntime import quantize

        calib_batches, heldout = _int8_batches(deploy, calib, args)  # type: ignore[arg-type]
        fp32_path = onnx_path.rename(out / 'fp32.onnx')
        with _silenced():
            quantize(fp32_path, onnx_path, out, calib_batches)
        verification['quantization'] = ('onnxruntime.quantization.quantize_static: QDQ, MinMax, uint8 activations, '
                                        f'int8 per-channel weights, {sum(map(len, calib_batches))} digits images')
    with _silenced():
        run = runtime_for(fmt).load(out, precision, args.threads)  # the exports' session / compile settings
    with torch.no_grad():
        if precision == 'fp32':
            gen = torch.Generator().manual_seed(0)
            diffs = {}
            for n in (1, 3):
                x = torch.randn(n, 3, args.img_size, args.img_size, generator=gen)
                diffs[str(n)] = float(np.abs(np.asarray(run(x.numpy())) - deploy(x).numpy()).max())
            verification.update({'inputs': 'N(0, 1) images, seed 0, batch sizes 1 and 3', 'max_abs_diff': diffs,
                                 'tolerance': FP32_ATOL,
                                 'passed': max(diffs.values()) <= FP32_ATOL})
            if not verification['passed']:
                raise BaselineError(f'baseline {fmt} {precision}: max |logit diff| {max(diffs.values()):.3g} > '
                                   f'{FP32_ATOL} against the PyTorch model')
        else:
            agree = sum(int((torch.from_numpy(np.asarray(run(x.numpy()))).argmax(1) == deploy(x).argmax(1)).sum())
                        for x in heldout)
            images = sum(len(x) for x in heldout)
            verification.update({'heldout_images': images, 'heldout_top1_agreement': agree / images})
    return {'fn': run, 'verification': verification, 'dir': out}


@contextlib.contextmanager
def _silenced() -> Iterator[None]:
    """Warnings and the exporters' prints off while a baseline is built (export_model does the same for exports)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter('ignore')
        yield


def _native(model: torch.nn.Module, args: argparse.Namespace) -> Callable[[np.ndarray], np.ndarray]:
    """``model`` through ``timm_ghost.inference_model`` (the same treatment for GhostNet and its peers: timm's
    ``reparameterize_model``, channels_last, inductor with ``INDUCTOR_OPTIONS``; not compiled with --short), compiled
    and checked against the eval model here at every batch size (max |logit diff| in ``verification``), so that the
    timing's warm-up calls compile nothing."""
    from timm_ghost import inference_model
    from timm_ghost.inference import compile_report

    native = inference_model(model, compile=not args.short)
    diffs, gen = {}, torch.Generator().manual_seed(0)
    for batch in args.batch_sizes:
        x = torch.randn(batch, 3, args.img_size, args.img_size, generator=gen)
        with torch.no_grad():
            diffs[str(batch)] = float((native(x) - model(x)).abs().max())

    def run(x: np.ndarray) -> np.ndarray:
        return native(torch.from_numpy(x)).numpy()

    run.verification = {'max_abs_diff': diffs, 'backend': compile_report(native)}  # type: ignore[attr-defined]
    return run


def available_formats(formats: Sequence[str], log: Callable[[str], None]) -> List[str]:
    """``formats`` whose runtime is installed; each missing one is named with what to install."""
    from timm_ghost.export import require_runtime

    out = []
    for fmt in formats:
        if fmt == NATIVE:
            out.append(fmt)
            continue
        try:
            require_runtime(fmt)
        except ImportError as e:
            log(f'skipping {fmt}: {e}')
            continue
        out.append(fmt)
    return out


def run_group(fmt: str, precision: str, rows: List[Dict[str, Any]], models: Dict[str, torch.nn.Module],
              calib: Optional[Path], workdir: Path, args: argparse.Namespace, log: Callable[[str], None],
              exports: Dict[str, Any], results: List[Dict[str, Any]], profiles: Dict[str, Any],
              failures: List[Dict[str, Any]]) -> None:
    """Export every row in ``fmt`` / ``precision``, then time them all, interleaved, at each batch size. A row whose
    export fails is recorded in ``failures`` and left out of the timing."""
    from timm.utils import reparameterize_model

    from timm_ghost.errors import ExportError
    from timm_ghost.export import export_model, load_export, runtime_for

    fns: Dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    dirs: Dict[str, Path] = {}
    if fmt == NATIVE and precision != 'fp32':
        return  # inference_model is fp32
    rows = [r for r in rows if r['route'] == 'export' or precision in BASELINE_FORMATS.get(fmt, ())]
    log(f'{FORMAT_LABELS[fmt]} {precision}: exporting {len(rows)} rows ...')
    for row in rows:
        key, name = row['key'], row['model']
        out = workdir / f'{fmt}_{precision}_{key}'
        start = time.time()
        try:
            if fmt == NATIVE:
                fns[key] = _native(models[name], args)
                verification, runtime = fns[key].verification, {'name': 'torch', 'version': torch.__version__}
            elif row['route'] == 'baseline':
                built = build_baseline(reparameterize_model(models[name]), fmt, precision, out, calib, args)
                fns[key], dirs[key], verification = built['fn'], out, built['verification']
                runtime = {'name': runtime_for(fmt).RUNTIME, 'version': runtime_for(fmt).version()}
            else:
                ghost = name in GHOSTNETS
                model = models[name] if ghost else reparameterize_model(models[name])
                result = export_model(
                    model, out, fmt, precision, calib=calib if precision == 'int8' else None,
                    calib_size=args.calib_size, holdout_size=args.holdout_size, min_agreement=0.0,
                    img_size=args.img_size, fold=ghost, max_batch=max(max(args.batch_sizes), 3),
                    speed_check=False)  # timed here, side by side
                fns[key], dirs[key] = load_export(out, threads=args.threads), out
                verification, runtime = result.metadata['verification'], result.metadata['runtime']
        except (ExportError, BaselineError) as e:  # one model failing leaves the rest of a long run standing
            failures.append({'format': fmt, 'precision': precision, 'key': key, 'error': str(e)})
            log(f'FAILED {FORMAT_LABELS[fmt]} {precision} {row["label"]}: {e}')
            shutil.rmtree(out, ignore_errors=True)
            continue
        export_s = round(time.time() - start, 1)
        exports[f'{fmt}_{precision}_{key}'] = {
            'format': fmt, 'precision': precision, 'key': key, 'export_s': export_s, 'runtime': runtime,
            'verification': verification}
        agree = verification.get('heldout_top1_agreement')
        log(f'exported {FORMAT_LABELS[fmt]} {precision} {row["label"]} in {export_s} s'
            + (f' (held-out top-1 agreement with fp32 {agree:.3f})' if agree is not None else ''))
    gen = torch.Generator().manual_seed(1)
    for batch in args.batch_sizes:
        x = torch.randn(batch, 3, args.img_size, args.img_size, generator=gen).numpy()
        lat = interleaved_latencies({k: (lambda fn=fn, x=x: fn(x)) for k, fn in fns.items()}, rounds=args.rounds,
                                    round_s=args.round_s, warmup=args.warmup)
        group = []
        for row in rows:
            if row['key'] not in lat:
                continue
            times = lat[row['key']]
            p50 = statistics.median(times)
            group.append({
                'format': fmt, 'precision': precision, 'batch': batch, 'key': row['key'], 'model': row['model'],
                'route': row['route'], 'label': row['label'], 'top1': row['top1'], 'img_per_s': round(batch / p50, 2),
                'p50_ms': round(p50 * 1e3, 3), 'p90_ms': round(percentile(times, 90) * 1e3, 3), 'calls': len(times)})
            log(f'{FORMAT_LABELS[fmt]:18s} {precision} batch {batch:3d}  {row["label"]:48s} {batch / p50:9.1f} img/s')
        front = set(pareto_front([(r['key'], r['img_per_s'], r['top1']) for r in group if r['route'] == 'export']))
        results += [{**r, 'on_front': r['key'] in front} for r in group]  # the baseline is never on the front
    if args.profile and precision == 'fp32' and fmt in ('onnx', 'openvino'):
        x = torch.randn(1, 3, args.img_size, args.img_size, generator=torch.Generator().manual_seed(2)).numpy()
        for key in ('ghostnet_100', BASELINE_KEY):
            if key in dirs:
                log(f'profiling {key} in {FORMAT_LABELS[fmt]} fp32 batch 1 ...')
                profiles[f'{fmt}_fp32_{key}'] = (profile_onnxruntime(dirs[key], x, args.threads) if fmt == 'onnx'
                                                 else profile_openvino(dirs[key], 'fp32', x, args.threads))
    for d in dirs.values():  # the next group's exports need the disk more than these
        shutil.rmtree(d, ignore_errors=True)


def _speed(results: List[Dict[str, Any]], key: str, fmt: str, precision: str, batch: int) -> Optional[float]:
    return next((r['img_per_s'] for r in results if (r['key'], r['format'], r['precision'], r['batch'])
                 == (key, fmt, precision, batch)), None)


def _ratio_goal(what: str, results: List[Dict[str, Any]], num: Tuple[str, str, str, int],
                den: Tuple[str, str, str, int], goal: float, strict: bool = False) -> Dict[str, Any]:
    a, b = _speed(results, *num), _speed(results, *den)
    out: Dict[str, Any] = {'goal': what, 'numerator': dict(zip(('key', 'format', 'precision', 'batch'), num)),
                           'denominator': dict(zip(('key', 'format', 'precision', 'batch'), den)),
                           'target': goal, 'ratio': None, 'met': None}
    if a is None or b is None:
        out['note'] = 'not measured in this run'
        return out
    ratio = a / b
    out.update({'ratio': round(ratio, 3), 'met': bool(ratio > goal if strict else ratio >= goal)})
    return out


def summarize(results: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The issue's goals as ratios measured in this run; ``met`` is None where a row was not measured."""
    speedup = [
        _ratio_goal(f'ghostnet_100 export / baseline, {FORMAT_LABELS[fmt]} fp32 batch 1 >= 1.3', results,
                    ('ghostnet_100', fmt, 'fp32', 1), (BASELINE_KEY, fmt, 'fp32', 1), 1.3)
        for fmt in ('onnx', 'openvino')]
    vs_mnv3 = [
        _ratio_goal(f'ghostnet_100 / mobilenetv3_large_100, {FORMAT_LABELS[fmt]} fp32 batch 1 > 1.0', results,
                    ('ghostnet_100', fmt, 'fp32', 1), ('mobilenetv3_large_100', fmt, 'fp32', 1), 1.0, strict=True)
        for fmt in ('onnx', 'openvino')]
    int8 = [_ratio_goal(f'ghostnet_100 int8 / fp32, {FORMAT_LABELS[fmt]} batch {batch} >= {goal}', results,
                        ('ghostnet_100', fmt, 'int8', batch), ('ghostnet_100', fmt, 'fp32', batch), goal)
            for fmt, goal in (('onnx', 1.3), ('openvino', 1.5), ('executorch', 1.5)) for batch in (1, 32)]
    fastest = []
    groups = sorted({(r['format'], r['precision'], r['batch']) for r in results},
                    key=lambda g: (FORMATS.index(g[0]), PRECISIONS.index(g[1]), g[2]))
    for fmt, precision, batch in groups:
        rs = sorted((r for r in results if (r['format'], r['precision'], r['batch']) == (fmt, precision, batch)
                     and r['route'] == 'export' and r['top1'] >= TOP1_GOAL), key=lambda r: -r['img_per_s'])
        entry: Dict[str, Any] = {'format': fmt, 'precision': precision, 'batch': batch, 'min_top1': TOP1_GOAL,
                                 'target': 'ghostnet_130', 'fastest': None, 'img_per_s': None, 'next': None,
                                 'margin': None, 'met': None}
        if rs:  # met stays None where ghostnet_130 was not measured in this group
            entry.update({'fastest': rs[0]['model'], 'img_per_s': rs[0]['img_per_s'],
                          'met': rs[0]['model'] == 'ghostnet_130' if any(r['model'] == 'ghostnet_130' for r in rs)
                          else None})
        if len(rs) > 1:
            entry.update({'next': rs[1]['model'], 'margin': round(rs[0]['img_per_s'] / rs[1]['img_per_s'], 3)})
        fastest.append(entry)
    return {'export_vs_baseline': speedup, 'ghostnet_100_vs_mobilenetv3_large_100': vs_mnv3, 'int8_vs_fp32': int8,
            'fastest_at_79': fastest}


def plot(data: Dict[str, Any], out: Path) -> List[Path]:
    """One PNG per runtime, ``<out stem>_<format>.png``: top-1 against images/s (log) per precision and batch, the
    Pareto front drawn. Returns the paths written."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    rows = data['results']
    batches = data['settings']['batch_sizes']
    m = data['machine']
    written = []
    for fmt in dict.fromkeys(r['format'] for r in rows):
        precisions = [p for p in PRECISIONS if any(r['format'] == fmt and r['precision'] == p for r in rows)]
        fig, axes = plt.subplots(len(precisions), len(batches), figsize=(6.5 * len(batches), 5 * len(precisions)),
                                 squeeze=False)
        for i, precision in enumerate(precisions):
            for ax, batch in zip(axes[i], batches):
                rs = [r for r in rows if (r['format'], r['precision'], r['batch']) == (fmt, precision, batch)]
                models = [r for r in rs if r['route'] == 'export']
                front = {r['key'] for r in models if r['on_front']}
                for r in rs:
                    ghost = r['model'] in GHOSTNETS
                    if r['route'] == 'baseline':
                        ax.scatter(r['img_per_s'], r['top1'], marker='x', color='tab:gray', zorder=3)
                    else:
                        ax.scatter(r['img_per_s'], r['top1'], color='tab:blue' if ghost else 'tab:orange', zorder=3,
                                   edgecolors='k' if r['key'] in front else 'none')
                    base = r['route'] == 'baseline'
                    ax.annotate('ghostnet_100 (legacy ONNX)' if base else r['model'], (r['img_per_s'], r['top1']),
                                textcoords='offset points', xytext=(4, -9 if base else 3), fontsize=7)
                pts = sorted(((r['img_per_s'], r['top1']) for r in models if r['key'] in front), reverse=True)
                if pts:
                    ax.step([p[0] for p in pts], [p[1] for p in pts], where='post', color='k', lw=0.8, alpha=0.6,
                            label='Pareto front')
                    ax.legend(loc='lower left', fontsize=7)
                ax.set_xscale('log')
                ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
                ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f'{v:g}'))
                ax.xaxis.set_minor_formatter(ticker.NullFormatter())
                ax.set_xlabel('images/s (log scale)')
                ax.set_ylabel('published ImageNet-1k top-1 (%)')
                ax.set_title(f'{FORMAT_LABELS[fmt]} {precision}, batch {batch}', fontsize=9)
                ax.grid(alpha=0.3, which='both')
        short = ' (short smoke run: not a measurement)' if data.get('short') else ''
        fig.suptitle(f'{data["settings"]["img_size"]} px, {m["threads"]} threads, {m["cpu_model"]}, '
                     f'{data["created"][:10]}{short}; blue: GhostNet (timm-ghost export), orange: timm models, '
                     f'x: baseline; ringed: on the front', fontsize=9)
        fig.tight_layout()
        path = out.with_name(f'{out.stem}_{fmt}.png')
        save_figure_atomic(fig, path)
        plt.close(fig)
        written.append(path)
    return written


def _names(text: str, option: str, allowed: Sequence[str]) -> List[str]:
    names = [n.strip() for n in text.split(',') if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if not names or unknown:
        what = f'unknown {", ".join(map(repr, unknown))}' if unknown else 'empty'
        raise ValueError(f'{option}: {what}; expected a comma-separated subset of {",".join(allowed)}')
    return list(dict.fromkeys(names))


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--short', action='store_true',
                   help='smoke run: 64 px, batch 1, one short round; by default 3 rows in ONNX Runtime')
    p.add_argument('--models', default=None,
                   help=f'comma-separated subset of {",".join((*MODELS, BASELINE))} (default: all; with --short '
                        f'{",".join(SHORT_MODELS)})')
    p.add_argument('--formats', default=None,
                   help=f'subset of {",".join(FORMATS)} (default: all; onnx with --short)')
    p.add_argument('--precisions', default=','.join(PRECISIONS), help='subset of fp32,int8 (default: both)')
    p.add_argument('--batch-sizes', default='1,32')
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--rounds', type=int, default=5)
    p.add_argument('--round-s', type=float, default=0.3)
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--calib-size', type=int, default=64, help='calibration images for int8 (default 64)')
    p.add_argument('--holdout-size', type=int, default=64, help='held-out images for int8 agreement (default 64)')
    p.add_argument('--profile', action='store_true',
                   help='per-node-type profiles of ghostnet_100 and the baseline, ONNX Runtime and OpenVINO fp32 b1')
    p.add_argument('--out', type=Path, default=RESULTS / 'peers.json',
                   help='JSON result (default results/peers.json); PNGs beside it as <stem>_<format>.png')
    args = p.parse_args(argv)
    try:
        args.batch_sizes = parse_int_list(args.batch_sizes, '--batch-sizes')
        if args.models is None:
            args.models = ','.join(SHORT_MODELS if args.short else (*MODELS, BASELINE))
        if args.formats is None:
            args.formats = 'onnx' if args.short else ','.join(FORMATS)
        args.models = _names(args.models, '--models', (*MODELS, BASELINE))
        args.formats = _names(args.formats, '--formats', FORMATS)
        args.precisions = _names(args.precisions, '--precisions', PRECISIONS)
    except ValueError as e:
        p.error(str(e))
    if args.short:
        args.img_size, args.batch_sizes = 64, [1]
        args.rounds, args.round_s, args.warmup, args.calib_size = 1, 0.05, 1, min(args.calib_size, 16)
        args.holdout_size = min(args.holdout_size, 32)
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    _quiet()
    torch.set_num_threads(args.threads)
    start = time.time()

    def log(msg: str) -> None:
        print(f'[{time.time() - start:6.0f} s] {msg}', flush=True)

    from timm_ghost.data import write_digits_imagefolder
    from timm_ghost.models_info import count_macs, count_params

    machine = machine_info(args.threads)
    rows = _rows(args.models)
    names = list(dict.fromkeys(r['model'] for r in rows))
    models = eval_models(names, args.img_size)
    info = {}
    for name in names:
        info[name] = {'label': _label(name), **asdict(TOP1[name]), 'params': count_params(models[name]),
                      'macs': count_macs(models[name], args.img_size),
                      'export_path': "timm-ghost's export_model(fold=True)" if name in GHOSTNETS else
                      'timm.utils.reparameterize_model, then export_model(fold=False)'}
    formats = available_formats(args.formats, log)
    exports: Dict[str, Any] = {}
    results: List[Dict[str, Any]] = []
    profiles: Dict[str, Any] = {}
    failures: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix='bench-peers-') as tmp:
        calib = None
        if 'int8' in args.precisions and formats:
            log(f'writing the digits ImageFolder at {args.img_size} px for int8 calibration ...')
            calib = write_digits_imagefolder(Path(tmp) / 'digits', img_size=args.img_size).root / 'train'
        for fmt in formats:
            for precision in args.precisions:
                run_group(fmt, precision, rows, models, calib, Path(tmp), args, log, exports, results, profiles,
                          failures)
    summary = summarize(results)
    data = {
        'kind': 'peers', 'schema': 1, 'created': now_iso(), 'short': args.short,
        'machine': machine, 'versions': {**versions(), **_runtime_versions()}, 'gpu': gpu_section(),
        'settings': {
            'models': names, 'baseline_row': BASELINE in args.models, 'formats': formats,
            'format_labels': {f: FORMAT_LABELS[f] for f in FORMATS}, 'precisions': args.precisions,
            'batch_sizes': args.batch_sizes, 'img_size': args.img_size, 'threads': args.threads,
            'rounds': args.rounds, 'round_s': args.round_s, 'warmup': args.warmup, 'calib_size': args.calib_size,
            'holdout_size': args.holdout_size,
            'weights': 'random, every model by timm_ghost.testing.randomize_ (seed 0) and its classifier scaled to a '
                       'largest |logit| of 10, eval mode; the speed does '
                       'not depend on the weight values (same operators, same shapes), so top-1 is the published '
                       'figure, not measured here',
            'int8': 'each runtime\'s own quantizer through export_model, calibrated on the digits ImageFolder; '
                    'min_agreement 0.0 (random weights), held-out agreement with fp32 recorded per export',
            'baseline': "torch.onnx.export(reparameterize_model(ghostnet_100), dynamo=False, opset_version=17, "
                        "dynamic batch), run in ONNX Runtime and, through openvino.convert_model, in OpenVINO, with "
                        "the exports' runtime settings (timm_ghost.export's loaders)",
            'statistic': 'median per-call wall time over interleaved rounds per (runtime, precision, batch); '
                         'images/s = batch / p50',
            'openvino': 'INFERENCE_PRECISION_HINT f32, static shape per batch (as load_export runs an export)',
        },
        'models': info,
        'exports': exports,
        'failures': failures,
        'results': results,
        'summary': summary,
        'profiles': profiles,
    }
    for line in peers_goal_lines(summary, data['settings']['format_labels']):
        print('summary:', line)
    # benchlib.finish, but with one chart per runtime instead of one named after the JSON
    data['wall_s'] = round(time.time() - start, 1)
    data['machine']['loadavg_at_end'] = [round(v, 2) for v in os.getloadavg()]
    write_json_atomic(args.out, data)
    pngs = plot(data, args.out)
    print(f'wrote {args.out} and {", ".join(str(p) for p in pngs)} ({data["wall_s"]} s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
