"""Smoke test of the benchmark scripts' short mode: they run, and write valid JSON, a PNG and the Markdown table.
Nothing about speed is asserted (timings on a shared CI machine mean nothing)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
from helpers import builtin_model
from timm.utils import reparameterize_model

from timm_ghost.models_info import count_macs

BENCH = Path(__file__).resolve().parents[1] / 'benchmarks'
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def _run(script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope='module')
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp('bench')
    # one thread: CI machines are small and shared (a second thread only spins); speed is not asserted
    inf = _run('bench_inference.py', '--short', '--threads', '1', '--out', str(out / 'inference.json'))
    assert inf.returncode == 0, inf.stderr[-3000:]
    train = _run('bench_train.py', '--short', '--threads', '1', '--out', str(out / 'train.json'))
    assert train.returncode == 0, train.stderr[-3000:]
    return out


def _check_png(path: Path) -> None:
    import matplotlib.image
    assert path.read_bytes()[:8] == PNG_MAGIC
    height, width = matplotlib.image.imread(str(path)).shape[:2]
    assert height > 200 and width > 400


def _check_common(data: dict, kind: str) -> None:
    assert data['kind'] == kind and data['short'] is True
    m = data['machine']
    assert m['threads'] == 1 and m['physical_cores'] >= 1 and m['peak_gflops'] > 0
    cpu_flags = set()  # read here independently of the benchmark's own parser
    for line in Path('/proc/cpuinfo').read_text().splitlines():
        if line.startswith('flags'):
            cpu_flags = set(line.split(':', 1)[1].split())
            break
    assert m['flags'] and all(on == (name in cpu_flags) for name, on in m['flags'].items()), m['flags']
    assert {'torch', 'timm', 'onnxruntime', 'python'} <= set(data['versions'])
    assert data['gpu']['results'] == [] and data['gpu']['note']


def test_inference_short_run_writes_every_row(results):
    data = json.loads((results / 'inference.json').read_text())
    _check_common(data, 'inference')
    assert data['settings']['batch_sizes'] == [1] and data['settings']['compile']['backend'] == 'eager'
    rows = {r['key']: r for r in data['results']}
    assert list(rows) == ['builtin', 'eager', 'fold', 'fold_cl', 'deploy', 'deploy_compile', 'onnxruntime',
                          'mobilenetv3']
    for r in rows.values():
        assert r['batch'] == 1 and r['img_per_s'] > 0 and 0 < r['p50_ms'] <= r['p90_ms']
        assert r['gflops'] > 0 and 0 < r['peak_share'] < 1 and r['ratio_to_builtin'] > 0
        assert r['page_fault_mb_per_call'] >= 0
    base = rows['builtin']['p50_ms']
    for r in rows.values():  # each ratio is the built-in's p50 over the row's (both rounded in the JSON: 1 % slack)
        assert r['ratio_to_builtin'] == pytest.approx(base / r['p50_ms'], rel=0.01)
    # each row's MACs are counted on its own module: the folded and split forms do the built-in's multiply-adds
    macs = count_macs(builtin_model('ghostnet_100'), 64)
    assert macs == 15_203_072  # ghostnet_100 at 64 px (141,150,512 at 224 px)
    deploy_macs = count_macs(reparameterize_model(timm.create_model('ghostnet_100')), 64)
    assert rows['builtin']['macs_per_image'] == macs
    assert rows['deploy']['macs_per_image'] == rows['onnxruntime']['macs_per_image'] == deploy_macs
    for key in ('eager', 'fold', 'fold_cl', 'deploy', 'deploy_compile'):
        assert rows[key]['macs_per_image'] == macs, key
    assert rows['mobilenetv3']['macs_per_image'] == count_macs(timm.create_model('mobilenetv3_large_100'), 64)
    # every GhostNet row computes the built-in's function with the same weights
    for key in ('eager', 'fold', 'fold_cl', 'deploy', 'deploy_compile', 'onnxruntime'):
        assert rows[key]['max_abs_diff_to_builtin'] <= 1e-4
    assert rows['mobilenetv3']['max_abs_diff_to_builtin'] is None
    _check_png(results / 'inference.png')


def test_train_short_run_writes_speed_and_memory(results):
    data = json.loads((results / 'train.json').read_text())
    _check_common(data, 'train')
    rows = {r['key']: r for r in data['results']}
    assert list(rows) == ['builtin', 'ours']
    for r in rows.values():
        assert r['batch'] == 2 and r['img_per_s'] > 0 and r['step_p50_ms'] > 0
        assert r['peak_mb'] > 0 and r['peak_rss_mb'] >= r['rss_before_mb']
    b, o = rows['builtin'], rows['ours']  # ratios as the table defines them: speed = p50 over p50, memory = peak
    assert o['speed_ratio_to_builtin'] == pytest.approx(b['step_p50_ms'] / o['step_p50_ms'], abs=1e-3)
    assert o['memory_ratio_to_builtin'] == pytest.approx(o['peak_mb'] / b['peak_mb'], abs=1e-3)
    _check_png(results / 'train.png')


def test_report_renders_both_tables_and_rewrites_between_markers(results, tmp_path):
    args = ('--inference', str(results / 'inference.json'), '--train', str(results / 'train.json'))
    res = _run('report.py', *args)
    assert res.returncode == 0, res.stderr
    table = res.stdout
    assert table.count('\n| 1 | ') == 8 and table.count('\n| 2 | ') == 2
    assert 'short smoke run' in table and '| batch | model | img/s | p50 ms | p90 ms | vs built-in |' in table
    doc = tmp_path / 'README.md'
    doc.write_text('# t\n<!-- benchmark-tables:start -->\nstale table\n<!-- benchmark-tables:end -->\nafter\n')
    doc.chmod(0o644)
    assert _run('report.py', *args, '--write', str(doc)).returncode == 0
    text = doc.read_text()
    assert 'stale table' not in text and text.startswith('# t\n')
    assert text.endswith('<!-- benchmark-tables:end -->\nafter\n')
    assert table in text
    assert doc.stat().st_mode & 0o777 == 0o644  # the file keeps its mode
    # the README's summary: the deploy row's ratios at the smallest and largest batch, from the same JSON
    readme = tmp_path / 'README.md.summary'
    readme.write_text('x\n<!-- benchmark-summary:start -->\n<!-- benchmark-summary:end -->\ny\n')
    assert _run('report.py', *args, '--summary', str(readme)).returncode == 0
    deploy = next(r for r in json.loads((results / 'inference.json').read_text())['results'] if r['key'] == 'deploy')
    assert f'| {deploy["label"]} | {deploy["ratio_to_builtin"]:.2f}x | {deploy["ratio_to_builtin"]:.2f}x |' \
        in readme.read_text()


def test_report_errors_name_the_file(tmp_path):
    missing = tmp_path / 'nope.json'
    res = _run('report.py', '--inference', str(missing), '--train', str(missing))
    assert res.returncode == 1 and f'{missing}: no such benchmark result' in res.stderr
    wrong = tmp_path / 'wrong.json'
    wrong.write_text('{"kind": "train", "results": []}')
    res = _run('report.py', '--inference', str(wrong), '--train', str(wrong))
    assert res.returncode == 1 and f'{wrong}: expected the JSON of bench_inference.py' in res.stderr


def test_bad_arguments_are_refused_with_the_parameter_named():
    res = _run('bench_inference.py', '--batch-sizes', '1,x')
    assert res.returncode == 2 and '--batch-sizes: expected comma-separated positive integers' in res.stderr
    res = _run('bench_inference.py', '--rows', 'deploy')
    assert res.returncode == 2 and '--rows' in res.stderr
    res = _run('bench_train.py', '--batch-sizes', '0')
    assert res.returncode == 2 and '--batch-sizes' in res.stderr


def _between(path: Path, markers: tuple) -> str:
    start, end = markers
    doc = path.read_text()
    assert doc.count(start) == 1 and doc.count(end) == 1, path
    return doc.split(f'{start}\n', 1)[1].split(end, 1)[0]


def test_committed_tables_are_report_py_output_of_the_committed_json():
    """README.md's summary, docs/benchmarks.md's and docs/export.md's tables are exactly what report.py renders from
    benchmarks/results/*.json: a hand-edited figure, or a JSON re-run without regenerating the docs, fails here."""
    sys.path.insert(0, str(BENCH))
    try:
        import report
    finally:
        sys.path.remove(str(BENCH))
    root, results = BENCH.parent, BENCH / 'results'
    inference = report.load(results / 'inference.json', 'inference')
    train = report.load(results / 'train.json', 'train')
    export = report.load(results / 'export.json', 'export')
    digits = report.load(results / 'export_digits.json', 'export_digits')
    assert _between(root / 'README.md', report.SUMMARY_MARKERS) == report.summary(inference, train, export)
    assert _between(root / 'docs' / 'benchmarks.md', report.MARKERS) == report.render(inference, train)
    assert _between(root / 'docs' / 'export.md', report.EXPORT_MARKERS) == report.export_tables(export, digits)
