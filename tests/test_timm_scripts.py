"""timm's own scripts, unedited: train.py (``--device-modules timm_ghost``), validate.py / benchmark.py /
inference.py (through ``python -m timm_ghost.run SCRIPT ARGS...``), and the launcher's pass-through contract.

The script tests need a copy of timm's scripts: set ``TIMM_SCRIPTS`` to the folder holding train.py, validate.py,
benchmark.py and inference.py (from the timm repository, e.g. ``git clone https://github.com/huggingface/
pytorch-image-models`` and point at its root). Without it they are skipped; the launcher tests always run.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator

import pytest
import timm
import torch
from timm.utils import reparameterize_model

from timm_ghost import WIDTHS
from timm_ghost._compat import timm_at_least
from timm_ghost.recipes import recipe_path

SCRIPTS = ('train.py', 'validate.py', 'benchmark.py', 'inference.py')
# data loading in the scripts' own process; before timm 1.0.29 create_loader asks for persistent workers even with
# --workers 0, which torch refuses (ValueError: persistent_workers option needs num_workers > 0): one worker there
WORKERS = '0' if timm_at_least('1.0.29') else '1'
_TIMEOUT_S = 300
# one thread per process: the CPU test runners are small and share their cores
_ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')


def _scripts_dir() -> Path:
    folder = os.environ.get('TIMM_SCRIPTS')
    if not folder:
        pytest.skip('TIMM_SCRIPTS is not set: point it at a folder with timm\'s train.py, validate.py, benchmark.py '
                    'and inference.py (a pytorch-image-models checkout) to run these tests')
    missing = [s for s in SCRIPTS if not (Path(folder) / s).is_file()]
    if missing:
        pytest.skip(f'TIMM_SCRIPTS={folder} lacks {", ".join(missing)}')
    return Path(folder)


def _run(args: list, cwd: Path, timeout: int = _TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, env=_ENV,
                          timeout=timeout)


# ------------------------------------------------------------------------------------------------ the launcher
def _script(tmp_path: Path, body: str, name: str = 'script.py') -> Path:
    path = tmp_path / 'scripts' / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(textwrap.dedent(body))
    return path


def test_launcher_registers_models_and_passes_argv_and_exit_code(tmp_path):
    script = _script(tmp_path, """
        import json, sys
        import timm
        model = timm.create_model('ghostnet_050')
        print(json.dumps(dict(cls=type(model).__module__ + '.' + type(model).__name__, argv=sys.argv,
                              name=__name__, path0=sys.path[0])))
        sys.exit(int(sys.argv[1]))
    """)
    proc = _run(['-m', 'timm_ghost.run', script, '3', '--flag', 'a b'], cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen == dict(cls='timm_ghost.ghostnet.GhostNet', argv=[str(script), '3', '--flag', 'a b'], name='__main__',
                        path0=str(script.parent))
    # the same script run plainly gets timm's built-in class: the launcher is what registers ours
    plain = _run([script, '0'], cwd=tmp_path)
    assert plain.returncode == 0 and json.loads(plain.stdout)['cls'] == 'timm.models.ghostnet.GhostNet'


def test_launcher_passes_exceptions_through(tmp_path):
    script = _script(tmp_path, """
        def fail():
            raise ValueError('boom from the script')
        fail()
    """)
    proc = _run(['-m', 'timm_ghost.run', script], cwd=tmp_path)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == 'Traceback (most recent call last):'
    assert lines[-1] == 'ValueError: boom from the script'
    assert f'File "{script}", line 3, in fail' in proc.stderr


@pytest.fixture
def launcher(monkeypatch):
    """``timm_ghost.run.main`` in-process, with sys.argv / sys.path restored afterwards."""
    from timm_ghost.run import main
    monkeypatch.setattr(sys, 'argv', list(sys.argv))
    monkeypatch.setattr(sys, 'path', list(sys.path))
    return main


def test_launcher_script_imports_its_siblings_and_parses_its_own_args(tmp_path, launcher, capsys):
    _script(tmp_path, 'VALUE = 42\n', name='timm_ghost_test_sibling.py')
    script = _script(tmp_path, """
        import argparse
        import timm_ghost_test_sibling as sibling
        parser = argparse.ArgumentParser(description='a timm-like script')
        parser.add_argument('--model', required=True)
        args = parser.parse_args()
        print(args.model, sibling.VALUE)
    """)
    launcher([str(script), '--model', 'ghostnet_100'])
    assert capsys.readouterr().out == 'ghostnet_100 42\n'
    with pytest.raises(SystemExit) as e:
        launcher([str(script), '--help'])
    assert e.value.code == 0 and capsys.readouterr().out.startswith('usage: script.py [-h] --model MODEL')
    with pytest.raises(SystemExit) as e:
        launcher([str(script)])
    assert e.value.code == 2 and 'the following arguments are required: --model' in capsys.readouterr().err


def test_launcher_usage_errors(tmp_path, launcher, capsys):
    with pytest.raises(SystemExit) as e:
        launcher([])
    assert e.value.code == 2 and capsys.readouterr().err.startswith(
        'usage: python -m timm_ghost.run [--inference-model] SCRIPT [ARGS...]')
    with pytest.raises(SystemExit) as e:
        launcher([str(tmp_path / 'nope.py'), '--x'])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f'python -m timm_ghost.run: error: script not found: {tmp_path / "nope.py"}')
    with pytest.raises(SystemExit) as e:
        launcher(['--help'])
    assert e.value.code == 0 and 'validate.py' in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ recipes
@pytest.mark.parametrize('name', list(WIDTHS))
def test_recipe_keys_are_train_py_arguments(name, monkeypatch):
    folder = _scripts_dir()
    spec = importlib.util.spec_from_file_location('timm_train_script', folder / 'train.py')
    train = importlib.util.module_from_spec(spec)
    monkeypatch.syspath_prepend(str(folder))
    spec.loader.exec_module(train)
    dests = {a.dest for a in train.parser._actions}
    import yaml
    cfg = yaml.safe_load(recipe_path(name).read_text())
    assert not set(cfg) - dests, f'unknown train.py arguments in the recipe: {set(cfg) - dests}'
    monkeypatch.setattr(sys, 'argv', ['train.py', '-c', str(recipe_path(name)), '--data-dir', '/data/imagenet'])
    args, _ = train._parse_args()
    assert (args.model, args.lr_base, args.lr_base_size, args.batch_size) == (name, 0.4, 1024, 128)
    assert args.lr is None  # scaled from lr_base by the global batch
    assert args.device_modules == ['timm_ghost'] and args.drop == 0.2 and args.epochs == 400


# ------------------------------------------------------------------------------------------------ train -> validate
@pytest.fixture(scope='module')
def digits32(tmp_path_factory) -> Iterator[Path]:
    _scripts_dir()
    pytest.importorskip('sklearn', reason='the digits data set ships with scikit-learn')
    from timm_ghost.data import write_digits_imagefolder
    out = tmp_path_factory.mktemp('data') / 'digits32'
    write_digits_imagefolder(out, img_size=32)
    yield out
    shutil.rmtree(out)  # 1,797 files


def test_builtin_ghostnet_refuses_drop_path():
    """Why --drop-path below proves train.py built our class: timm's built-in GhostNet has no stochastic depth."""
    from timm.models import ghostnet as builtin
    with pytest.raises(TypeError, match='drop_path_rate'):
        builtin.ghostnet_050(drop_path_rate=0.05)


