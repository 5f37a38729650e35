"""CPU inference benchmark: GhostNet (eager, BN-fused deploy, deploy under torch.compile,
``timm_ghost.inference_model``, ONNX Runtime on the exported deploy model and on the project's own ONNX export)
against timm's built-in ghostnet_100 with the same weights, and mobilenetv3_large_100 as a peer.

The ``inference_model`` row against the ``onnxruntime_export`` row (``timm_ghost.export.export_model`` to ONNX,
run by ``load_export`` as users run it, idle threads spinning) is the PyTorch-native goal: at least 0.8x at batch 1
and 0.9x at batch 32 (``goals`` in the JSON). The older ``onnxruntime`` row (the plain deploy model's ONNX, spinning
off) stays for comparison with earlier runs.

Every row is timed on the same NCHW fp32 tensor a user would pass, in interleaved rounds (A, B, C, A, B, C, ...) after
a warm-up, with ``torch.set_num_threads(--threads)`` (ONNX Runtime gets as many intra-op threads). The result is a
JSON file and a PNG chart; ``benchmarks/report.py`` turns the JSON into the README's table.

    python benchmarks/bench_inference.py                 # full run (about 3 minutes on 2 cores)
    python benchmarks/bench_inference.py --short         # smoke run (seconds): every row, tiny sizes
    python benchmarks/bench_inference.py --profile       # also: where inference_model's batch-1 call spends its time

``--profile`` (batch 1, after the timed rounds) records in ``profiles``: torch.profiler's view of an
``inference_model`` compiled with the same options but inductor's Python wrapper and kernel profiling on (so its
oneDNN convolutions, GEMMs and generated kernels show as events), the oneDNN primitives' own execution time
(``ONEDNN_VERBOSE``), and ONNX Runtime's per-operator profile of the export.
"""
from __future__ import annotations

import argparse
import copy
import logging
import resource
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from benchlib import (
    finish,
    gpu_section,
    interleaved_latencies,
    machine_info,
    now_iso,
    parse_int_list,
    percentile,
    save_figure_atomic,
    versions,
)

RESULTS = Path(__file__).resolve().parent / 'results'
ROWS = {  # key: label, in table order
    'builtin': "timm built-in ghostnet_100 (eval)",
    'eager': 'timm-ghost ghostnet_100 (eval)',
    'fold': 'ablation: BN folded only (NCHW)',
    'fold_cl': 'ablation: BN folded + channels_last',
    'deploy': 'timm-ghost deploy (reparameterize_model)',
    'deploy_compile': 'timm-ghost deploy + torch.compile',
    'inference_model': 'timm_ghost.inference_model (inductor)',
    'onnxruntime': 'ONNX Runtime, exported deploy model',
    'onnxruntime_export': 'ONNX Runtime, timm-ghost export (as load_export runs it)',
    'mobilenetv3': 'timm mobilenetv3_large_100 (eval, peer)',
}


def _quiet_imports() -> None:
    # the CUDA build warns at import when it finds no GPU; benchmarks print their own lines
    logging.getLogger('torch.utils.cpp_extension').setLevel(logging.ERROR)
    warnings.filterwarnings('ignore', message='.*TorchScript.*')


