"""Verified exports (``timm_ghost.export``, ``timm-ghost export``): each format in fp32 end to end on ghostnet_050 at
64 px (export, reload with the runtime, logits within 1e-4 of the eval-mode model), int8 on a tiny calibration
folder (runs, agrees with fp32 top-1 on most held-out images), and bad input giving one line and leaving nothing.

Each runtime's tests skip when its package is absent (CI installs ``timm-ghost[export]``, so there they run).
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import timm
import torch
from helpers import randomize_

from timm_ghost.cli import main as cli_main
from timm_ghost.export import FP32_ATOL, export_form, export_model, export_module, load_export

IMG = 64
PACKAGE = {'onnx': 'onnxruntime', 'openvino': 'openvino', 'executorch': 'executorch'}
ARTIFACTS = {'onnx': ['model.onnx'], 'openvino': ['model.xml', 'model.bin'], 'executorch': ['model.pte']}


@pytest.fixture(scope='module')
def model() -> torch.nn.Module:
    return randomize_(timm.create_model('ghostnet_050'), seed=0).eval()


@pytest.fixture(scope='module')
def calib_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 digits images (4 classes x 12) at 64 px: 16 calibrate, 32 are held out."""
    from timm_ghost.data import write_digits_imagefolder

    full = write_digits_imagefolder(tmp_path_factory.mktemp('digits') / 'all', img_size=IMG).root / 'train'
    small = tmp_path_factory.mktemp('calib') / 'calib'
    for label in ('0', '1', '2', '3'):
        (small / label).mkdir(parents=True)
        for image in sorted((full / label).iterdir())[:12]:
            shutil.copy(image, small / label / image.name)
    return small


@pytest.fixture
def out(tmp_path: Path) -> Iterator[Path]:
    """An export folder under tmp_path, deleted after the test (artifacts run to megabytes; pytest keeps its temp
    folders of the last three runs)."""
    path = tmp_path / 'out'
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _runtime(fmt: str) -> None:
    pytest.importorskip(PACKAGE[fmt], reason=f'{PACKAGE[fmt]} not installed (pip install "timm-ghost[{fmt}]")')


def test_export_form_is_the_deploy_model_with_nchw_weights(model):
    form = export_form(model)
    x = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        diff = (form(x) - model(x)).abs().max().item()
    assert diff <= FP32_ATOL
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in form.modules()) == 0
    assert all(p.is_contiguous() for p in form.parameters())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) > 0  # the input model is untouched


def test_executorch_takes_the_export_form_in_one_delegate(model):
    """The SE gate per half and 4-D: XNNPACK takes the network whole (plus the classifier after the flatten); with the
    deploy block's 2-D mean, concat and slices, 14 means and 14 slices ran outside it, between 16 delegates."""
    _runtime('executorch')
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from timm_ghost.export._executorch import _export

    program = _export(export_form(model), torch.randn(2, 3, IMG, IMG), max_batch=4)
    graph = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).exported_program().graph
    targets = [str(getattr(n.target, '__name__', n.target)) for n in graph.nodes if n.op == 'call_function']
    assert targets.count('executorch_call_delegate') == 2
    outside = {t for t in targets if t.startswith('aten.')}
    assert outside == {'aten.view_copy.default'}, outside


@pytest.mark.parametrize('fmt', ['onnx', 'openvino', 'executorch'])
def test_fp32_export_reloads_within_tolerance(model, tmp_path, fmt):
    _runtime(fmt)
    out = tmp_path / 'out'
    result = export_model(model, out, fmt, 'fp32', img_size=IMG)
    assert sorted(p.name for p in out.iterdir()) == sorted(ARTIFACTS[fmt] + ['export.json'])
    meta = json.loads((out / 'export.json').read_text())
    assert meta == result.metadata
    assert (meta['format'], meta['precision'], meta['input_size']) == (fmt, 'fp32', [3, IMG, IMG])
    cfg = model.pretrained_cfg
    assert meta['mean'] == pytest.approx(cfg['mean']) and meta['std'] == pytest.approx(cfg['std'])
    assert (meta['interpolation'], meta['crop_pct']) == (cfg['interpolation'], cfg['crop_pct'])
    assert len(meta['labels']) == 1000 and meta['runtime']['name'] == PACKAGE[fmt]
    assert set(meta['verification']['max_abs_diff']) == {'1', '3'}
    assert max(meta['verification']['max_abs_diff'].values()) <= FP32_ATOL and meta['verification']['passed']
    # reloaded on its own, at a batch size the export was not verified with
    x = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model(x).numpy()
    got = load_export(out, threads=1)(x.numpy())
    assert got.shape == (2, 1000)
    assert np.abs(got - ref).max() <= FP32_ATOL