@pytest.fixture(scope='module')
def trained(tmp_path_factory, digits32) -> Iterator[Path]:
    """train.py, unedited, trains ghostnet_050 on the digits for 4 epochs on the CPU."""
    folder = _scripts_dir()
    out = tmp_path_factory.mktemp('train')
    proc = _run([
        folder / 'train.py', '--device-modules', 'timm_ghost', '--data-dir', digits32, '--model', 'ghostnet_050',
        '--num-classes', '10', '--img-size', '32', '--drop-path', '0.05', '--epochs', '4', '-b', '64', '--lr', '0.2',
        '--warmup-epochs', '1', '--weight-decay', '5e-5', '--hflip', '0', '--color-jitter', '0', '--scale', '0.7', '1',
        '--ratio', '0.9', '1.1', '--crop-pct', '1.0', '--interpolation', 'bicubic', '--train-interpolation', 'bicubic',
        '--device', 'cpu', '--workers', WORKERS, '--no-prefetcher', '--channels-last', '--seed', '0',
        '--output', out, '--experiment', 'digits', '--checkpoint-hist', '1', '--log-interval', '10',
    ], cwd=out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    yield out / 'digits'
    shutil.rmtree(out, ignore_errors=True)  # checkpoints


def test_train_py_trains_our_model_on_digits(trained):
    assert (trained / 'model_best.pth.tar').is_file() and (trained / 'last.pth.tar').is_file()
    summary = (trained / 'summary.csv').read_text().strip().splitlines()
    assert len(summary) == 1 + 4  # header + one row per epoch
    header = summary[0].split(',')
    best_top1 = max(float(row.split(',')[header.index('eval_top1')]) for row in summary[1:])
    assert best_top1 > 80., summary  # chance is 10 %
    checkpoint = torch.load(trained / 'model_best.pth.tar', map_location='cpu', weights_only=False)
    assert checkpoint['arch'] == 'ghostnet_050' and checkpoint['args'].drop_path == 0.05
    assert checkpoint['state_dict']['classifier.weight'].shape == (10, 1280)


def test_validate_py_reparam_through_the_launcher(trained, digits32, tmp_path):
    folder = _scripts_dir()
    results = tmp_path / 'results.json'
    proc = _run([
        '-m', 'timm_ghost.run', folder / 'validate.py', digits32, '--split', 'validation', '--model', 'ghostnet_050',
        '--num-classes', '10', '--checkpoint', trained / 'model_best.pth.tar', '--reparam', '--img-size', '32',
        '--crop-pct', '1.0', '--interpolation', 'bicubic', '--device', 'cpu', '--workers', WORKERS, '--no-prefetcher',
        '--results-file', results, '--results-format', 'json',
    ], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    scores = json.loads(results.read_text())
    assert scores['top1'] > 80.
    # our class was used: only our ghostnet folds its BatchNorms under --reparam (timm's built-in keeps them)
    fused = reparameterize_model(timm.create_model('ghostnet_050', num_classes=10))
    unfused = timm.create_model('ghostnet_050', num_classes=10)
    count = int(re.search(r'param count: (\d+)', proc.stdout + proc.stderr).group(1))
    assert count == sum(p.numel() for p in fused.parameters()) < sum(p.numel() for p in unfused.parameters())
    # and the score is the checkpoint's: train.py's own evaluation of that epoch, unfused, gives the same top-1
    summary = (trained / 'summary.csv').read_text().strip().splitlines()
    header = summary[0].split(',')
    train_top1 = max(float(row.split(',')[header.index('eval_top1')]) for row in summary[1:])
    assert abs(scores['top1'] - train_top1) < 0.3  # 360 images: at most one differs on a near-tie


def test_validate_py_with_the_inference_model(trained, digits32, tmp_path):
    """``--inference-model``: the checkpoint loads into the created model, which then runs folded and compiled, with
    the score of the plain checkpoint (train.py's own evaluation)."""
    folder = _scripts_dir()
    results = tmp_path / 'results.json'
    proc = _run([
        '-m', 'timm_ghost.run', '--inference-model', folder / 'validate.py', digits32, '--split', 'validation',
        '--model', 'ghostnet_050', '--num-classes', '10', '--checkpoint', trained / 'model_best.pth.tar',
        '--img-size', '32', '-b', '120', '--crop-pct', '1.0', '--interpolation', 'bicubic', '--device', 'cpu',
        '--workers', WORKERS, '--no-prefetcher', '--results-file', results, '--results-format', 'json',
    ], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = [line for line in proc.stderr.splitlines() if line.startswith('timm-ghost: inference model:')]
    assert len(report) == 1 and re.fullmatch(
        r'timm-ghost: inference model: backend: inductor; compiled 120x3x32x32 in [\d.]+ s', report[0]), report
    summary = (trained / 'summary.csv').read_text().strip().splitlines()
    header = summary[0].split(',')
    train_top1 = max(float(row.split(',')[header.index('eval_top1')]) for row in summary[1:])
    assert abs(json.loads(results.read_text())['top1'] - train_top1) < 0.3


def test_launcher_inference_model_refuses_the_scripts_own_compile(tmp_path, launcher):
    script = _script(tmp_path, "raise AssertionError('must not run')\n")
    with pytest.raises(SystemExit) as e:
        launcher(['--inference-model', str(script), '--model', 'ghostnet_050', '--torchcompile=inductor', '--reparam'])
    assert str(e.value.code) == ('python -m timm_ghost.run: error: --inference-model folds and compiles the model '
                                 'itself; drop --torchcompile=inductor --reparam')


def test_benchmark_py_through_the_launcher(tmp_path):
    folder = _scripts_dir()
    results = tmp_path / 'bench.json'
    proc = _run([
        '-m', 'timm_ghost.run', folder / 'benchmark.py', '--model', 'ghostnet_050', '--bench', 'inference',
        '--device', 'cpu', '--img-size', '32', '-b', '4', '--num-warm-iter', '1', '--num-bench-iter', '5', '--reparam',
        '--results-file', results, '--results-format', 'json',
    ], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    bench = json.loads(results.read_text())
    assert bench['model'] == 'ghostnet_050' and bench['infer_samples_per_sec'] > 0
    fused = reparameterize_model(timm.create_model('ghostnet_050'))
    assert f'param count: {sum(p.numel() for p in fused.parameters())}' in proc.stdout + proc.stderr


def test_inference_py_through_the_launcher(trained, digits32, tmp_path):
    folder = _scripts_dir()
    pytest.importorskip('pandas', reason="timm's inference.py imports pandas")
    proc = _run([
        '-m', 'timm_ghost.run', folder / 'inference.py', digits32 / 'validation', '--model', 'ghostnet_050',
        '--num-classes', '10', '--checkpoint', trained / 'model_best.pth.tar', '--img-size', '32', '--device', 'cpu',
        '--workers', WORKERS, '--topk', '1', '--results-dir', tmp_path, '--results-format', 'json', '--include-index',
        '--fullname', '--crop-pct', '1.0',
    ], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = json.loads((tmp_path / 'ghostnet_050-32.json').read_text())  # {'<class>/<index>.png': {'index': ...}}
    assert len(rows) == 360
    correct = sum(int(name.split('/')[0]) == row['index'] for name, row in rows.items())
    assert correct / len(rows) > 0.8
