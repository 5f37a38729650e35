"""Markdown performance tables from the benchmark JSON files: the full tables of docs/benchmarks.md and the short
summary in README.md are this script's output.

    python benchmarks/report.py                                  # print the tables
    python benchmarks/report.py --write docs/benchmarks.md --summary README.md --export-doc docs/export.md \
        --peers-doc docs/benchmarks.md

Markers: ``<!-- benchmark-tables:start -->`` / ``<!-- benchmark-tables:end -->`` for the tables,
``<!-- benchmark-summary:start -->`` / ``<!-- benchmark-summary:end -->`` for the summary; from bench_peers.py's
``results/peers.json``, ``<!-- peers-tables:start -->`` / ``<!-- peers-tables:end -->`` for its tables and
``<!-- forms-tables:start -->`` / ``<!-- forms-tables:end -->`` (in the --export-doc file, from bench_forms.py's
``results/forms.json``) for the export forms' table; ``<!-- peers-summary:start -->`` / ``<!-- peers-summary:end -->``
for the README's one line (written with --summary
where the file has these markers).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from timm_ghost._io import atomic_output_file

RESULTS = Path(__file__).resolve().parent / 'results'
START, END = '<!-- benchmark-tables:start -->', '<!-- benchmark-tables:end -->'
MARKERS = (START, END)
SUMMARY_MARKERS = ('<!-- benchmark-summary:start -->', '<!-- benchmark-summary:end -->')
EXPORT_MARKERS = ('<!-- export-tables:start -->', '<!-- export-tables:end -->')
PEERS_MARKERS = ('<!-- peers-tables:start -->', '<!-- peers-tables:end -->')
PEERS_SUMMARY_MARKERS = ('<!-- peers-summary:start -->', '<!-- peers-summary:end -->')
FORMS_MARKERS = ('<!-- forms-tables:start -->', '<!-- forms-tables:end -->')
NATIVE_MARKERS = ('<!-- native-tables:start -->', '<!-- native-tables:end -->')


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
    compiles = [f'batch {r["batch"]} {r["compile_s"]:.1f} s' for r in data['results'] if r.get('compile_s')]
    if compiles:
        lines += ['', f'inference_model compile time on the first call (untimed above): {", ".join(compiles)}.']
    goals = data.get('goals') or []
    if goals:
        lines += ['', 'PyTorch-native goal, inference_model / ONNX Runtime fp32 export (same run): ' + '; '.join(
            f'batch {g["batch"]}: {g["ratio"]:.2f}x' + (
                f' (goal {g["goal"]}x, {"met" if g["met"] else "missed"})' if g['goal'] is not None else '')
            for g in goals) + '.']
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
    return '\n\n'.join(parts) + '\n'


def summary(inference: Dict[str, Any], train: Dict[str, Any], export: Optional[Dict[str, Any]] = None) -> str:
    """The README's short table: ratios to timm's built-in at the smallest and largest batch, the training step, and
    (from bench_export.py) the runtimes on the export of our deploy model."""
    rows = {(r['key'], r['batch']): r for r in inference['results']}
    batches = sorted({r['batch'] for r in inference['results']})
    lo, hi = batches[0], batches[-1]
    m = inference['machine']
    lines = [
        f'ghostnet_100 on {m["cpu_model"]}, {inference["settings"]["threads"]} threads, fp32, '
        f'{inference["settings"]["img_size"]} px, {inference["created"][:10]}; speed relative to timm\'s built-in '
        f'ghostnet_100 measured side by side in the same run:',
        '',
        f'| | batch {lo} | batch {hi} |',
        '|---|---:|---:|',
    ]
    for key in ('eager', 'deploy', 'deploy_compile', 'inference_model', 'onnxruntime_export'):
        if (key, lo) in rows and (key, hi) in rows:
            lines.append(f'| {rows[key, lo]["label"]} | {rows[key, lo]["ratio_to_builtin"]:.2f}x '
                         f'| {rows[key, hi]["ratio_to_builtin"]:.2f}x |')
    goals = {g['batch']: g for g in inference.get('goals', [])}
    if lo in goals and hi in goals:
        lines.append(f'| inference_model / ONNX Runtime export (goal {goals[lo]["goal"]}x / {goals[hi]["goal"]}x) '
                     f'| {goals[lo]["ratio"]:.2f}x | {goals[hi]["ratio"]:.2f}x |')
    for r in train['results']:
        if r['key'] != 'builtin':
            lines.append(f'| training step (batch {r["batch"]}): speed / peak memory | '
                         f'{r["speed_ratio_to_builtin"]:.2f}x / {r["memory_ratio_to_builtin"]:.2f}x | |')
    if export is not None:
        rows = {(r['key'], r['batch']): r for r in export['results']}
        keys = [r['key'] for r in export['results'] if r['form'] == 'deploy' and r['kind'] == 'export']
        lines += ['', f'Exports of the deploy model (`timm-ghost export`), measured by bench_export.py in its own run '
                      f'({export["created"][:10]}) against timm\'s built-in ghostnet_100 in eager PyTorch:', '',
                  f'| runtime, precision | batch {lo} | batch {hi} |', '|---|---:|---:|']
        for key in dict.fromkeys(keys):
            if (key, lo) in rows and (key, hi) in rows:
                label = rows[key, lo]['label'].replace(', timm-ghost deploy', '')
                lines.append(f'| {label} | {rows[key, lo]["ratio_to_builtin_eager"]:.2f}x '
                             f'| {rows[key, hi]["ratio_to_builtin_eager"]:.2f}x |')
    return '\n'.join(lines) + '\n'


def export_tables(speed: Dict[str, Any], digits: Optional[Dict[str, Any]]) -> str:
    """docs/export.md's tables: every export route's speed (bench_export.py) and the digits int8 accuracy."""
    m, v, s = speed['machine'], speed['versions'], speed['settings']
    short = ' **(short smoke run: not a measurement)**' if speed.get('short') else ''
    lines = [
        f'{s["model"]}, {s["img_size"]} px, {s["threads"]} threads on {m["cpu_model"]} ({m["physical_cores"]} cores, '
        f'{", ".join(k for k, on in m["flags"].items() if on)}); torch {v["torch"]}, onnxruntime {v["onnxruntime"]}, '
        f'openvino {v["openvino"]}, nncf {v["nncf"]}, executorch {v["executorch"]}; {speed["created"][:10]}, 1-min '
        f'load average {m["loadavg_at_start"][0]:g} -> {m.get("loadavg_at_end", ["?"])[0]}{short}. Int8 calibrated '
        f'on {s["calib_size"]} digits images; random weights (the same in both models).',
        '',
        '| batch | route | precision | img/s | p50 ms | vs built-in eager | top-1 = built-in eager |',
        '|---:|---|---|---:|---:|---:|---:|',
    ]
    for r in speed['results']:
        lines.append(f'| {r["batch"]} | {r["label"]} | {r["precision"]} | {r["img_per_s"]:.1f} | {r["p50_ms"]:.2f} '
                     f'| {r["ratio_to_builtin_eager"]:.2f}x | {100 * r["top1_agreement_with_builtin_eager"]:.0f} % |')
    goals = speed['summary']
    lines += ['', '| batch | fastest int8 route | fastest fp32 route | int8 / fp32 (goal >= 1.3x) |',
              '|---:|---|---|---:|']
    lines += [f'| {g["batch"]} | {g["fastest_int8"]} | {g["fastest_fp32"]} | {g["ratio"]:.2f}x |'
              for g in goals['int8_vs_fp32']]
    lines += ['', '| batch | runtime | precision | deploy export / built-in export (goal >= 1.0x) |',
              '|---:|---|---|---:|']
    lines += [f'| {g["batch"]} | {g["format"]} | {g["precision"]} | {g["ratio"]:.2f}x |'
              for g in goals['deploy_vs_builtin_export']]
    if digits is not None:
        lines += ['', f'Digits validation top-1 ({digits["val_images"]} images; int8 calibrated on '
                      f'{digits["calib_images"]} images of the training split; {digits["created"][:10]}):', '',
                  '| route | precision | top-1 % | drop vs eager (points) | top-1 agreement with fp32 (held-out) |',
                  '|---|---|---:|---:|---:|']
        for r in digits['results']:
            agree = r.get('heldout_top1_agreement')
            lines.append(f'| {r["route"]} | {r["precision"]} | {r["top1"]:.2f} | {r.get("drop_vs_eager", 0):.2f} '
                         f'| {"-" if agree is None else f"{100 * agree:.1f} %"} |')
    return '\n'.join(lines) + '\n'


def _cell(value: Optional[float], fmt: str = '.1f') -> str:
    return '-' if value is None else format(value, fmt)


def peers_goal_lines(summary: Dict[str, Any], labels: Dict[str, str]) -> List[str]:
    """bench_peers.py's goals, one line each: the ratio measured in the run and whether it is met."""
    lines = []
    for key in ('export_vs_baseline', 'ghostnet_100_vs_mobilenetv3_large_100', 'int8_vs_fp32'):
        for g in summary[key]:
            state = 'not measured' if g['met'] is None else 'met' if g['met'] else 'missed'
            ratio = '-' if g['ratio'] is None else f'{g["ratio"]:.2f}x'
            lines.append(f'{g["goal"]}: {ratio} ({state})')
    for g in summary['fastest_at_79']:
        where = f'{labels[g["format"]]} {g["precision"]} batch {g["batch"]}'
        if g['fastest'] is None:
            lines.append(f'{where}: no model at >= {g["min_top1"]:g} % top-1 in this run (not measured)')
            continue
        margin = f', {g["margin"]:.2f}x the next, {g["next"]}' if g['next'] else ', the only one at this level'
        state = 'not measured' if g['met'] is None else 'met' if g['met'] else 'missed'
        lines.append(f'{where}: fastest at >= {g["min_top1"]:g} % top-1 is {g["fastest"]} ({g["img_per_s"]:.1f} '
                     f'img/s{margin}) (goal {g["target"]}: {state})')
    return lines


