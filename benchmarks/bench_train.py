"""CPU training-step benchmark: timm-ghost ghostnet_100 against timm's built-in ghostnet_100 (same weights).

One step = forward, cross-entropy on random labels, backward, SGD (momentum 0.9) update, in train mode on NCHW fp32
input. Speed: per-step wall time in interleaved rounds (built-in, ours, built-in, ...) after a warm-up step, with
``torch.set_num_threads(--threads)``. Memory: each model trains alone in a fresh child process; its peak is the
process's peak resident memory minus its resident memory just before the first step (activations, gradients,
optimizer state and workspace; the model and the batch are there before). Goal: >= 1.0x speed, <= 1.0x memory.

    python benchmarks/bench_train.py             # batch 32 and 64 (about 2 minutes on 2 cores)
    python benchmarks/bench_train.py --short     # smoke run (seconds)
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
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
ROWS = {'builtin': "timm built-in ghostnet_100 (train)", 'ours': 'timm-ghost ghostnet_100 (train)'}


def make_models(model_name: str) -> Dict[str, nn.Module]:
    """``{'builtin': timm's built-in, 'ours': timm-ghost}`` in train mode, with the same deterministic weights."""
    import timm
    from timm.models import ghostnet as timm_ghostnet

    import timm_ghost  # noqa: F401  (registers ours)

    torch.manual_seed(0)
    ours = timm.create_model(model_name)
    builtin = getattr(timm_ghostnet, model_name)()
    builtin.load_state_dict(ours.state_dict())
    return {'builtin': builtin.train(), 'ours': ours.train()}


def make_step(model: nn.Module, batch: int, img_size: int) -> Callable[[], float]:
    """A closure running one training step on a fixed random batch; returns the loss."""
    gen = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 3, img_size, img_size, generator=gen)
    y = torch.randint(0, 1000, (batch,), generator=gen)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def _rss_bytes() -> int:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def memory_child(key: str, model_name: str, batch: int, img_size: int, steps: int, threads: int) -> Dict[str, Any]:
    """Run in a fresh process: peak resident memory of ``steps`` training steps of one model."""
    torch.set_num_threads(threads)
    models = make_models(model_name)  # both built, whichever trains: the same allocations before the first step
    step = make_step(models[key], batch, img_size)
    before = _rss_bytes()
    for _ in range(steps):
        step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {'rss_before_mb': round(before / 2**20, 1), 'peak_rss_mb': round(peak / 2**20, 1),
            'peak_mb': round((peak - before) / 2**20, 1)}


def measure_memory(key: str, args: argparse.Namespace, batch: int) -> Dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), '--memory-child', key, '--model', args.model,
           '--img-size', str(args.img_size), '--threads', str(args.threads), '--batch-sizes', str(batch),
           '--memory-steps', str(args.memory_steps)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        raise RuntimeError(f'memory measurement of {key} at batch {batch} failed:\n{res.stderr[-2000:]}')
    return json.loads(res.stdout.strip().splitlines()[-1])


def measure(args: argparse.Namespace, log: Callable[[str], None]) -> List[Dict[str, Any]]:
    results = []
    models = make_models(args.model)
    for batch in args.batch_sizes:
        steps = {key: make_step(m, batch, args.img_size) for key, m in models.items()}
        lat = interleaved_latencies(steps, rounds=args.rounds, round_s=args.round_s, warmup=args.warmup)
        mem = {key: measure_memory(key, args, batch) for key in ROWS}
        base_t = statistics.median(lat['builtin'])
        for key in ROWS:
            p50 = statistics.median(lat[key])
            row = {
                'batch': batch, 'key': key, 'label': ROWS[key],
                'img_per_s': round(batch / p50, 2), 'step_p50_ms': round(p50 * 1e3, 2),
                'step_p90_ms': round(percentile(lat[key], 90) * 1e3, 2), 'steps': len(lat[key]),
                'speed_ratio_to_builtin': round(base_t / p50, 3),
                **mem[key],
                'memory_ratio_to_builtin': round(mem[key]['peak_mb'] / mem['builtin']['peak_mb'], 3),
            }
            results.append(row)
            log(f'batch {batch:3d}  {ROWS[key]:38s} {row["img_per_s"]:8.1f} img/s  step {row["step_p50_ms"]:9.1f} ms '
                f'(x{row["speed_ratio_to_builtin"]:.2f})  peak +{row["peak_mb"]:8.1f} MB '
                f'(x{row["memory_ratio_to_builtin"]:.2f})')
    return results


