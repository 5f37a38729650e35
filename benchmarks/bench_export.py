"""Export routes side by side on the CPU: timm's built-in GhostNet in eager PyTorch, ours (eval and deploy), and every
runtime (ONNX Runtime, OpenVINO, ExecuTorch with XNNPACK) in every precision it supports on the export of our deploy
model, next to the same runtime on the export of timm's built-in model (same weights).

Every export is made and verified by ``timm_ghost.export.export_model`` (fp32 within 1e-4; int8 calibrated on the
digits ImageFolder through timm's eval transform) and run through ``load_export`` with ``--threads`` intra-op threads.
Timing is interleaved (A, B, C, A, B, C, ...) on the same NCHW float32 input; ratios are to the built-in eager p50.

    python benchmarks/bench_export.py                       # ghostnet_100, 224 px, batch 1 and 32 (minutes)
    python benchmarks/bench_export.py --short               # smoke run: ghostnet_050, 64 px, batch 1
    python benchmarks/bench_export.py --digits              # int8 accuracy on the digits validation split

``--profile`` adds per-node-type times of the OpenVINO (PERF_COUNT) and ONNX Runtime (its profiler) exports at batch 1.
``--digits`` trains the demo's digits model (or takes ``--demo-dir``), exports it per runtime in fp32 and int8
(calibrated on the training split) and writes the validation top-1 of each to ``results/export_digits.json``.
"""
from __future__ import annotations

import argparse
import collections
import copy
import json
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from benchlib import (
    finish,
    interleaved_latencies,
    machine_info,
    now_iso,
    parse_int_list,
    percentile,
    save_figure_atomic,
    versions,
)

RESULTS = Path(__file__).resolve().parent / 'results'
FORMAT_LABELS = {'onnx': 'ONNX Runtime', 'openvino': 'OpenVINO', 'executorch': 'ExecuTorch XNNPACK'}


def _quiet() -> None:
    logging.getLogger('torch.utils.cpp_extension').setLevel(logging.ERROR)
    logging.getLogger('nncf').setLevel(logging.ERROR)
    warnings.filterwarnings('ignore')


def _runtime_versions() -> Dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ('onnxruntime', 'openvino', 'nncf', 'executorch'):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = 'not installed'
    return out


def routes(args: argparse.Namespace) -> List[Dict[str, Any]]:
    """The rows to build, in table order: ``{key, label, kind ('eager' | 'export'), fmt, precision, form}``."""
    from timm_ghost.export import runtime_for
    from timm_ghost.export.api import require_runtime

    rows = [
        {'key': 'builtin_eager', 'label': 'timm built-in, eager', 'kind': 'eager', 'form': 'builtin'},
        {'key': 'eager', 'label': 'timm-ghost, eager (eval)', 'kind': 'eager', 'form': 'eval'},
        {'key': 'deploy_eager', 'label': 'timm-ghost deploy, eager', 'kind': 'eager', 'form': 'deploy'},
    ]
    for fmt in args.formats:
        try:
            require_runtime(fmt)
        except ImportError as e:
            print(f'skipping {fmt}: {e}')
            continue
        precisions = [p for p in runtime_for(fmt).PRECISIONS if p in args.precisions]
        if 'bf16' in precisions and not runtime_for(fmt).bf16_supported():
            precisions.remove('bf16')
        for precision in precisions:
            for form in ('deploy', 'builtin'):
                if form == 'builtin' and precision not in args.builtin_precisions:
                    continue
                who = 'timm-ghost deploy' if form == 'deploy' else 'timm built-in'
                rows.append({'key': f'{fmt}_{precision}_{form}', 'label': f'{FORMAT_LABELS[fmt]} {precision}, {who}',
                             'kind': 'export', 'fmt': fmt, 'precision': precision, 'form': form})
    return rows