def peers_tables(data: Dict[str, Any]) -> str:
    """The peers tables (bench_peers.py): per runtime, images/s of every model at each precision and batch, sorted
    by published top-1; then the goals and the top-1 sources."""
    m, v, s = data['machine'], data['versions'], data['settings']
    labels, models = s['format_labels'], data['models']
    short = ' **(short smoke run: not a measurement)**' if data.get('short') else ''
    flags = ', '.join(k for k, on in m['flags'].items() if on) or 'none of avx2/avx512/amx'
    lines = [
        f'{s["img_size"]} px, {s["threads"]} threads on {m["cpu_model"]} ({m["physical_cores"]} cores, {flags}); '
        f'torch {v["torch"]}, timm {v["timm"]}, onnxruntime {v.get("onnxruntime", "-")}, openvino '
        f'{v.get("openvino", "-")}, executorch {v.get("executorch", "-")}; {data["created"][:10]}, 1-min load average '
        f'{m["loadavg_at_start"][0]:g} -> {m.get("loadavg_at_end", ["?"])[0]}{short}. Images/s (batch / median call, '
        f'all models of a column timed in interleaved rounds); random weights (the speed does not depend on them); '
        f'top-1: the publisher\'s ImageNet-1k figure at 224 px (sources below); int8: each runtime\'s own quantizer, '
        f'calibrated on {s["calib_size"]} digits images. MACs per image at {s["img_size"]} px.',
    ]
    results = data['results']
    for fmt in dict.fromkeys(r['format'] for r in results):
        rs = [r for r in results if r['format'] == fmt]
        cols = [(p, b) for p in ('fp32', 'int8') for b in s['batch_sizes']
                if any(r['precision'] == p and r['batch'] == b for r in rs)]
        speed = {(r['key'], r['precision'], r['batch']): r['img_per_s'] for r in rs}
        rows = sorted({r['key']: r for r in rs}.values(), key=lambda r: (r['top1'], r['route'] == 'baseline'))
        lines += ['', f'{labels[fmt]}, images/s:', '',
                  '| model | top-1 | MACs | ' + ' | '.join(f'{p} b{b}' for p, b in cols) + ' |',
                  '|---|---:|---:|' + '---:|' * len(cols)]
        for r in rows:
            macs = models[r['model']]['macs']
            cells = ' | '.join(_cell(speed.get((r['key'], p, b))) for p, b in cols)
            lines.append(f'| {r["label"]} | {r["top1"]:.1f} | {macs / 1e6:.0f} M | {cells} |')
    if data.get('failures'):
        lines += ['', 'Exports that failed (left out of the tables above):', '']
        lines += [f'- {labels[f["format"]]} {f["precision"]} {f["key"]}: {f["error"]}' for f in data['failures']]
    lines += ['', 'Goals, each a ratio measured in this run:', '']
    lines += [f'- {line}' for line in peers_goal_lines(data['summary'], labels)]
    lines += ['', 'Top-1 sources:', '']
    for name, info in models.items():
        note = f' ({info["note"]})' if info.get('note') else ''
        lines.append(f'- {name}.{info["tag"]}: {info["top1"]:g}, {info["source"]}{note}')
    return '\n'.join(lines) + '\n'


