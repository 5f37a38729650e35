"""Markdown performance tables from the benchmark JSON files (the README's table is this script's output).

    python benchmarks/report.py                                  # print the tables
    python benchmarks/report.py --write README.md                # replace the text between the markers below

Markers: ``<!-- benchmark-tables:start -->`` and ``<!-- benchmark-tables:end -->``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

RESULTS = Path(__file__).resolve().parent / 'results'
START, END = '<!-- benchmark-tables:start -->', '<!-- benchmark-tables:end -->'


def load(path: Path, kind: str) -> Dict[str, Any]:
    """The JSON written by ``bench_{kind}.py``; a clear error naming the file otherwise."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f'{path}: no such benchmark result (run benchmarks/bench_{kind}.py first)') from None
    except json.JSONDecodeError as e:
        raise ValueError(f'{path}: not valid JSON ({e})') from None
    if not isinstance(data, dict) or data.get('kind') != kind or not isinstance(data.get('results'), list):
        raise ValueError(f'{path}: expected the JSON of bench_{kind}.py (kind={kind!r} with a results list)')
    return data


def _machine_line(data: Dict[str, Any]) -> str:
    m, v, s = data['machine'], data['versions'], data['settings']
    flags = ', '.join(k for k, on in m['flags'].items() if on) or 'none of avx2/avx512/amx'
    short = ' **(short smoke run: not a measurement)**' if data.get('short') else ''
    load = ''
    if 'loadavg_at_start' in m and 'loadavg_at_end' in m:
        load = f', 1-min load average {m["loadavg_at_start"][0]:g} -> {m["loadavg_at_end"][0]:g}'
    return (f'{m["cpu_model"]}, {m["physical_cores"]} cores ({flags}), {s["threads"]} threads, fp32, '
            f'{s["img_size"]} px; torch {v["torch"]}, timm {v["timm"]}, onnxruntime {v.get("onnxruntime", "-")}; '
            f'{data["created"][:10]}{load}{short}')


def inference_table(data: Dict[str, Any]) -> str:
    peak = data['machine']['peak_gflops']
    lines = [
        f'CPU inference: {_machine_line(data)}. Peak estimate {peak:g} GFLOP/s ({data["machine"]["peak_method"]}).',
        '',
        '| batch | model | img/s | p50 ms | p90 ms | vs built-in | GFLOP/s | % of peak | MB faulted in / call |',
        '|---:|---|---:|---:|---:|---:|---:|---:|---:|',
    ]
    for r in data['results']:
        ratio = f'{r["ratio_to_builtin"]:.2f}x' if r.get('ratio_to_builtin') else '-'
        share = f'{100 * r["peak_share"]:.1f}' if r.get('peak_share') is not None else '-'
        faults = r.get('page_fault_mb_per_call')
        lines.append(f'| {r["batch"]} | {r["label"]} | {r["img_per_s"]:.1f} | {r["p50_ms"]:.2f} | {r["p90_ms"]:.2f} '
                     f'| {ratio} | {r["gflops"]:.1f} | {share} | {"-" if faults is None else f"{faults:g}"} |')
    return '\n'.join(lines)


def train_table(data: Dict[str, Any]) -> str:
    lines = [
        f'CPU training step: {_machine_line(data)}.',
        '',
        '| batch | model | img/s | step p50 ms | speed vs built-in | peak MB | memory vs built-in |',
        '|---:|---|---:|---:|---:|---:|---:|',
    ]
    for r in data['results']:
        lines.append(f'| {r["batch"]} | {r["label"]} | {r["img_per_s"]:.1f} | {r["step_p50_ms"]:.1f} '
                     f'| {r["speed_ratio_to_builtin"]:.2f}x | {r["peak_mb"]:.0f} '
                     f'| {r["memory_ratio_to_builtin"]:.2f}x |')
    return '\n'.join(lines)


def render(inference: Optional[Dict[str, Any]], train: Optional[Dict[str, Any]]) -> str:
    parts: List[str] = []
    if inference is not None:
        parts.append(inference_table(inference))
    if train is not None:
        parts.append(train_table(train))
    gpu = (inference or train or {}).get('gpu')
    if gpu and not gpu.get('results'):
        parts.append(f'GPU: {gpu["note"]}')
    return '\n\n'.join(parts) + '\n'


def write_between_markers(path: Path, text: str) -> None:
    """Replace what lies between the START and END markers of ``path`` with ``text`` (atomically)."""
    doc = path.read_text()
    if doc.count(START) != 1 or doc.count(END) != 1 or doc.index(START) > doc.index(END):
        raise ValueError(f'{path}: expected one {START} line followed by one {END} line')
    head, rest = doc.split(START)
    _, tail = rest.split(END)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'w') as f:
            f.write(f'{head}{START}\n{text}{END}{tail}')
        shutil.copymode(path, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--inference', type=Path, default=RESULTS / 'inference.json')
    p.add_argument('--train', type=Path, default=RESULTS / 'train.json')
    p.add_argument('--write', type=Path, help=f'Markdown file whose {START} ... {END} section is replaced')
    args = p.parse_args(argv)
    try:
        text = render(load(args.inference, 'inference'), load(args.train, 'train'))
        if args.write:
            write_between_markers(args.write, text)
    except (OSError, ValueError) as e:
        print(f'report.py: error: {e}', file=sys.stderr)
        return 1
    print(text, end='')
    return 0


if __name__ == '__main__':
    sys.exit(main())
