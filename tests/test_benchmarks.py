"""Smoke test of the benchmark scripts' short mode: they run, and write valid JSON, a PNG and the Markdown table.
Nothing about speed is asserted (timings on a shared CI machine mean nothing)."""
from __future__ import annotations

import json
import runpy
import shutil
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


def _refused(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, script: str, *args: str) -> tuple:
    """``(exit status, stderr)`` of a benchmark's command line that its parser refuses, run in this process: the
    parser exits before any benchmark runs, so each case skips an interpreter start and its torch import."""
    monkeypatch.setattr(sys, 'argv', [script, *args])
    monkeypatch.syspath_prepend(str(BENCH))
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(BENCH / script), run_name='__main__')
    return e.value.code, capsys.readouterr().err


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
    assert list(rows) == ['builtin', 'eager', 'fold', 'fold_cl', 'deploy', 'deploy_compile', 'inference_model',
                          'onnxruntime', 'onnxruntime_export', 'mobilenetv3']
    assert rows['inference_model']['backend'] == 'eager'  # --short: not compiled (the slow tests compile)
    goals = data['goals']
    assert [(g['batch'], g['goal']) for g in goals] == [(1, 0.8)]
    assert goals[0]['ratio'] == pytest.approx(rows['onnxruntime_export']['p50_ms'] / rows['inference_model']['p50_ms'],
                                              rel=0.01)
    assert goals[0]['met'] == (goals[0]['ratio'] >= 0.8)
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
    assert rows['inference_model']['macs_per_image'] == rows['onnxruntime_export']['macs_per_image'] == deploy_macs
    for key in ('eager', 'fold', 'fold_cl', 'deploy', 'deploy_compile'):
        assert rows[key]['macs_per_image'] == macs, key
    assert rows['mobilenetv3']['macs_per_image'] == count_macs(timm.create_model('mobilenetv3_large_100'), 64)
    # every GhostNet row computes the built-in's function with the same weights
    for key in ('eager', 'fold', 'fold_cl', 'deploy', 'deploy_compile', 'inference_model', 'onnxruntime',
                'onnxruntime_export'):
        assert rows[key]['max_abs_diff_to_builtin'] <= 1e-4, key
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
    assert table.count('\n| 1 | ') == 10 and table.count('\n| 2 | ') == 2
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


def test_bad_arguments_are_refused_with_the_parameter_named(monkeypatch, capsys):
    code, err = _refused(monkeypatch, capsys, 'bench_inference.py', '--batch-sizes', '1,x')
    assert code == 2 and '--batch-sizes: expected comma-separated positive integers' in err
    code, err = _refused(monkeypatch, capsys, 'bench_inference.py', '--rows', 'deploy')
    assert code == 2 and '--rows' in err
    code, err = _refused(monkeypatch, capsys, 'bench_train.py', '--batch-sizes', '0')
    assert code == 2 and '--batch-sizes' in err


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
    # bench_peers.py's tables and README line, once its full run is committed and the docs carry the markers
    if (results / 'peers.json').exists():
        peers = report.load(results / 'peers.json', 'peers')
        assert not peers['short'], 'results/peers.json is a --short smoke run'
        for path, markers, text in ((root / 'docs' / 'benchmarks.md', report.PEERS_MARKERS, report.peers_tables),
                                    (root / 'README.md', report.PEERS_SUMMARY_MARKERS, report.peers_summary)):
            if markers[0] in path.read_text():
                assert _between(path, markers) == text(peers), path
    # bench_forms.py's table in docs/export.md
    forms = report.load(results / 'forms.json', 'forms')
    assert not forms['short'], 'results/forms.json is a --short smoke run'
    assert _between(root / 'docs' / 'export.md', report.FORMS_MARKERS) == report.forms_table(forms)
    # inference_model's goal, profile and inductor options in docs/deploy.md
    compiled = report.load(results / 'compile.json', 'compile')
    assert not compiled['short'], 'results/compile.json is a --short smoke run'
    assert _between(root / 'docs' / 'deploy.md', report.NATIVE_MARKERS) == report.native_tables(inference, compiled)


@pytest.fixture(scope='module')
def peers(tmp_path_factory):
    out = tmp_path_factory.mktemp('peers')
    res = _run('bench_peers.py', '--short', '--threads', '1', '--out', str(out / 'peers.json'))
    assert res.returncode == 0, res.stderr[-3000:]
    yield out, res.stdout
    shutil.rmtree(out, ignore_errors=True)