def build_rows(args: argparse.Namespace, workdir: Path, log: Callable[[str], None]) -> Dict[str, Dict[str, Any]]:
    """``{key: {'fn': callable(x) -> logits, 'macs': MACs per image, ...}}`` for the requested rows."""
    import timm
    from timm.models import ghostnet as timm_ghostnet
    from timm.utils import reparameterize_model

    import timm_ghost  # noqa: F401  (registers our ghostnet_100)
    from timm_ghost.models_info import count_macs
    from timm_ghost.testing import randomize_

    torch.manual_seed(0)
    ours = timm.create_model(args.model).eval()
    randomize_(ours, seed=0)  # random weights and BN statistics: folding is not folding an identity
    builtin = getattr(timm_ghostnet, args.model)().eval()
    builtin.load_state_dict(ours.state_dict())  # the same weights, key for key
    deploy = reparameterize_model(ours)
    fold, fold_cl = fold_only(ours), fold_only(ours).to(memory_format=torch.channels_last)

    def row(fn: Any, counted: torch.nn.Module, **extra: Any) -> Dict[str, Any]:
        return {'fn': fn, 'macs': count_macs(counted, args.img_size), **extra}  # each row's own module counted

    rows: Dict[str, Dict[str, Any]] = {
        'builtin': row(builtin, builtin),
        'eager': row(ours, ours),
        'fold': row(fold, fold),
        'fold_cl': row(fold_cl, fold_cl),
        'deploy': row(deploy, deploy),
    }
    if 'deploy_compile' in args.rows:
        log(f'compiling the deploy model (torch.compile, backend={args.compile_backend}) ...')
        compiled = torch.compile(copy.deepcopy(deploy), backend=args.compile_backend, fullgraph=True, dynamic=False)
        rows['deploy_compile'] = row(compiled, deploy, compile_backend=args.compile_backend)
    if 'inference_model' in args.rows:
        from timm_ghost import inference_model
        from timm_ghost.inference import INDUCTOR_OPTIONS

        native = inference_model(ours, compile=not args.short)  # compiles per shape on the untimed first call
        rows['inference_model'] = row(native, deploy, inductor_options=INDUCTOR_OPTIONS if not args.short else None,
                                      inference_model=native)
    if 'onnxruntime_export' in args.rows:
        from timm_ghost.export import export_model, load_export

        log('exporting with timm_ghost.export.export_model (onnx, fp32) ...')
        export_model(ours, workdir / 'export_onnx', 'onnx', img_size=args.img_size)
        run_export = load_export(workdir / 'export_onnx', threads=args.threads)
        rows['onnxruntime_export'] = {
            'fn': lambda x: torch.from_numpy(run_export(x.numpy())), 'macs': rows['deploy']['macs'],
            'intra_op_threads': args.threads, 'allow_spinning': True}
    if 'onnxruntime' in args.rows:  # the exported graph is the deploy model's
        rows['onnxruntime'] = _onnxruntime_row(deploy, args, workdir, log) | {'macs': rows['deploy']['macs']}
    if 'mobilenetv3' in args.rows:
        peer = timm.create_model('mobilenetv3_large_100').eval()
        rows['mobilenetv3'] = row(peer, peer)
    return {k: rows[k] for k in ROWS if k in rows and k in args.rows}


NATIVE_GOALS = {1: 0.8, 32: 0.9}  # inference_model / the project's ONNX Runtime fp32 export, per batch