@pytest.mark.parametrize('fmt', ['onnx', 'openvino', 'executorch'])
def test_int8_export_agrees_with_fp32_top1(model, tmp_path, calib_dir, fmt):
    _runtime(fmt)
    out = tmp_path / 'out'
    result = export_model(model, out, fmt, 'int8', calib=calib_dir, calib_size=16, img_size=IMG, min_agreement=0.75)
    v = result.metadata['verification']
    assert result.metadata['quantization']['calib_images'] == 16
    assert v['heldout_images'] == 32 and v['heldout_top1_agreement'] >= 0.75
    x = torch.randn(4, 3, IMG, IMG, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref = model(x).numpy()
    got = load_export(out, threads=1)(x.numpy())
    assert got.shape == (4, 1000) and np.isfinite(got).all()
    assert 0 < np.abs(got - ref).max() < 0.25 * np.abs(ref).max()  # quantized (not fp32), yet close


class _DenseHead(torch.nn.Module):
    """A segmentation-style network on a GhostNet ``features_only`` backbone: the stem map (feature 0, which the
    in-place ReLU after it must not overwrite) and the /8 map, each through a 1x1 conv to 5 classes, upsampled to the
    input size. ``(N, 3, H, W)`` in, ``(N, 5, H, W)`` out."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = timm.create_model('ghostnet_050', features_only=True, out_indices=(0, 2))
        c0, c2 = self.encoder.feature_info.channels()
        self.head0 = torch.nn.Conv2d(c0, 5, 1)
        self.head2 = torch.nn.Conv2d(c2, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f0, f2 = self.encoder(x)
        y = self.head0(f0) + torch.nn.functional.interpolate(self.head2(f2), size=f0.shape[-2:], mode='bilinear')
        return torch.nn.functional.interpolate(y, size=x.shape[-2:], mode='bilinear')


@pytest.fixture(scope='module')
def dense_module() -> torch.nn.Module:
    """:class:`_DenseHead` with random weights, its GhostNet encoder folded by timm's ``reparameterize_model``."""
    from timm.utils import reparameterize_model

    from timm_ghost.deploy import GhostBottleneckDeploy

    folded = reparameterize_model(randomize_(_DenseHead(), seed=0).eval())
    assert sum(isinstance(m, GhostBottleneckDeploy) for m in folded.modules()) == 4
    return folded


@pytest.mark.parametrize('fmt', ['onnx', 'openvino', 'executorch'])
def test_export_module_dense_map_reloads_within_tolerance(dense_module, out, fmt):
    """Any image module, here one whose output is a 4-D map, goes through the same verified path as a model."""
    _runtime(fmt)
    result = export_module(dense_module, out, fmt, 'fp32', input_size=(3, 64, 96), mean=(0.5,) * 3, std=(0.25,) * 3)
    assert sorted(p.name for p in out.iterdir()) == sorted(ARTIFACTS[fmt] + ['export.json'])
    meta = json.loads((out / 'export.json').read_text())
    assert meta == result.metadata
    assert (meta['model'], meta['input_size'], meta['output_size']) == ('_DenseHead', [3, 64, 96], [5, 64, 96])
    assert (meta['mean'], meta['std'], meta['labels'], meta['num_classes']) == ([0.5] * 3, [0.25] * 3, None, None)
    assert meta['form'] == 'eval module, its timm-ghost blocks in deploy form (BN folded)'
    assert max(meta['verification']['max_abs_diff'].values()) <= FP32_ATOL and meta['verification']['passed']
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = dense_module(x).numpy()
    got = load_export(out, threads=1)(x.numpy())
    assert got.shape == (2, 5, 64, 96)
    assert np.abs(got - ref).max() <= FP32_ATOL


def test_export_module_stem_map_stays_a_copy(dense_module):
    """The export form of a features_only encoder keeps the stem map a copy: the in-place ReLU after it would
    otherwise overwrite feature 0 (a GhostNet classifier drops the copy, as nothing hands that map out)."""
    from timm_ghost.export.form import GhostBottleneckExport, _StemCopy

    form = export_form(dense_module)
    assert [type(m) for m in form.modules() if isinstance(m, (_StemCopy, torch.nn.Identity))] == [_StemCopy]
    assert sum(isinstance(m, GhostBottleneckExport) for m in form.modules()) == 4
    assert all(p.is_contiguous() for p in form.parameters())
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (form(x) - dense_module(x)).abs().max().item() <= FP32_ATOL


def test_export_module_bad_arguments(tmp_path, dense_module):
    _runtime('onnx')

    class Pair(torch.nn.Module):
        def forward(self, x: torch.Tensor):
            return x, x

    with pytest.raises(ValueError, match=r'input_size: expected \(channels, height, width\), three positive ints, '
                                         r'got \(64, 64\)'):
        export_module(dense_module, tmp_path / 'out', 'onnx', input_size=(64, 64))
    with pytest.raises(ValueError, match=r'mean: expected one value per input channel, got \(0.5,\)'):
        export_module(dense_module, tmp_path / 'out', 'onnx', input_size=(3, 64, 64), mean=(0.5,))
    with pytest.raises(ValueError, match=r'Pair: expected a module returning one tensor, got tuple'):
        export_module(Pair(), tmp_path / 'out', 'onnx', input_size=(3, 8, 8))
    assert list(tmp_path.iterdir()) == []


def test_openvino_fp32_runs_in_f32(tmp_path, model):
    _runtime('openvino')
    import openvino as ov

    from timm_ghost.export._openvino import compile_config

    meta = export_model(model, tmp_path / 'ov', 'openvino', 'fp32', img_size=IMG).metadata
    assert meta['runtime']['compile_config'] == {'INFERENCE_PRECISION_HINT': 'f32'}
    compiled = ov.Core().compile_model(tmp_path / 'ov' / 'model.xml', 'CPU', compile_config('fp32'))
    assert compiled.get_property('INFERENCE_PRECISION_HINT') == ov.Type.f32


def test_cli_exports_weights_file(tmp_path, model, capsys):
    _runtime('onnx')
    from safetensors.torch import save_file

    save_file(model.state_dict(), tmp_path / 'w.safetensors')
    out = tmp_path / 'out'
    rc = cli_main(['export', 'ghostnet_050', str(out), '--format', 'onnx', '--weights', str(tmp_path / 'w.safetensors'),
                   '--img-size', str(IMG)])
    assert rc == 0
    meta = json.loads((out / 'export.json').read_text())
    assert meta['weights'] == str(tmp_path / 'w.safetensors') and meta['model'] == 'ghostnet_050'
    assert 'max |logit diff| vs eval-mode PyTorch: batch 1:' in capsys.readouterr().out


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_cli_unknown_format_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(['export', 'ghostnet_050', str(tmp_path / 'out'), '--format', 'tflite'])
    assert e.value.code == 2
    assert "argument --format: invalid choice: 'tflite'" in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()
    with pytest.raises(ValueError, match="format: expected one of onnx, openvino, executorch, got 'tflite'"):
        export_model(torch.nn.Identity(), tmp_path / 'out', 'tflite')


def test_cli_missing_extra_names_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, 'openvino', None)  # what an environment without the package imports
    rc = cli_main(['export', 'ghostnet_050', str(tmp_path / 'out'), '--format', 'openvino'])
    assert rc == 1
    assert _one_line_error(capsys) == ('timm-ghost export: error: --format openvino needs openvino (not installed): '
                                       'pip install "timm-ghost[openvino]"')
    assert not (tmp_path / 'out').exists()