def test_peers_short_run_writes_every_row_and_the_goals(peers):
    out, stdout = peers
    data = json.loads((out / 'peers.json').read_text())
    _check_common(data, 'peers')
    s = data['settings']
    assert (s['img_size'], s['batch_sizes'], s['formats'], s['precisions']) == (64, [1], ['onnx'], ['fp32', 'int8'])
    keys = ['ghostnet_100', 'mobilenetv3_small_100', 'ghostnet_100_baseline']
    rows = {(r['precision'], r['key']): r for r in data['results']}
    assert sorted(rows) == sorted((p, k) for p in ('fp32', 'int8') for k in keys)
    for r in rows.values():
        assert r['format'] == 'onnx' and r['batch'] == 1 and r['img_per_s'] > 0 and 0 < r['p50_ms'] <= r['p90_ms']
        assert r['img_per_s'] == pytest.approx(1e3 / r['p50_ms'], rel=0.01)
        assert r['on_front'] is (r['route'] == 'export' and r['key'] in _front(data, r['precision']))
    assert rows['fp32', 'ghostnet_100_baseline']['route'] == 'baseline'
    assert rows['fp32', 'ghostnet_100']['top1'] == 73.958 and rows['fp32', 'mobilenetv3_small_100']['top1'] == 67.636
    # MACs and parameters counted on each model at the run's size
    info = data['models']
    assert info['ghostnet_100']['macs'] == 15_203_072 and info['ghostnet_100']['params'] == 5_182_508
    small = timm.create_model('mobilenetv3_small_100')
    assert info['mobilenetv3_small_100']['macs'] == count_macs(small, 64)
    assert info['mobilenetv3_small_100']['params'] == sum(p.numel() for p in small.parameters())
    # every export verified: fp32 to 1e-4 (the baseline too), int8 with its held-out agreement recorded
    exports = data['exports']
    assert sorted(exports) == sorted(f'onnx_{p}_{k}' for p in ('fp32', 'int8') for k in keys)
    for key, e in exports.items():
        v = e['verification']
        if e['precision'] == 'fp32':
            assert max(v['max_abs_diff'].values()) <= 1e-4 and v['passed'] is True, key
        else:
            assert v['heldout_images'] == 32 and 0 <= v['heldout_top1_agreement'] <= 1, key
        assert e['export_s'] > 0
    # the goals: ratios of the rows above; what this run did not measure is None, not a guess
    g = data['summary']
    speed = {k: r['img_per_s'] for k, r in rows.items()}
    onnx_vs_base, ov_vs_base = g['export_vs_baseline']
    base = speed['fp32', 'ghostnet_100_baseline']
    assert onnx_vs_base['ratio'] == pytest.approx(speed['fp32', 'ghostnet_100'] / base, abs=1e-3)
    assert onnx_vs_base['met'] == (onnx_vs_base['ratio'] >= 1.3)
    assert ov_vs_base['ratio'] is None and ov_vs_base['met'] is None
    assert [x['met'] for x in g['ghostnet_100_vs_mobilenetv3_large_100']] == [None, None]
    int8 = g['int8_vs_fp32'][0]  # ONNX Runtime batch 1; the other runtimes and batch 32 are not in the short run
    assert [x['ratio'] is None for x in g['int8_vs_fp32']] == [False, True, True, True, True, True]
    assert int8['ratio'] == pytest.approx(speed['int8', 'ghostnet_100'] / speed['fp32', 'ghostnet_100'], abs=1e-3)
    assert [(x['precision'], x['fastest'], x['met']) for x in g['fastest_at_79']] == [('fp32', None, None),
                                                                                     ('int8', None, None)]
    assert 'summary: ghostnet_100 int8 / fp32, ONNX Runtime batch 1 >= 1.3: ' in stdout
    _check_png(out / 'peers_onnx.png')
    assert not (out / 'peers.png').exists()


def test_peers_native_group_gives_every_model_the_same_inference_model(tmp_path):
    """The PyTorch group (``--formats torch``): GhostNet and its peers alike through timm_ghost.inference_model
    (not compiled in a short run), each checked against its eval model, fp32 only, no baseline row."""
    res = _run('bench_peers.py', '--short', '--threads', '1', '--formats', 'torch', '--out', str(tmp_path / 'p.json'))
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads((tmp_path / 'p.json').read_text())
    assert data['settings']['formats'] == ['torch'] and data['settings']['format_labels']['torch'] == (
        'PyTorch inference_model')
    assert sorted((r['precision'], r['key']) for r in data['results']) == [
        ('fp32', 'ghostnet_100'), ('fp32', 'mobilenetv3_small_100')]
    assert all(r['img_per_s'] > 0 for r in data['results'])
    for key in ('ghostnet_100', 'mobilenetv3_small_100'):
        v = data['exports'][f'torch_fp32_{key}']['verification']
        assert v['max_abs_diff']['1'] <= 1e-4 and v['backend'] == ['backend: eager (compile=False)'], key