def peers_summary(data: Dict[str, Any]) -> str:
    """The README's one line from bench_peers.py: the models on the Pareto front (fastest for their top-1) in the
    first runtime measured (ONNX Runtime unless skipped), fp32, at the smallest batch."""
    s, m = data['settings'], data['machine']
    fmt = next(f for f in ('onnx', 'openvino', 'executorch') if any(r['format'] == f for r in data['results']))
    batch = min(s['batch_sizes'])
    rs = [r for r in data['results'] if (r['format'], r['precision'], r['batch']) == (fmt, 'fp32', batch)]
    front = sorted((r for r in rs if r['on_front']), key=lambda r: -r['top1'])
    ghosts = [r['model'] for r in rs if r['route'] == 'export' and r['model'].startswith('ghostnet_')
              and not r['on_front']]
    short = '; short smoke run: not a measurement' if data.get('short') else ''
    off = f'; not on it: {", ".join(ghosts)}' if ghosts else ''
    return (f'Fastest for its published ImageNet top-1 on {m["cpu_model"]}, {s["threads"]} threads, '
            f'{s["format_labels"][fmt]} fp32, batch {batch}, {s["img_size"]} px ({data["created"][:10]}, '
            f'benchmarks/bench_peers.py{short}): '
            + ', '.join(f'{r["model"]} ({r["top1"]:.1f} %, {r["img_per_s"]:.0f} img/s)' for r in front)
            + f'{off}.\n')