def build(args: argparse.Namespace, workdir: Path, log: Callable[[str], None]) -> Dict[str, Dict[str, Any]]:
    """``{key: row}`` with ``row['fn']`` (NCHW float32 tensor -> logits) and, for exports, their metadata."""
    import timm
    from timm.models import ghostnet as timm_ghostnet
    from timm.utils import reparameterize_model

    import timm_ghost  # noqa: F401  (registers our ghostnet_*)
    from timm_ghost.data import write_digits_imagefolder
    from timm_ghost.export import export_model, load_export
    from timm_ghost.testing import randomize_

    ours = randomize_(timm.create_model(args.model), seed=0).eval()
    builtin = getattr(timm_ghostnet, args.model)().eval()
    builtin.load_state_dict(ours.state_dict())  # the same weights, key for key
    models = {'builtin': builtin, 'eval': ours, 'deploy': reparameterize_model(copy.deepcopy(ours))}
    calib = None
    out: Dict[str, Dict[str, Any]] = {}
    for row in routes(args):
        if row['kind'] == 'eager':
            out[row['key']] = {**row, 'fn': models[row['form']]}
            continue
        if row['precision'] == 'int8' and calib is None:
            log(f'writing the digits ImageFolder at {args.img_size} px for int8 calibration ...')
            calib = write_digits_imagefolder(workdir / 'digits', img_size=args.img_size).root / 'train'
        log(f'exporting {row["label"]} ...')
        start = time.time()
        result = export_model(
            models['eval'] if row['form'] == 'deploy' else builtin, workdir / row['key'], row['fmt'], row['precision'],
            calib=calib if row['precision'] == 'int8' else None, calib_size=args.calib_size, holdout_size=64,
            min_agreement=0.0, img_size=args.img_size, fold=row['form'] == 'deploy',
            max_batch=max(max(args.batch_sizes), 3), speed_check=False)  # timed here, side by side
        run = load_export(workdir / row['key'], threads=args.threads)
        out[row['key']] = {**row, 'fn': lambda x, run=run: torch.from_numpy(np.asarray(run(x.numpy()))),
                           'export_s': round(time.time() - start, 1), 'dir': workdir / row['key'],
                           'verification': result.metadata['verification'],
                           'runtime': result.metadata['runtime']}
    return out


def measure(rows: Dict[str, Dict[str, Any]], args: argparse.Namespace,
            log: Callable[[str], None]) -> List[Dict[str, Any]]:
    results = []
    gen = torch.Generator().manual_seed(1)
    for batch in args.batch_sizes:
        x = torch.randn(batch, 3, args.img_size, args.img_size, generator=gen)
        with torch.inference_mode():
            outputs = {k: r['fn'](x) for k, r in rows.items()}
            fns = {k: (lambda fn=r['fn'], x=x: fn(x)) for k, r in rows.items()}
            lat = interleaved_latencies(fns, rounds=args.rounds, round_s=args.round_s, warmup=args.warmup)
        base = statistics.median(lat['builtin_eager'])
        ref = outputs['builtin_eager']
        for key, times in lat.items():
            r, p50 = rows[key], statistics.median(times)
            results.append({
                'batch': batch, 'key': key, 'label': r['label'], 'kind': r['kind'], 'form': r['form'],
                'format': r.get('fmt'), 'precision': r.get('precision', 'fp32'),
                'img_per_s': round(batch / p50, 2), 'p50_ms': round(p50 * 1e3, 3),
                'p90_ms': round(percentile(times, 90) * 1e3, 3), 'calls': len(times),
                'ratio_to_builtin_eager': round(base / p50, 3),
                'max_abs_diff_to_builtin_eager': float((outputs[key] - ref).abs().max()),
                'top1_agreement_with_builtin_eager': float((outputs[key].argmax(1) == ref.argmax(1)).float().mean()),
            })
            log(f'batch {batch:3d}  {r["label"]:44s} {batch / p50:9.1f} img/s  p50 {p50 * 1e3:8.2f} ms  '
                f'x{base / p50:.2f}')
    return results


