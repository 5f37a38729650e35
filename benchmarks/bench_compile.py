"""Which inductor options ``timm_ghost.inference_model`` compiles with: each candidate measured on CPU, side by side.

Every variant is ``inference_model(ghostnet_100, options=...)`` (folded, channels_last, inductor under inference
mode); only the inductor options differ. Per batch size the variants are compiled (the first call's seconds
recorded: inductor's on-disk caches make a later process faster, so the first variant of a run can pay more), then
timed in interleaved rounds; the ratio is against ``freezing`` (weights frozen into the graph and prepacked for
oneDNN). ``timm_ghost.inference.INDUCTOR_OPTIONS`` keeps what gains at both batch sizes. The run compiles into a
fresh inductor cache (``TORCHINDUCTOR_CACHE_DIR``), so each variant's first call is a cold compile; then a second
process compiles ``INDUCTOR_OPTIONS`` at the first batch size again from that cache (``cache`` in the JSON): what a
user's second process pays. Writes ``results/compile.json`` and a chart.

    python benchmarks/bench_compile.py                 # ghostnet_100, 224 px, batch 1 and 32 (about 5 min)
    python benchmarks/bench_compile.py --short         # smoke run: ghostnet_050, 64 px, batch 1, two variants
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

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
VARIANTS: Dict[str, Dict[str, Any]] = {
    'no freezing': {'freezing': False},
    'freezing': {'freezing': True},
    'freezing + cpp_wrapper': {'freezing': True, 'cpp_wrapper': True},
    'freezing + max_autotune': {'freezing': True, 'max_autotune': True},
    'freezing + cpp_wrapper + max_autotune': {'freezing': True, 'cpp_wrapper': True, 'max_autotune': True},
}
REFERENCE = 'freezing'


def run(args: argparse.Namespace) -> List[Dict[str, Any]]:
    import timm

    import timm_ghost  # noqa: F401  (registers timm-ghost's ghostnet_*)
    from timm_ghost import inference_model
    from timm_ghost.testing import randomize_

    model = randomize_(timm.create_model(args.model), seed=0).eval()
    variants = {k: v for k, v in VARIANTS.items() if k in args.variants}
    results: List[Dict[str, Any]] = []
    for batch in args.batch_sizes:
        x = torch.randn(batch, 3, args.img_size, args.img_size, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            reference = model(x)
        fns, compiled = {}, {}
        for name, options in variants.items():
            native = inference_model(model, options=options)
            start = time.perf_counter()
            out = native(x)
            compiled[name] = {'compile_s': round(time.perf_counter() - start, 2), 'backend': native.backend,
                              'max_abs_diff': float((out - reference).abs().max())}
            fns[name] = lambda native=native, x=x: native(x)
            print(f'batch {batch}: {name}: compiled in {compiled[name]["compile_s"]} s ({native.backend})', flush=True)
        latencies = interleaved_latencies(fns, args.rounds, args.round_s, args.warmup)
        ref = statistics.median(latencies[REFERENCE]) if REFERENCE in latencies else None
        for name, times in latencies.items():
            p50 = statistics.median(times)
            results.append({'batch': batch, 'variant': name, 'options': variants[name], **compiled[name],
                            'img_per_s': round(batch / p50, 1), 'p50_ms': round(p50 * 1e3, 3),
                            'p90_ms': round(percentile(times, 90) * 1e3, 3),
                            'vs_freezing': round(ref / p50, 3) if ref else None})
            print(f'batch {batch}: {name:40s} {batch / p50:8.1f} img/s  x{ref / p50 if ref else 0:.3f}', flush=True)
    return results


def second_process(args: argparse.Namespace, cache: str) -> Dict[str, Any]:
    """``inference_model`` with ``INDUCTOR_OPTIONS`` (``--short``: ``freezing`` alone, a variant it ran) compiled at
    the first batch size in a new process that reads the inductor cache this run filled: the first-call seconds a
    user's later process pays."""
    from timm_ghost.inference import INDUCTOR_OPTIONS

    options = VARIANTS[REFERENCE] if args.short else INDUCTOR_OPTIONS
    code = (
        'import sys, time, timm, torch, timm_ghost\n'
        'from timm_ghost.testing import randomize_\n'
        f'torch.set_num_threads({args.threads})\n'
        f'model = randomize_(timm.create_model({args.model!r}), seed=0).eval()\n'
        f'native = timm_ghost.inference_model(model, options={options!r})\n'
        f'x = torch.randn({args.batch_sizes[0]}, 3, {args.img_size}, {args.img_size})\n'
        'start = time.perf_counter(); native(x)\n'
        'print(round(time.perf_counter() - start, 2), native.backend)\n')
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         env={**os.environ, 'TORCHINDUCTOR_CACHE_DIR': cache})
    if res.returncode != 0:
        raise RuntimeError(f'second process failed: {res.stderr.strip().splitlines()[-1:]}')
    seconds, backend = res.stdout.split()[-2:]
    return {'batch': args.batch_sizes[0], 'options': options, 'second_process_s': float(seconds),
            'backend': backend}


def plot(data: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    batches = data['settings']['batch_sizes']
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        rows = [r for r in data['results'] if r['batch'] == batch]
        ax.barh([r['variant'] for r in rows], [r['img_per_s'] for r in rows])
        ax.set_xlabel('images/s')
        ax.set_title(f'{data["settings"]["model"]}, batch {batch}, {data["settings"]["threads"]} threads')
    save_figure_atomic(fig, path)
    plt.close(fig)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--model', default='ghostnet_100', choices=['ghostnet_050', 'ghostnet_100', 'ghostnet_130'])
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--batch-sizes', default='1,32')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--rounds', type=int, default=7)
    p.add_argument('--round-s', type=float, default=0.4)
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--variants', default=','.join(VARIANTS), help=f'subset of: {", ".join(VARIANTS)}')
    p.add_argument('--short', action='store_true', help='smoke run: ghostnet_050, 64 px, batch 1, two variants')
    p.add_argument('--out', type=Path, default=RESULTS / 'compile.json')
    args = p.parse_args(argv)
    try:
        args.batch_sizes = parse_int_list(args.batch_sizes, '--batch-sizes')
    except ValueError as e:
        p.error(str(e))
    args.variants = [v.strip() for v in args.variants.split(',') if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants:
        p.error(f'--variants: expected names from {", ".join(VARIANTS)}, got {", ".join(unknown) or "none"}')
    if args.short:
        args.model, args.img_size, args.batch_sizes, args.rounds, args.round_s, args.warmup = (
            'ghostnet_050', 64, [1], 1, 0.01, 1)
        args.variants = ['no freezing', 'freezing']
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    data = {
        'kind': 'compile', 'schema': 1, 'created': now_iso(), 'short': args.short,
        'machine': machine_info(args.threads), 'versions': versions(), 'gpu': gpu_section(),
        'settings': {'model': args.model, 'img_size': args.img_size, 'batch_sizes': args.batch_sizes,
                     'threads': args.threads, 'rounds': args.rounds, 'round_s': args.round_s, 'warmup': args.warmup,
                     'reference': REFERENCE},
    }
    with tempfile.TemporaryDirectory() as cache:
        os.environ['TORCHINDUCTOR_CACHE_DIR'] = cache  # cold compiles here; the second process reads it warm
        data['results'] = run(args)
        data['cache'] = second_process(args, cache)
    return finish(data, args.out, start, plot)


if __name__ == '__main__':
    sys.exit(main())