def _front(data: dict, precision: str) -> set:
    sys.path.insert(0, str(BENCH))
    try:
        from bench_peers import pareto_front
    finally:
        sys.path.remove(str(BENCH))
    rs = [r for r in data['results'] if r['precision'] == precision and r['route'] == 'export']
    return set(pareto_front([(r['key'], r['img_per_s'], r['top1']) for r in rs]))


def test_pareto_front_keeps_the_models_nothing_beats():
    sys.path.insert(0, str(BENCH))
    try:
        from bench_peers import pareto_front
    finally:
        sys.path.remove(str(BENCH))
    points = [
        ('a', 100.0, 70.0),   # on: only c is more accurate, and c is slower
        ('b', 200.0, 68.0),   # on: the fastest
        ('c', 50.0, 80.0),    # on: the most accurate
        ('d', 90.0, 69.0),    # off: a is faster and more accurate
        ('e', 200.0, 67.0),   # off: b is as fast and more accurate
        ('f', 60.0, 70.0),    # off: a is faster and as accurate
        ('g', 300.0, 50.0),   # on: fastest of all
    ]
    assert pareto_front(points) == ['a', 'b', 'c', 'g']
    assert pareto_front([('x', 1.0, 1.0), ('y', 1.0, 1.0)]) == ['x', 'y']  # an exact tie keeps both
    assert pareto_front([]) == []


def test_peers_goals_are_ratios_of_the_rows_they_name():
    sys.path.insert(0, str(BENCH))
    try:
        from bench_peers import summarize
    finally:
        sys.path.remove(str(BENCH))

    def row(key, batch, speed, top1, precision='fp32', fmt='onnx'):
        return {'key': key, 'model': key.replace('_baseline', ''), 'route': 'baseline' if 'baseline' in key else
                'export', 'format': fmt, 'precision': precision, 'batch': batch, 'img_per_s': speed, 'top1': top1}

    results = [
        row('ghostnet_100', 1, 260.0, 73.958), row('ghostnet_100_baseline', 1, 200.0, 73.958),
        row('mobilenetv3_large_100', 1, 260.0, 75.784), row('ghostnet_100', 1, 400.0, 73.958, 'int8'),
        row('ghostnet_130', 1, 150.0, 79.4), row('mobilenetv4_conv_medium', 1, 100.0, 79.092),
        row('efficientnet_b0', 1, 500.0, 77.698),  # faster, but below 79 %
        row('ghostnet_130', 32, 150.0, 79.4), row('mobilenetv4_conv_medium', 32, 200.0, 79.092),
        row('ghostnet_130', 1, 150.0, 79.4, fmt='openvino'),
        row('mobilenetv4_conv_medium', 1, 120.0, 79.092, 'int8', 'openvino'),  # ghostnet_130 not measured here
    ]
    g = summarize(results)
    onnx, ov = g['export_vs_baseline']
    assert (onnx['ratio'], onnx['met'], ov['ratio'], ov['met']) == (1.3, True, None, None)
    assert [(x['ratio'], x['met']) for x in g['ghostnet_100_vs_mobilenetv3_large_100']] == [(1.0, False), (None, None)]
    assert [(x['ratio'], x['met']) for x in g['int8_vs_fp32']][:2] == [(round(400 / 260, 3), True), (None, None)]
    assert [(x['format'], x['precision'], x['batch'], x['fastest'], x['next'], x['margin'], x['met'])
            for x in g['fastest_at_79']] == [
        ('onnx', 'fp32', 1, 'ghostnet_130', 'mobilenetv4_conv_medium', 1.5, True),
        ('onnx', 'fp32', 32, 'mobilenetv4_conv_medium', 'ghostnet_130', round(200 / 150, 3), False),
        ('onnx', 'int8', 1, None, None, None, None),  # measured, but no model at 79 % in it
        ('openvino', 'fp32', 1, 'ghostnet_130', None, None, True),
        ('openvino', 'int8', 1, 'mobilenetv4_conv_medium', None, None, None)]