def summarize(results: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The goals: fastest int8 vs fastest fp32 route per batch; deploy vs built-in export per runtime and precision."""
    out: Dict[str, Any] = {'int8_vs_fp32': [], 'deploy_vs_builtin_export': []}
    for batch in sorted({r['batch'] for r in results}):
        rs = [r for r in results if r['batch'] == batch]
        fp32 = max((r for r in rs if r['precision'] == 'fp32'), key=lambda r: r['img_per_s'])
        int8 = [r for r in rs if r['precision'] == 'int8']
        if int8:
            best = max(int8, key=lambda r: r['img_per_s'])
            out['int8_vs_fp32'].append({
                'batch': batch, 'fastest_fp32': fp32['label'], 'fastest_int8': best['label'],
                'ratio': round(best['img_per_s'] / fp32['img_per_s'], 3), 'goal': 1.3})
        for r in rs:
            if r['kind'] == 'export' and r['form'] == 'deploy':
                twin = [t for t in rs if t['format'] == r['format'] and t['precision'] == r['precision']
                        and t['form'] == 'builtin']
                if twin:
                    out['deploy_vs_builtin_export'].append({
                        'batch': batch, 'format': r['format'], 'precision': r['precision'],
                        'ratio': round(r['img_per_s'] / twin[0]['img_per_s'], 3), 'goal': 1.0})
    return out


def profile_openvino(path: Path, precision: str, x: np.ndarray, threads: int, calls: int = 20) -> Dict[str, Any]:
    """OpenVINO CPU plugin counters (PERF_COUNT): per node type, how many executed nodes and their total time."""
    import openvino as ov

    from timm_ghost.export._openvino import compile_config

    compiled = ov.Core().compile_model(path / 'model.xml', 'CPU', {**compile_config(precision, threads),
                                                                   'PERF_COUNT': True})
    request = compiled.create_infer_request()
    for _ in range(3):
        request.infer([x])
    totals: Dict[str, List[float]] = collections.defaultdict(lambda: [0, 0.0])
    for _ in range(calls):
        request.infer([x])
        for info in request.get_profiling_info():
            if info.status == info.Status.EXECUTED:
                key = f'{info.node_type} [{info.exec_type}]'
                totals[key][0] += 1
                totals[key][1] += info.real_time.total_seconds() * 1e3
    return _top(totals, calls)


def profile_onnxruntime(path: Path, x: np.ndarray, threads: int, calls: int = 20) -> Dict[str, Any]:
    """ONNX Runtime's profiler: per operator type, node count and total kernel time."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.enable_profiling = True
    options.profile_file_prefix = str(path / 'ort_profile')
    session = ort.InferenceSession(str(path / 'model.onnx'), options, providers=['CPUExecutionProvider'])
    name = session.get_inputs()[0].name
    for _ in range(3 + calls):
        session.run(None, {name: x})
    events = json.loads(Path(session.end_profiling()).read_text())
    totals: Dict[str, List[float]] = collections.defaultdict(lambda: [0, 0.0])
    runs = [e for e in events if e.get('cat') == 'Node' and e['name'].endswith('_kernel_time')]
    for e in runs:
        key = e['args'].get('op_name', '?')
        totals[key][0] += 1
        totals[key][1] += e['dur'] / 1e3
    return _top(totals, 3 + calls)


def _top(totals: Dict[str, List[float]], calls: int, n: int = 12) -> Dict[str, Any]:
    total = sum(v[1] for v in totals.values()) or 1.0
    rows = sorted(totals.items(), key=lambda kv: -kv[1][1])
    return {'ms_per_call': round(total / calls, 3),
            'by_type': [{'type': k, 'nodes': round(v[0] / calls), 'ms_per_call': round(v[1] / calls, 3),
                         'share': round(v[1] / total, 3)} for k, v in rows[:n]]}


def profiles(rows: Dict[str, Dict[str, Any]], args: argparse.Namespace) -> Dict[str, Any]:
    x = torch.randn(1, 3, args.img_size, args.img_size, generator=torch.Generator().manual_seed(2)).numpy()
    out = {}
    for key, r in rows.items():
        if r['kind'] != 'export' or r['form'] != 'deploy':
            continue
        if r['fmt'] == 'openvino':
            out[key] = profile_openvino(r['dir'], r['precision'], x, args.threads)
        elif r['fmt'] == 'onnx':
            out[key] = profile_onnxruntime(r['dir'], x, args.threads)
    return out


def digits_accuracy(args: argparse.Namespace, workdir: Path, log: Callable[[str], None]) -> Dict[str, Any]:
    """Validation top-1 of the digits model: eager, and each runtime's fp32 and int8 export (calibrated on train)."""
    import timm
    from timm.data import create_transform, resolve_data_config
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    from timm_ghost.export import export_model, load_export
    from timm_ghost.export.api import require_runtime

    demo = Path(args.demo_dir) if args.demo_dir else None
    if demo is None:
        from timm_ghost.demo import run_demo

        demo = workdir / 'demo'
        log('training the demo digits model (timm-ghost demo) ...')
        run_demo(demo, progress=False, log=log)
    model = timm.create_model(f'local-dir:{demo / "model"}', pretrained=True).eval()
    cfg = resolve_data_config({}, model=model)
    val = ImageFolder(str(demo / 'data' / 'validation'), transform=create_transform(**cfg))
    loader = DataLoader(val, batch_size=16, shuffle=False)
    images = [(x, y) for x, y in loader]

    def top1(fn: Callable[[torch.Tensor], torch.Tensor]) -> float:
        correct = sum(int((fn(x).argmax(1) == y).sum()) for x, y in images)
        return round(100.0 * correct / len(val), 2)

    with torch.inference_mode():
        eager = top1(model)
    rows = [{'route': 'PyTorch eager (eval)', 'format': None, 'precision': 'fp32', 'top1': eager}]
    log(f'eager top-1 {eager}')
    for fmt in args.formats:
        try:
            require_runtime(fmt)
        except ImportError as e:
            log(f'skipping {fmt}: {e}')
            continue
        for precision in ('fp32', 'int8'):
            out = workdir / f'digits_{fmt}_{precision}'
            start = time.time()
            result = export_model(model, out, fmt, precision, calib=demo / 'data' / 'train',
                                  calib_size=args.calib_size, min_agreement=0.0, max_batch=16, speed_check=False)
            run = load_export(out, threads=args.threads)
            acc = top1(lambda x, run=run: torch.from_numpy(np.asarray(run(x.numpy()))))
            v = result.metadata['verification']
            rows.append({'route': f'{FORMAT_LABELS[fmt]} {precision}', 'format': fmt, 'precision': precision,
                         'top1': acc, 'drop_vs_eager': round(eager - acc, 2),
                         'heldout_top1_agreement': v.get('heldout_top1_agreement'),
                         'export_s': round(time.time() - start, 1)})
            log(f'{fmt} {precision}: top-1 {acc} (drop {eager - acc:+.2f})')
    return {'model': str(demo / 'model'), 'val_images': len(val), 'calib_images': args.calib_size,
            'calib_split': 'train', 'results': rows}


def plot(data: Dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows = data['results']
    batches = data['settings']['batch_sizes']
    fig, axes = plt.subplots(1, len(batches), figsize=(7 * len(batches), 6), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        rs = [r for r in rows if r['batch'] == batch]
        colors = ['tab:gray' if r['kind'] == 'eager' else 'tab:blue' if r['form'] == 'deploy' else 'tab:orange'
                  for r in rs]
        ax.barh([r['label'] for r in rs][::-1], [r['ratio_to_builtin_eager'] for r in rs][::-1], color=colors[::-1])
        ax.axvline(1.0, color='k', lw=0.8)
        ax.set_title(f'batch {batch}: speed vs timm built-in eager (higher is better)', fontsize=9)
        ax.tick_params(axis='y', labelsize=8)
        ax.grid(axis='x', alpha=0.3)
    m = data['machine']
    fig.suptitle(f'{data["settings"]["model"]} {data["settings"]["img_size"]} px, {m["threads"]} threads, '
                 f'{m["cpu_model"]}; blue: export of timm-ghost deploy, orange: export of timm built-in', fontsize=9)
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--short', action='store_true', help='smoke run: ghostnet_050, 64 px, batch 1, one short round')
    p.add_argument('--model', default='ghostnet_100', choices=['ghostnet_050', 'ghostnet_100', 'ghostnet_130'])
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--batch-sizes', default='1,32')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--rounds', type=int, default=5)
    p.add_argument('--round-s', type=float, default=0.3)
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--formats', default='onnx,openvino,executorch')
    p.add_argument('--precisions', default='fp32,bf16,int8')
    p.add_argument('--builtin-precisions', default='fp32,int8',
                   help="precisions in which timm's built-in model is exported too (default fp32,int8)")
    p.add_argument('--calib-size', type=int, default=64, help='calibration images for int8 (default 64)')
    p.add_argument('--profile', action='store_true', help='per-node-type profiles of OpenVINO and ONNX Runtime')
    p.add_argument('--digits', action='store_true', help='int8 accuracy on the digits validation split instead')
    p.add_argument('--demo-dir', default=None, help='--digits: a timm-ghost demo output folder to reuse')
    p.add_argument('--out', type=Path, default=None,
                   help='JSON result (default results/export.json, or results/export_digits.json with --digits)')
    args = p.parse_args(argv)
    try:
        args.batch_sizes = parse_int_list(args.batch_sizes, '--batch-sizes')
    except ValueError as e:
        p.error(str(e))
    args.formats = [f for f in args.formats.split(',') if f]
    args.precisions = [f for f in args.precisions.split(',') if f]
    args.builtin_precisions = [f for f in args.builtin_precisions.split(',') if f]
    if args.short:
        args.model, args.img_size, args.batch_sizes, args.rounds, args.round_s, args.warmup = \
            'ghostnet_050', 64, [1], 1, 0.05, 1
        args.calib_size = min(args.calib_size, 16)
    if args.out is None:
        args.out = RESULTS / ('export_digits.json' if args.digits else 'export.json')
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    _quiet()
    torch.set_num_threads(args.threads)
    start = time.time()
    machine = machine_info(args.threads)
    with tempfile.TemporaryDirectory(prefix='bench-export-') as tmp:
        if args.digits:
            data = {'kind': 'export_digits', 'schema': 1, 'created': now_iso(), 'machine': machine,
                    'versions': {**versions(), **_runtime_versions()},
                    **digits_accuracy(args, Path(tmp), print)}
            return finish(data, args.out, start, lambda d, p: None)
        rows = build(args, Path(tmp), print)
        results = measure(rows, args, print)
        profile = profiles(rows, args) if args.profile else {}
    data = {
        'kind': 'export', 'schema': 1, 'created': now_iso(), 'short': args.short,
        'machine': machine, 'versions': {**versions(), **_runtime_versions()},
        'settings': {
            'model': args.model, 'img_size': args.img_size, 'batch_sizes': args.batch_sizes,
            'threads': args.threads, 'rounds': args.rounds, 'round_s': args.round_s, 'warmup': args.warmup,
            'calib_size': args.calib_size, 'weights': 'random (timm_ghost.testing.randomize_, seed 0); the built-in '
            'model loads the same state dict',
            'statistic': 'median per-call wall time over interleaved rounds; ratio = built-in eager p50 / row p50',
            'openvino': 'INFERENCE_PRECISION_HINT f32 for fp32 and int8, bf16 for bf16',
        },
        'exports': {k: {'label': r['label'], 'export_s': r['export_s'], 'runtime': r['runtime'],
                        'verification': r['verification']} for k, r in rows.items() if r['kind'] == 'export'},
        'results': results,
        'summary': summarize(results),
        'profiles': profile,
    }
    for line in data['summary']['int8_vs_fp32'] + data['summary']['deploy_vs_builtin_export']:
        print('summary:', line)
    return finish(data, args.out, start, plot)


if __name__ == '__main__':
    sys.exit(main())