def forms_table(data: Dict[str, Any]) -> str:
    """bench_forms.py's table: images/s of every export form per runtime and batch, with its ratio to the legacy-ONNX
    baseline in the same runtime (ONNX Runtime rows also against the baseline without spinning), and the node count
    ONNX Runtime runs."""
    s, m = data['settings'], data['machine']
    short = ' **(short smoke run: not a measurement)**' if data.get('short') else ''
    load = f', 1-min load average {m["loadavg_at_start"][0]:g} -> {m["loadavg_at_end"][0]:g}' if 'loadavg_at_end' in m \
        else ''
    runtimes = {'onnxruntime': 'ONNX Runtime', 'onnxruntime_nospin': 'ONNX Runtime, spinning off',
                'openvino': 'OpenVINO (f32)'}
    lines = [
        f'{s["model"]}, {m["cpu_model"]}, {s["threads"]} threads, {s["img_size"]} px, random weights; '
        f'{data["created"][:10]}{load}{short}. Ratio: the baseline\'s p50 over the row\'s, same runtime and batch '
        '(in brackets, ONNX Runtime rows against the baseline with spinning off); int8 rows also against the fp32 form '
        'the runtime\'s exports ship (ONNX Runtime: padded16, OpenVINO: export). Nodes: what ONNX Runtime runs after '
        'its graph optimisations.',
        '',
        '| batch | runtime | form | img/s | vs baseline | nodes |',
        '|---:|---|---|---:|---:|---:|',
    ]
    for r in data['results']:
        if 'error' in r:
            lines.append(f'| {r["batch"]} | {runtimes.get(r["runtime"], r["runtime"])} | {r["form"]} | - | '
                         f'failed: {r["error"][:80]} | |')
            continue
        ratio = f'{r["vs_baseline"]:.2f}x'
        if r.get('vs_baseline_no_spinning'):
            ratio += f' ({r["vs_baseline_no_spinning"]:.2f}x)'
        if r.get('vs_shipped_fp32'):
            ratio += f'; {r["vs_shipped_fp32"]:.2f}x its fp32'
        nodes = data['ort_nodes'].get(r['form'], {}).get('total', '') if r['runtime'].startswith('onnx') else ''
        lines.append(f'| {r["batch"]} | {runtimes.get(r["runtime"], r["runtime"])} | {r["form"]} | '
                     f'{r["images_per_s"]:.0f} | {ratio} | {nodes} |')
    return '\n'.join(lines) + '\n'