def test_cli_empty_calibration_folder(tmp_path, model, capsys):
    _runtime('onnx')
    from safetensors.torch import save_file

    save_file(model.state_dict(), tmp_path / 'w.safetensors')
    (tmp_path / 'empty').mkdir()
    rc = cli_main(['export', 'ghostnet_050', str(tmp_path / 'out'), '--format', 'onnx', '--precision', 'int8',
                   '--calib', str(tmp_path / 'empty'), '--weights', str(tmp_path / 'w.safetensors')])
    assert rc == 1
    assert _one_line_error(capsys) == (f'timm-ghost export: error: --calib {tmp_path / "empty"}: no images found '
                                       '(expected an ImageFolder: DIR/<class>/<image>)')
    assert not (tmp_path / 'out').exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ['empty', 'w.safetensors']


def test_cli_refuses_non_empty_out_without_force(tmp_path, capsys):
    _runtime('onnx')
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'keep.txt').write_text('mine')
    rc = cli_main(['export', 'ghostnet_050', str(out), '--format', 'onnx', '--weights', str(tmp_path / 'absent')])
    assert rc == 1
    assert _one_line_error(capsys) == (
        f'timm-ghost export: error: OUT {out} exists and is not empty (pass --force to replace it)')
    with pytest.raises(FileExistsError, match=r'exists and is not empty \(pass --force to replace it\)'):
        export_model(torch.nn.Identity(), out, 'onnx')
    assert [p.name for p in out.iterdir()] == ['keep.txt'] and (out / 'keep.txt').read_text() == 'mine'