def test_report_renders_the_peers_tables_and_readme_line(peers, tmp_path):
    out, _ = peers
    data = json.loads((out / 'peers.json').read_text())
    doc = tmp_path / 'benchmarks.md'
    doc.write_text('# b\n<!-- peers-tables:start -->\nstale\n<!-- peers-tables:end -->\nafter\n')
    readme = tmp_path / 'README.md'
    readme.write_text('x\n<!-- benchmark-summary:start -->\n<!-- benchmark-summary:end -->\n'
                      '<!-- peers-summary:start -->\n<!-- peers-summary:end -->\ny\n')
    res = _run('report.py', '--peers', str(out / 'peers.json'), '--peers-doc', str(doc), '--summary', str(readme))
    assert res.returncode == 0, res.stderr
    tables = doc.read_text().split('<!-- peers-tables:start -->\n')[1].split('<!-- peers-tables:end -->')[0]
    assert 'stale' not in tables and tables in res.stdout and 'short smoke run' in tables
    assert '| model | top-1 | MACs | fp32 b1 | int8 b1 |' in tables
    rows = {r['key']: r for r in data['results'] if r['precision'] == 'fp32'}
    speed = {r['key']: r['img_per_s'] for r in data['results'] if r['precision'] == 'int8'}
    # sorted by top-1, the baseline after the model it exports; every cell the JSON's figure
    assert [line.split(' | ')[0] for line in tables.splitlines() if line.startswith('| ') and 'M |' in line] == [
        '| mobilenetv3_small_100 (lamb_in1k)', '| ghostnet_100 (in1k)', "| ghostnet_100, timm's legacy ONNX export"]
    for key, r in rows.items():
        assert f'| {r["top1"]:.1f} | {data["models"][r["model"]]["macs"] / 1e6:.0f} M | {r["img_per_s"]:.1f} ' \
               f'| {speed[key]:.1f} |' in tables, key
    ratio = data['summary']['int8_vs_fp32'][0]['ratio']
    assert f'- ghostnet_100 int8 / fp32, ONNX Runtime batch 1 >= 1.3: {ratio:.2f}x (' in tables
    assert '- ONNX Runtime fp32 batch 1: no model at >= 79 % top-1 in this run (not measured)' in tables
    assert '- mobilenetv3_small_100.lamb_in1k: 67.636, timm\'s results/results-imagenet.csv' in tables
    line = readme.read_text().split('<!-- peers-summary:start -->\n')[1].split('<!-- peers-summary:end -->')[0]
    assert line.count('\n') == 1 and 'ONNX Runtime fp32, batch 1, 64 px' in line
    front = sorted((r for r in rows.values() if r['on_front']), key=lambda r: -r['top1'])
    assert ', '.join(f'{r["model"]} ({r["top1"]:.1f} %, {r["img_per_s"]:.0f} img/s)' for r in front) in line
    # a README without the peers markers keeps its benchmark summary and is told why the line is missing
    plain = tmp_path / 'PLAIN.md'
    plain.write_text('x\n<!-- benchmark-summary:start -->\n<!-- benchmark-summary:end -->\n')
    res = _run('report.py', '--peers', str(out / 'peers.json'), '--summary', str(plain))
    assert res.returncode == 0 and f'{plain} has no <!-- peers-summary:start --> line' in res.stderr
    res = _run('report.py', '--peers', str(tmp_path / 'none.json'), '--peers-doc', str(doc))
    assert res.returncode == 1 and f'{tmp_path / "none.json"}: no such benchmark result' in res.stderr


@pytest.mark.parametrize('option, value', [('--models', 'ghostnet_200'), ('--formats', 'tflite'),
                                           ('--precisions', 'bf16'), ('--models', '')])
def test_bad_peers_arguments_are_refused_with_the_option_named(option, value, tmp_path, monkeypatch, capsys):
    # --short and --out bound what a parser that let the value through would run and where it would write
    code, err = _refused(monkeypatch, capsys, 'bench_peers.py', '--short', '--out', str(tmp_path / 'peers.json'),
                         option, value)
    what = f'unknown {value!r}' if value else 'empty'
    assert code == 2 and f'{option}: {what}; expected a comma-separated subset of ' in err
    assert not (tmp_path / 'peers.json').exists()


def test_compile_options_short_run_times_each_variant_against_freezing(tmp_path):
    res = _run('bench_compile.py', '--short', '--threads', '1', '--out', str(tmp_path / 'compile.json'))
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads((tmp_path / 'compile.json').read_text())
    _check_common(data, 'compile')
    rows = {r['variant']: r for r in data['results']}
    assert sorted(rows) == ['freezing', 'no freezing'] and rows['freezing']['vs_freezing'] == 1.0
    for r in rows.values():
        assert r['batch'] == 1 and r['img_per_s'] > 0 and r['compile_s'] > 0 and r['max_abs_diff'] <= 1e-4
        assert r['backend'] == 'inductor'
    # a second process compiled the same options from the run's own inductor cache
    assert data['cache']['options'] == rows['freezing']['options'] and data['cache']['backend'] == 'inductor'
    assert data['cache']['batch'] == 1 and data['cache']['second_process_s'] > 0
    _check_png(tmp_path / 'compile.png')