def native_tables(inference: Dict[str, Any], compiled: Optional[Dict[str, Any]]) -> str:
    """docs/deploy.md's section on ``inference_model``: the goal against the ONNX Runtime export (bench_inference.py)
    and the inductor options side by side (bench_compile.py)."""
    rows = {(r['key'], r['batch']): r for r in inference['results']}
    lines = [f'`benchmarks/bench_inference.py`: {_machine_line(inference)}.', '',
             '| batch | timm built-in, eager | deploy, eager | inference_model | ONNX Runtime export '
             '| inference_model / ONNX Runtime | goal |',
             '|---:|---:|---:|---:|---:|---:|---|']
    for g in inference.get('goals') or []:
        b = g['batch']
        cells = [f'{rows[k, b]["img_per_s"]:.0f}' if (k, b) in rows else '-'
                 for k in ('builtin', 'deploy', 'inference_model', 'onnxruntime_export')]
        goal = '-' if g['goal'] is None else f'{g["goal"]}x, {"met" if g["met"] else "missed"}'
        lines.append(f'| {b} | ' + ' | '.join(cells) + f' | {g["ratio"]:.2f}x | {goal} |')
    lines.append('')
    lines.append('(img/s; every column timed in the same interleaved rounds.)')
    prof = (inference.get('profiles') or {}).get('inference_model')
    if prof:
        groups, onednn = prof['by_group'], prof['onednn']
        conv = groups.get('oneDNN convolution (PyTorch op)', {'events': 0, 'ms_per_call': 0.0})
        wrapper = groups.get('graph call (Python wrapper)', {'ms_per_call': 0.0})
        kernels = groups.get('inductor C++ kernels', {'events': 0, 'ms_per_call': 0.0})
        ort = inference['profiles'].get('onnxruntime_export')
        ort_conv = next((t for t in ort['by_type'] if t['type'] == 'Conv'), None) if ort else None
        lines += ['', f'Where batch 1\'s time goes (`--profile`: the same options with inductor\'s Python wrapper and '
                      f'kernel profiling on, so every call shows; profilers slow both sides): '
                      f'{prof["ms_per_call"]:.1f} ms per call, of which {conv["events"]} oneDNN convolutions as '
                      f'PyTorch ops {conv["ms_per_call"]:.1f} ms, their oneDNN primitives executing '
                      f'{onednn["ms_per_call"]:.1f} ms of it (`ONEDNN_VERBOSE`), the graph\'s Python wrapper '
                      f'{wrapper["ms_per_call"]:.1f} ms (the C++ wrapper removes most of it), {kernels["events"]} '
                      f'generated C++ kernels {kernels["ms_per_call"]:.1f} ms.'
                      + (f' ONNX Runtime\'s profile of the export: {ort["ms_per_call"]:.1f} ms per call, '
                         f'{ort_conv["nodes"]} Conv nodes {ort_conv["ms_per_call"]:.1f} ms.' if ort_conv else '')]
    if compiled is not None:
        s = compiled['settings']
        lines += ['', f'`benchmarks/bench_compile.py`, inductor options of inference_model, {s["model"]}: '
                      f'{_machine_line(compiled)}.', '',
                  f'| batch | options | img/s | p50 ms | vs {s["reference"]} | first call s (cold cache) |',
                  '|---:|---|---:|---:|---:|---:|']
        for r in compiled['results']:
            lines.append(f'| {r["batch"]} | {r["variant"]} | {r["img_per_s"]:.1f} | {r["p50_ms"]:.2f} '
                         f'| {r["vs_" + s["reference"].replace(" ", "_")]:.3f}x | {r["compile_s"]:.1f} |')
        cache = compiled.get('cache')
        if cache:
            cold = next((r['compile_s'] for r in compiled['results']
                         if r['batch'] == cache['batch'] and r['options'] == cache['options']), None)
            lines += ['', f'First call at batch {cache["batch"]} with the options '
                          f'({", ".join(f"{k}={v}" for k, v in cache["options"].items())}): '
                          + (f'{cold:.1f} s into an empty inductor cache, ' if cold is not None else '')
                          + f'{cache["second_process_s"]:.1f} s in a second process reading that cache.']
    return '\n'.join(lines) + '\n'