def plot(data: Dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows, batches = data['results'], data['settings']['batch_sizes']
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, key in enumerate(ROWS):
        vals = {r['batch']: r for r in rows if r['key'] == key}
        xs = [b + (i - 0.5) * 0.4 for b in range(len(batches))]
        axes[0].bar(xs, [vals[b]['img_per_s'] for b in batches], 0.4, label=ROWS[key])
        axes[1].bar(xs, [vals[b]['peak_mb'] for b in batches], 0.4, label=ROWS[key])
    for ax, title in zip(axes, ('training throughput (img/s, higher is better)', 'peak memory of the steps (MB)')):
        ax.set_xticks(range(len(batches)), [f'batch {b}' for b in batches])
        ax.set_title(title)
        ax.grid(axis='y', alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc='lower center', ncol=2, fontsize=8, bbox_to_anchor=(0.5, -0.08))
    m = data['machine']
    fig.suptitle(f'CPU fp32 {data["settings"]["img_size"]} px, {m["threads"]} threads, {m["cpu_model"]}; '
                 f'torch {data["versions"]["torch"]}', fontsize=10)
    save_figure_atomic(fig, path)
    plt.close(fig)


def parse_args(argv: Optional[List[str]] = None) -> Tuple[argparse.Namespace, Optional[str]]:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--short', action='store_true', help='smoke run: batch 2 at 64 px, one step per model and round')
    p.add_argument('--batch-sizes', default='32,64', help='comma-separated (default 32,64)')
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--rounds', type=int, default=5, help='interleaved rounds (default 5)')
    p.add_argument('--round-s', type=float, default=1.0, help='seconds each model trains per round (default 1.0)')
    p.add_argument('--warmup', type=int, default=1, help='untimed steps per model before the rounds (default 1)')
    p.add_argument('--memory-steps', type=int, default=2, help='steps in each memory child process (default 2)')
    p.add_argument('--model', default='ghostnet_100', choices=['ghostnet_050', 'ghostnet_100', 'ghostnet_130'])
    p.add_argument('--out', type=Path, default=RESULTS / 'train.json', help='JSON result (a PNG beside it)')
    p.add_argument('--memory-child', choices=list(ROWS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        args.batch_sizes = parse_int_list(args.batch_sizes, '--batch-sizes')
    except ValueError as e:
        p.error(str(e))
    if args.threads < 1 or args.rounds < 1 or args.img_size < 32 or args.round_s <= 0 or args.memory_steps < 1:
        p.error('--threads, --rounds and --memory-steps must be >= 1, --img-size >= 32, --round-s > 0')
    if args.short:
        args.batch_sizes, args.img_size, args.rounds, args.round_s = [2], 64, 1, 0.01
        args.warmup, args.memory_steps = 1, 1
    return args, args.memory_child


def main(argv: Optional[List[str]] = None) -> int:
    args, child = parse_args(argv)
    logging.getLogger('torch.utils.cpp_extension').setLevel(logging.ERROR)
    if child:
        print(json.dumps(memory_child(child, args.model, args.batch_sizes[0], args.img_size, args.memory_steps,
                                      args.threads)))
        return 0
    torch.set_num_threads(args.threads)
    start = time.time()
    machine = machine_info(args.threads)
    results = measure(args, print)
    data = {
        'kind': 'train', 'schema': 1, 'created': now_iso(), 'short': args.short,
        'machine': machine, 'versions': versions(),
        'settings': {
            'model': args.model, 'img_size': args.img_size, 'batch_sizes': args.batch_sizes, 'dtype': 'float32',
            'input': 'NCHW contiguous float32 tensor', 'threads': args.threads, 'rounds': args.rounds,
            'round_s': args.round_s, 'warmup': args.warmup, 'memory_steps': args.memory_steps,
            'step': 'zero_grad(set_to_none) + forward + cross_entropy + backward + SGD(momentum=0.9).step()',
            'statistic': 'median of per-step wall time over interleaved rounds; memory = peak RSS of a child '
                         'process training one model minus its RSS before the first step',
        },
        'rows': ROWS,
        'results': results,
        'gpu': gpu_section(),
    }
    return finish(data, args.out, start, plot)


if __name__ == '__main__':
    sys.exit(main())
