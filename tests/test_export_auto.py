"""What an export says about its speed on this CPU: the int8 export's record against fp32 (``speed`` in export.json,
one warning line where int8 is the slower) and ``--format auto`` / ``--precision auto`` keeping the fastest verified
candidate. The choices are tested on hand-made timings (``measure_speeds`` replaced), never on timed assertions;
the real ``measure_speeds`` is checked for its shape and its refusals only.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Dict, Iterator, List

import numpy as np
import pytest
import timm
import torch
from helpers import randomize_

from timm_ghost.errors import MissingDependencyError
from timm_ghost.export import export_model, load_export
from timm_ghost.export import speed as speed_module
from timm_ghost.export.api import speed_record
from timm_ghost_cli import main as cli_main

IMG = 64


@pytest.fixture(scope='module')
def calib(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from timm_ghost.data import write_digits_imagefolder

    root = write_digits_imagefolder(tmp_path_factory.mktemp('digits') / 'data', img_size=IMG).root
    yield root / 'validation'
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope='module')
def weights(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp('weights') / 'w.safetensors'
    save_file(randomize_(timm.create_model('ghostnet_050'), seed=0).state_dict(), path)
    yield path
    path.unlink()


class HandMadeTimings:
    """A stand-in for ``measure_speeds`` answering a fixed table and recording what it was asked to time."""

    def __init__(self, table: Dict[str, Dict[str, float]]) -> None:
        self.table, self.calls = table, []

    def __call__(self, runs, batches, input_size, **kw) -> Dict[str, Dict[str, float]]:
        x = np.zeros((1, *input_size), np.float32)
        for run in runs.values():
            assert np.isfinite(run(x)).all()  # loaded, runnable artifacts
        self.calls.append((sorted(runs), list(batches), tuple(input_size)))
        return {name: {str(b): self.table[name][str(b)] for b in batches} for name in runs}


def test_int8_export_records_its_speed_and_says_in_one_line_where_it_is_slower(tmp_path, calib, weights,
                                                                                 monkeypatch, capsys):
    pytest.importorskip('onnxruntime')
    timings = HandMadeTimings({'fp32': {'1': 200.0, '32': 400.0}, 'int8': {'1': 150.0, '32': 500.0}})
    monkeypatch.setattr(speed_module, 'measure_speeds', timings)
    out = tmp_path / 'out'
    rc = cli_main(['export', 'ghostnet_050', str(out), '--format', 'onnx', '--precision', 'int8', '--weights',
                   str(weights), '--img-size', str(IMG), '--calib', str(calib), '--calib-size', '64'])
    assert rc == 0
    assert timings.calls == [(['fp32', 'int8'], [1, 32], (3, IMG, IMG))]
    speed = json.loads((out / 'export.json').read_text())['speed']
    assert speed['images_per_s'] == {'fp32': {'1': 200.0, '32': 400.0}, 'int8': {'1': 150.0, '32': 500.0}}
    assert speed['int8_vs_fp32'] == {'1': 0.75, '32': 1.25} and speed['faster'] == {'1': 'fp32', '32': 'int8'}
    captured = capsys.readouterr()
    assert captured.err == ('timm-ghost export: warning: onnx int8 runs slower than its fp32 on this CPU (0.75x at '
                            'batch 1; export.json: speed): the faster choice here is --precision fp32\n')
    assert 'onnx int8 vs fp32 on this CPU: batch 1: 150 vs 200 images/s (0.75x), batch 32: 500 vs 400 images/s ' \
           '(1.25x)' in captured.out.splitlines()
    assert sorted(p.name for p in out.iterdir()) == ['export.json', 'model.onnx']  # the fp32 build stayed in work


def test_speed_record_of_a_faster_int8_warns_nothing(recwarn):
    from timm_ghost.export.api import _warn_if_slower

    record = speed_record({'fp32': {'1': 100.0, '8': 300.0}, 'int8': {'1': 180.0, '8': 300.0}}, [1, 8])
    assert record['int8_vs_fp32'] == {'1': 1.8, '8': 1.0} and record['faster'] == {'1': 'int8', '8': 'int8'}
    _warn_if_slower(record, 'openvino')
    assert len(recwarn) == 0


def test_measure_speeds_times_every_run_at_every_batch_and_refuses_nothing_to_time():
    seen: Dict[str, List[int]] = {'a': [], 'b': []}

    def run(name: str):
        return lambda x: seen[name].append(len(x)) or x.sum()

    speeds = speed_module.measure_speeds({'a': run('a'), 'b': run('b')}, [1, 4], (3, 8, 8), rounds=2, round_s=0.0,
                                         warmup=1)
    assert sorted(speeds) == ['a', 'b'] and all(sorted(s) == ['1', '4'] and min(s.values()) > 0
                                                for s in speeds.values())
    assert seen['a'] == seen['b'] == [1, 1, 1, 4, 4, 4]  # warm-up + 2 rounds per batch, side by side
    with pytest.raises(ValueError, match='runs: expected at least one loaded artifact'):
        speed_module.measure_speeds({}, [1], (3, 8, 8))
    with pytest.raises(ValueError, match=r'batches: expected positive batch sizes, got \[0\]'):
        speed_module.measure_speeds({'a': run('a')}, [0], (3, 8, 8))


def test_format_auto_keeps_the_fastest_at_the_requested_batch_and_lists_a_missing_runtime(
        tmp_path, weights, monkeypatch, capsys):
    """Two runtimes present (ONNX Runtime, OpenVINO) and one missing (ExecuTorch, hidden from the import system):
    both present are built and verified, timed at batch 1 and --batch 8, and the hand-made table's fastest at batch
    8 (OpenVINO, slower at batch 1) is what OUT holds; the missing one is a row saying how to install it."""
    pytest.importorskip('onnxruntime')
    pytest.importorskip('openvino')
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec',
                        lambda name, *a: None if name == 'executorch' else find_spec(name, *a))
    timings = HandMadeTimings({'onnx fp32': {'1': 900.0, '8': 1500.0}, 'openvino fp32': {'1': 700.0, '8': 2100.0}})
    monkeypatch.setattr(speed_module, 'measure_speeds', timings)
    out = tmp_path / 'out'
    rc = cli_main(['export', 'ghostnet_050', str(out), '--format', 'auto', '--weights', str(weights),
                   '--img-size', str(IMG), '--batch', '8'])
    assert rc == 0
    assert timings.calls == [(['onnx fp32', 'openvino fp32'], [1, 8], (3, IMG, IMG))]
    assert sorted(p.name for p in out.iterdir()) == ['export.json', 'model.bin', 'model.xml']
    meta = json.loads((out / 'export.json').read_text())
    assert meta['format'] == 'openvino' and meta['verification']['passed']
    auto = meta['auto']
    assert auto['batch'] == 8 and auto['chosen'] == 'openvino fp32'
    rows = {(r['format'], r['precision']): r for r in auto['table']}
    assert rows[('onnx', 'fp32')]['images_per_s'] == {'1': 900.0, '8': 1500.0}
    assert not rows[('onnx', 'fp32')]['chosen'] and rows[('openvino', 'fp32')]['chosen']
    assert rows[('executorch', 'fp32')]['status'] == ('not installed: --format executorch needs executorch (not '
                                                      'installed): pip install "timm-ghost[executorch]"')
    assert rows[('executorch', 'fp32')]['images_per_s'] is None
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == 'fastest verified export on this CPU at batch 8: openvino fp32'
    assert lines[1].split() == ['format', 'precision', 'batch', '1', 'img/s', 'batch', '8', 'img/s']
    assert lines[2].split() == ['onnx', 'fp32', '900.0', '1500.0']
    assert lines[3].split() == ['openvino', 'fp32', '700.0', '2100.0', '<-', 'kept']
    assert lines[4].split()[:4] == ['executorch', 'fp32', '-', '-'] and 'not installed' in lines[4]
    x = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(1)).numpy()
    model = timm.create_model('ghostnet_050', pretrained=False)
    from safetensors.torch import load_file
    model.load_state_dict(load_file(weights))
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x)).numpy()
    assert np.abs(load_export(out)(x) - ref).max() <= 1e-4  # what was kept runs as it was verified


def test_auto_refuses_what_it_cannot_compare(tmp_path, weights, monkeypatch):
    model = timm.create_model('ghostnet_050')
    with pytest.raises(ValueError, match=r'--precision auto needs --calib DIR'):
        export_model(model, tmp_path / 'out', 'onnx', 'auto')
    with pytest.raises(ValueError, match=r'batch: expected a positive batch size, got 0'):
        export_model(model, tmp_path / 'out', 'auto', batch=0)
    with pytest.raises(ValueError, match=r'batch: 64 is more than max_batch \(32\)'):
        export_model(model, tmp_path / 'out', 'auto', batch=64)
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None)
    with pytest.raises(MissingDependencyError, match=r'--format auto: no runtime installed: onnx: not installed: '
                                                     r'--format onnx needs onnx, onnxscript, onnxruntime'):
        export_model(model, tmp_path / 'out', 'auto')
    assert not (tmp_path / 'out').exists()