def native_goals(results: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The PyTorch-native goal per measured batch: ``inference_model``'s speed over ``onnxruntime_export``'s."""
    p50 = {(r['key'], r['batch']): r['p50_ms'] for r in results}
    goals = []
    for batch in sorted({r['batch'] for r in results}):
        if ('inference_model', batch) in p50 and ('onnxruntime_export', batch) in p50:
            ratio = round(p50[('onnxruntime_export', batch)] / p50[('inference_model', batch)], 3)
            goal = NATIVE_GOALS.get(batch)
            goals.append({'batch': batch, 'what': 'inference_model / ONNX Runtime fp32 export', 'ratio': ratio,
                          'goal': goal, 'met': None if goal is None else ratio >= goal})
    return goals


def fold_only(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` with every BatchNorm folded by the blocks' in-place ``reparameterize()`` hooks and nothing
    else changed (same modules, NCHW, standard forward): what plain folding alone buys, for the ablation rows."""
    from timm_ghost.blocks import ConvBnAct, GhostBottleneck, GhostModule
    from timm_ghost.fold import fold_conv_bn

    folded = copy.deepcopy(model)
    for module in list(folded.modules()):
        if isinstance(module, (GhostModule, GhostBottleneck, ConvBnAct)):
            module.reparameterize()
    stem = fold_conv_bn(folded.conv_stem, folded.bn1)
    folded.conv_stem.weight, folded.conv_stem.bias = stem.weight, stem.bias
    folded.bn1 = torch.nn.Identity()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    return folded


def _onnxruntime_row(deploy: torch.nn.Module, args: argparse.Namespace, workdir: Path,
                     log: Callable[[str], None]) -> Dict[str, Any]:
    import onnxruntime as ort

    path = workdir / 'deploy.onnx'
    log('exporting the deploy model to ONNX (dynamic batch) ...')
    x = torch.randn(2, 3, args.img_size, args.img_size)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(deploy, (x,), str(path), input_names=['x'], output_names=['logits'],
                          dynamic_shapes={'x': {0: torch.export.Dim('batch')}}, dynamo=True, verbose=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # idle ORT threads would otherwise spin on the cores while torch's rows run (and slow them down many times over)
    opts.add_session_config_entry('session.intra_op.allow_spinning', '0')
    sess = ort.InferenceSession(str(path), opts, providers=['CPUExecutionProvider'])

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(sess.run(None, {'x': x.numpy()})[0])

    return {'fn': run, 'graph_optimization': 'ORT_ENABLE_ALL', 'intra_op_threads': args.threads,
            'allow_spinning': False}


def _onednn_exec_ms(fn: Callable[[], Any], calls: int) -> Dict[str, Any]:
    """oneDNN's verbose log over ``calls`` calls of ``fn``: per primitive kind and implementation, how many
    executions per call and their summed execution time (ms per call), read from the log oneDNN prints on stdout."""
    import collections
    import os

    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode='w+') as log:
        os.dup2(log.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                for _ in range(calls):
                    fn()
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        totals: Dict[str, List[float]] = collections.defaultdict(lambda: [0, 0.0])
        for line in log:
            f = line.strip().split(',')
            if len(f) > 8 and f[0] == 'onednn_verbose' and f[3] == 'exec':
                key = f'{f[5]} [{f[6]}]'
                totals[key][0] += 1
                totals[key][1] += float(f[-1])
    return {'ms_per_call': round(sum(v[1] for v in totals.values()) / calls, 3),
            'by_primitive': {k: {'count': round(v[0] / calls), 'ms_per_call': round(v[1] / calls, 3)}
                             for k, v in sorted(totals.items(), key=lambda kv: -kv[1][1])}}


def profile_native(ours: torch.nn.Module, args: argparse.Namespace, workdir: Path) -> Dict[str, Any]:
    """Where inference_model's batch-1 call spends its time, beside ONNX Runtime's profile of the export."""
    import collections

    from torch.profiler import ProfilerActivity, profile

    from timm_ghost import inference_model
    from timm_ghost.inference import INDUCTOR_OPTIONS

    calls = 20
    x = torch.randn(1, 3, args.img_size, args.img_size, generator=torch.Generator().manual_seed(2))
    options = {**INDUCTOR_OPTIONS, 'cpp_wrapper': False, 'cpp.enable_kernel_profile': True}
    native = inference_model(ours, batch_size=1, img_size=args.img_size, options=options)
    for _ in range(5):
        native(x)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            native(x)
    groups = {'oneDNN convolution (PyTorch op)': ('mkldnn::_convolution_pointwise',),
              'GEMM (mkl linear)': ('mkl::_mkl_linear',), 'inductor C++ kernels': ('graph_',),
              'graph call (Python wrapper)': ('## Call CompiledFxGraph',)}
    totals: Dict[str, List[float]] = collections.defaultdict(lambda: [0, 0.0])
    wall = 0.0
    for e in prof.key_averages():
        if e.key.startswith('Torch-Compiled Region'):
            wall += e.cpu_time_total / 1e3
        group = next((g for g, prefixes in groups.items() if e.key.startswith(prefixes)), 'other')
        totals[group][0] += e.count
        totals[group][1] += e.self_cpu_time_total / 1e3
    torch_profile = {
        'options': {k: v for k, v in options.items()}, 'backend': native.backend,
        'ms_per_call': round(wall / calls, 3),
        'by_group': {g: {'events': round(v[0] / calls), 'ms_per_call': round(v[1] / calls, 3)}
                     for g, v in sorted(totals.items(), key=lambda kv: -kv[1][1])},
        'onednn': _onednn_exec_ms(lambda: native(x), 5),
    }
    out = {'batch': 1, 'inference_model': torch_profile}
    export_dir = workdir / 'export_onnx'
    if export_dir.is_dir():
        from bench_export import profile_onnxruntime
        out['onnxruntime_export'] = profile_onnxruntime(export_dir, x.numpy(), args.threads)
    return out


def fault_mb_per_call(fn: Callable[[], Any], calls: int = 2) -> float:
    """MB of memory the process faulted in per call of ``fn`` (minor page faults x page size), after one warm call:
    fresh pages the allocator had to map, a cost that grows with the batch on top of the arithmetic."""
    fn()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        fn()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    return round(faults * resource.getpagesize() / calls / 2**20, 1)


def _bind(fn: Callable[[torch.Tensor], Any], x: torch.Tensor) -> Callable[[], Any]:
    return lambda: fn(x)


def measure(rows: Dict[str, Dict[str, Any]], args: argparse.Namespace, peak: float,
            log: Callable[[str], None]) -> List[Dict[str, Any]]:
    """Time every row at every batch size; one result dict per (batch, row)."""
    results = []
    gen = torch.Generator().manual_seed(1)
    for batch in args.batch_sizes:
        x = torch.randn(batch, 3, args.img_size, args.img_size, generator=gen)
        with torch.inference_mode():
            outputs = {k: r['fn'](x) for k, r in rows.items()}  # also the first (compiling / packing) call
            fns = {k: _bind(r['fn'], x) for k, r in rows.items()}
            lat = interleaved_latencies(fns, rounds=args.rounds, round_s=args.round_s, warmup=args.warmup)
            faults = {k: fault_mb_per_call(fn) for k, fn in fns.items()}
        base = statistics.median(lat['builtin']) if 'builtin' in lat else None
        for key, times in lat.items():
            p50 = statistics.median(times)
            gflops = 2 * rows[key]['macs'] * batch / p50 / 1e9
            same_net = key != 'mobilenetv3' and 'builtin' in outputs
            row = {
                'batch': batch, 'key': key, 'label': ROWS[key],
                'img_per_s': round(batch / p50, 2),
                'p50_ms': round(p50 * 1e3, 3), 'p90_ms': round(percentile(times, 90) * 1e3, 3),
                'calls': len(times),
                'page_fault_mb_per_call': faults[key],
                'ratio_to_builtin': round(base / p50, 3) if base else None,
                'macs_per_image': rows[key]['macs'],
                'gflops': round(gflops, 2), 'peak_share': round(gflops / peak, 4) if peak else None,
                'max_abs_diff_to_builtin': (
                    float((outputs[key] - outputs['builtin']).abs().max()) if same_net else None),
            }
            native = rows[key].get('inference_model')
            if native is not None:
                row['compile_s'] = native.compile_seconds.get(tuple(x.shape))
                row['backend'] = native.backend
            results.append(row)
            log(f'batch {batch:3d}  {ROWS[key]:44s} {row["img_per_s"]:9.1f} img/s  p50 {row["p50_ms"]:9.2f} ms  '
                f'p90 {row["p90_ms"]:9.2f} ms  x{row["ratio_to_builtin"] or 0:.2f}')
    return results


def plot(data: Dict[str, Any], path: Path) -> None:
    """Two panels: throughput per row and batch size, and the ratio to the built-in (goal lines 1.5x / 2.0x)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows = data['results']
    batches = data['settings']['batch_sizes']
    keys = [k for k in ROWS if any(r['key'] == k for r in rows)]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    width = 0.8 / max(1, len(keys))
    for i, key in enumerate(keys):
        vals = {r['batch']: r for r in rows if r['key'] == key}
        xs = [b + (i - (len(keys) - 1) / 2) * width for b in range(len(batches))]
        axes[0].bar(xs, [vals[b]['img_per_s'] for b in batches], width, label=ROWS[key])
        axes[1].bar(xs, [vals[b]['ratio_to_builtin'] or 0 for b in batches], width, label=ROWS[key])
    for ax, title in zip(axes, ('throughput (img/s, higher is better)', 'speed vs timm built-in ghostnet_100')):
        ax.set_xticks(range(len(batches)), [f'batch {b}' for b in batches])
        ax.set_title(title)
        ax.grid(axis='y', alpha=0.3)
    axes[1].axhline(1.0, color='k', lw=0.8)
    axes[1].axhline(1.5, color='tab:red', lw=0.8, ls='--', label='goal at batch 1 (1.5x)')
    axes[1].axhline(2.0, color='tab:red', lw=0.8, ls=':', label='goal at batch 32 (2.0x)')
    handles, labels = axes[0].get_legend_handles_labels()
    goals = [(h, label) for h, label in zip(*axes[1].get_legend_handles_labels()) if label.startswith('goal')]
    fig.legend(handles + [h for h, _ in goals], labels + [label for _, label in goals], loc='lower center', ncol=4,
               fontsize=8, bbox_to_anchor=(0.5, -0.12))
    m = data['machine']
    fig.suptitle(f'CPU fp32 {data["settings"]["img_size"]} px, {m["threads"]} threads, {m["cpu_model"]} '
                 f'({m["widest_simd"]}); torch {data["versions"]["torch"]}', fontsize=10)
    save_figure_atomic(fig, path)
    plt.close(fig)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--short', action='store_true',
                   help='smoke run: batch 1 at 64 px, one short round per row, torch.compile with the eager backend')
    p.add_argument('--batch-sizes', default='1,8,32', help='comma-separated (default 1,8,32)')
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--threads', type=int, default=2, help='torch and ONNX Runtime intra-op threads (default 2)')
    p.add_argument('--rounds', type=int, default=7, help='interleaved rounds (default 7)')
    p.add_argument('--round-s', type=float, default=0.3, help='seconds each row runs per round (default 0.3)')
    p.add_argument('--warmup', type=int, default=3, help='untimed calls per row before the rounds (default 3)')
    p.add_argument('--rows', default=','.join(ROWS), help=f'which rows (default all: {",".join(ROWS)})')
    p.add_argument('--compile-backend', default=None,
                   help='torch.compile backend (default inductor; eager with --short, which checks the capture only)')
    p.add_argument('--model', default='ghostnet_100', choices=['ghostnet_050', 'ghostnet_100', 'ghostnet_130'])
    p.add_argument('--out', type=Path, default=RESULTS / 'inference.json', help='JSON result (a PNG beside it)')
    p.add_argument('--profile', action='store_true',
                   help="batch 1: where inference_model's time goes (torch.profiler, oneDNN's verbose log) beside "
                        "ONNX Runtime's profile of the export")
    args = p.parse_args(argv)
    try:
        args.batch_sizes = parse_int_list(args.batch_sizes, '--batch-sizes')
    except ValueError as e:
        p.error(str(e))
    args.rows = [r.strip() for r in args.rows.split(',') if r.strip()]
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown or 'builtin' not in args.rows:
        p.error(f'--rows: expected names from {",".join(ROWS)} including builtin, got {",".join(args.rows)!r}')
    if args.threads < 1 or args.rounds < 1 or args.img_size < 32 or args.round_s <= 0:
        p.error('--threads and --rounds must be >= 1, --img-size >= 32, --round-s > 0')
    if args.short:
        args.batch_sizes, args.img_size, args.rounds, args.round_s, args.warmup = [1], 64, 1, 0.01, 1
    if args.compile_backend is None:
        args.compile_backend = 'eager' if args.short else 'inductor'
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    _quiet_imports()
    torch.set_num_threads(args.threads)
    start = time.time()
    machine = machine_info(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        rows = build_rows(args, Path(tmp), print)
        results = measure(rows, args, machine['peak_gflops'], print)
        profiles = {}
        if args.profile and not args.short:
            print('profiling inference_model and the ONNX Runtime export at batch 1 ...')
            profiles = profile_native(rows['eager']['fn'], args, Path(tmp))
    data = {
        'kind': 'inference', 'schema': 1, 'created': now_iso(), 'short': args.short,
        'machine': machine, 'versions': versions(),
        'settings': {
            'model': args.model, 'img_size': args.img_size, 'batch_sizes': args.batch_sizes, 'dtype': 'float32',
            'input': 'NCHW contiguous float32 tensor', 'threads': args.threads, 'rounds': args.rounds,
            'round_s': args.round_s, 'warmup': args.warmup, 'grad_mode': 'torch.inference_mode()',
            'compile': {'backend': args.compile_backend, 'fullgraph': True, 'dynamic': False},
            'onnx': 'torch.onnx.export(dynamo=True), dynamic batch; onnxruntime CPUExecutionProvider, ORT_ENABLE_ALL',
            'statistic': 'median (p50) and 90th percentile of per-call wall time over interleaved rounds; '
                         'ratio = built-in p50 / row p50; GFLOP/s = 2 x MACs x batch / p50',
        },
        'rows': {k: ROWS[k] for k in rows},
        'results': results,
        'goals': native_goals(results),
        'profiles': profiles,
        'gpu': gpu_section(),
    }
    return finish(data, args.out, start, plot)


if __name__ == '__main__':
    sys.exit(main())