class _ExportDiffers(torch.nn.Module):
    """Pools to 10 'logits' and adds 1 only while being exported: an artifact that cannot verify."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1).repeat(1, 4)[:, :10]
        return y + 1 if torch.compiler.is_exporting() else y


def test_export_that_does_not_verify_leaves_nothing(tmp_path):
    _runtime('onnx')
    from timm_ghost.errors import ExportError

    with pytest.raises(ExportError, match=r'onnx fp32 export of m did not verify: max \|logit diff\| 1 > tolerance '
                                          r'0.0001 \(N\(0, 1\) images, seed 0, batch sizes 1 and 3\)'):
        export_model(_ExportDiffers(), tmp_path / 'out', 'onnx', img_size=16, model_name='m')
    assert list(tmp_path.iterdir()) == []


def test_int8_needs_calibration_folder(tmp_path, model):
    _runtime('onnx')
    with pytest.raises(ValueError, match=r'--precision int8 needs --calib DIR'):
        export_model(model, tmp_path / 'out', 'onnx', 'int8')
    with pytest.raises(ValueError, match=r'--precision bf16: onnx exports support fp32, int8'):
        export_model(model, tmp_path / 'out', 'onnx', 'bf16')
    assert not (tmp_path / 'out').exists()


def test_report_renders_the_export_tables_from_the_json():
    """docs/export.md's tables come from the committed benchmark JSON: one row per timed route and batch, the goal
    summaries, and one digits row per route."""
    bench = Path(__file__).resolve().parents[1] / 'benchmarks'
    sys.path.insert(0, str(bench))
    try:
        import report
    finally:
        sys.path.remove(str(bench))
    speed = report.load(bench / 'results' / 'export.json', 'export')
    digits = report.load(bench / 'results' / 'export_digits.json', 'export_digits')
    text = report.export_tables(speed, digits)
    numbered = [line for line in text.splitlines() if line.startswith('| ') and line[2].isdigit()]
    goals = speed['summary']
    assert len([r for r in numbered if r.count('|') == 8]) == len(speed['results'])
    assert len([r for r in numbered if r.count('|') == 5]) == (
        len(goals['int8_vs_fp32']) + len(goals['deploy_vs_builtin_export']))
    assert f'Digits validation top-1 ({digits["val_images"]} images' in text
    digit_rows = [line for line in text.splitlines() if line.count('|') == 6 and not line.startswith('|--')]
    assert len(digit_rows) == len(digits['results']) + 1  # and the header
    doc = (Path(__file__).resolve().parents[1] / 'docs' / 'export.md').read_text()
    assert doc.count(report.EXPORT_MARKERS[0]) == 1 and doc.count(report.EXPORT_MARKERS[1]) == 1