def write_between_markers(path: Path, text: str, markers: Tuple[str, str] = MARKERS) -> None:
    """Replace what lies between the two ``markers`` lines of ``path`` with ``text`` (atomically, mode kept)."""
    start, end = markers
    doc = path.read_text()
    if doc.count(start) != 1 or doc.count(end) != 1 or doc.index(start) > doc.index(end):
        raise ValueError(f'{path}: expected one {start} line followed by one {end} line')
    head, rest = doc.split(start)
    _, tail = rest.split(end)
    with atomic_output_file(path, keep_mode=True) as tmp:
        tmp.write_text(f'{head}{start}\n{text}{end}{tail}')


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--inference', type=Path, default=RESULTS / 'inference.json')
    p.add_argument('--train', type=Path, default=RESULTS / 'train.json')
    p.add_argument('--write', type=Path, help=f'Markdown file whose {START} ... {END} section gets the tables')
    p.add_argument('--summary', type=Path,
                   help=f'Markdown file whose {SUMMARY_MARKERS[0]} ... {SUMMARY_MARKERS[1]} section gets the summary')
    p.add_argument('--export-doc', type=Path,
                   help=f'Markdown file whose {EXPORT_MARKERS[0]} ... {EXPORT_MARKERS[1]} section gets the export '
                        'tables (from results/export.json and results/export_digits.json)')
    p.add_argument('--peers', type=Path, default=RESULTS / 'peers.json',
                   help='bench_peers.py\'s JSON (default results/peers.json); with --summary, its one line goes '
                        f'between {PEERS_SUMMARY_MARKERS[0]} ... {PEERS_SUMMARY_MARKERS[1]} where the file has them')
    p.add_argument('--peers-doc', type=Path,
                   help=f'Markdown file whose {PEERS_MARKERS[0]} ... {PEERS_MARKERS[1]} section gets the peers tables')
    p.add_argument('--deploy-doc', type=Path,
                   help=f'Markdown file whose {NATIVE_MARKERS[0]} ... {NATIVE_MARKERS[1]} section gets '
                        "inference_model's goal and inductor-options tables (results/inference.json, compile.json)")
    args = p.parse_args(argv)
    try:
        inference, train = load(args.inference, 'inference'), load(args.train, 'train')
        export = load(RESULTS / 'export.json', 'export') if (RESULTS / 'export.json').exists() else None
        peers = load(args.peers, 'peers') if args.peers.exists() else None
        text = render(inference, train)
        if args.write:
            write_between_markers(args.write, text)
        if args.summary:
            write_between_markers(args.summary, summary(inference, train, export), SUMMARY_MARKERS)
            if peers is not None:
                if PEERS_SUMMARY_MARKERS[0] in args.summary.read_text():
                    write_between_markers(args.summary, peers_summary(peers), PEERS_SUMMARY_MARKERS)
                else:
                    print(f'report.py: {args.summary} has no {PEERS_SUMMARY_MARKERS[0]} line: the peers summary is '
                          'not written', file=sys.stderr)
        if args.export_doc:
            if export is None:
                raise FileNotFoundError(f'{RESULTS / "export.json"}: no such benchmark result (run '
                                        f'benchmarks/bench_export.py first)')
            digits = RESULTS / 'export_digits.json'
            export_text = export_tables(export, load(digits, 'export_digits') if digits.exists() else None)
            write_between_markers(args.export_doc, export_text, EXPORT_MARKERS)
            text += '\n' + export_text
            forms = RESULTS / 'forms.json'
            if forms.exists() and FORMS_MARKERS[0] in args.export_doc.read_text():
                forms_text = forms_table(load(forms, 'forms'))
                write_between_markers(args.export_doc, forms_text, FORMS_MARKERS)
                text += '\n' + forms_text
        if args.deploy_doc:
            compiled = RESULTS / 'compile.json'
            native_text = native_tables(inference, load(compiled, 'compile') if compiled.exists() else None)
            write_between_markers(args.deploy_doc, native_text, NATIVE_MARKERS)
            text += '\n' + native_text
        if args.peers_doc:
            if peers is None:
                raise FileNotFoundError(f'{args.peers}: no such benchmark result (run benchmarks/bench_peers.py first)')
            peers_text = peers_tables(peers)
            write_between_markers(args.peers_doc, peers_text, PEERS_MARKERS)
            text += '\n' + peers_text
    except (OSError, ValueError) as e:
        print(f'report.py: error: {e}', file=sys.stderr)
        return 1
    print(text, end='')
    return 0


if __name__ == '__main__':
    sys.exit(main())
