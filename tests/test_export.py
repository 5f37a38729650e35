"""Verified exports (``timm_ghost.export``, ``timm-ghost export``): each format in fp32 end to end on ghostnet_050 at
64 px (export, reload with the runtime, logits within 1e-4 of the eval-mode model), any image module with a 4-D
output (``export_module``), int8 on a ghostnet_050 trained on the digits (held-out accuracy within 1 point of fp32),
batch bounds, bf16 where the CPU has it, quiet output, and bad input giving one line and leaving nothing.

Each runtime's tests skip when its package is absent (CI installs ``timm-ghost[export]``, so there they run). Every
test deletes what it wrote (artifacts run to megabytes; pytest keeps the temp folders of its last three runs).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import timm
import torch
from helpers import randomize_

from timm_ghost.export import (
    BF16_RTOL,
    FP32_ATOL,
    MIN_HOLDOUT,
    calibration_split,
    export_form,
    export_model,
    export_module,
    load_export,
)
from timm_ghost_cli import main as cli_main

IMG = 64
DIGITS_IMG = 32
FORMATS = ['onnx', 'openvino', 'executorch']
PACKAGE = {'onnx': 'onnxruntime', 'openvino': 'openvino', 'executorch': 'executorch'}
ARTIFACTS = {'onnx': ['model.onnx'], 'openvino': ['model.xml', 'model.bin'], 'executorch': ['model.pte']}


@pytest.fixture(scope='module')
def model() -> torch.nn.Module:
    return randomize_(timm.create_model('ghostnet_050'), seed=0).eval()


@pytest.fixture(autouse=True)
def _delete_what_the_test_wrote(tmp_path: Path) -> Iterator[None]:
    yield
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / 'out'


def _train_digits(root: Path, name: str) -> tuple:
    """``(model, validation images, validation targets)``: ``name`` trained from scratch on the digits ImageFolder
    ``root`` at 32 px by the demo's own training function (4 epochs: about 95 % validation top-1 at every width,
    8-15 s on 2 cores), and the 360 validation images under the model's eval transform (the one exports calibrate
    with)."""
    from timm.data import create_transform
    from timm.utils import random_seed
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    from timm_ghost.demo import DemoConfig, create_digits_loaders, train_classifier

    cfg = DemoConfig(img_size=DIGITS_IMG, epochs=4)
    random_seed(cfg.seed)
    model = timm.create_model(name, num_classes=10, drop_path_rate=cfg.drop_path_rate)
    model.to(memory_format=torch.channels_last)
    train_loader, val_loader, data_config = create_digits_loaders(root, model, cfg)
    train_classifier(model, train_loader, val_loader, cfg, progress=False, log=lambda msg: None)
    model = model.to(memory_format=torch.contiguous_format).eval()
    model.pretrained_cfg = {**model.pretrained_cfg, **data_config, 'label_names': [str(i) for i in range(10)]}
    val = ImageFolder(str(root / 'validation'), transform=create_transform(**data_config))
    images, targets = map(torch.cat, zip(*DataLoader(val, batch_size=120)))
    return model, images, targets


@pytest.fixture(scope='module')
def digits(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """``(model, data folder, validation images, validation targets)``: ghostnet_050 trained on scikit-learn's
    digits (:func:`_train_digits`) and the ImageFolder it was trained on (``train`` / ``validation``)."""
    from timm_ghost.data import write_digits_imagefolder

    root = write_digits_imagefolder(tmp_path_factory.mktemp('digits') / 'data', img_size=DIGITS_IMG).root
    model, images, targets = _train_digits(root, 'ghostnet_050')
    yield model, root, images, targets
    shutil.rmtree(root, ignore_errors=True)


def _small_folder(src: Path, dst: Path, n: int) -> Path:
    """An ImageFolder of the first ``n`` images of ``src`` (spread over its classes in turn)."""
    classes = sorted(p.name for p in src.iterdir())
    files = {c: sorted((src / c).iterdir()) for c in classes}
    for i in range(n):
        c = classes[i % len(classes)]
        (dst / c).mkdir(parents=True, exist_ok=True)
        shutil.copy(files[c][i // len(classes)], dst / c)
    return dst


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


def _record_executorch_lowering(monkeypatch: pytest.MonkeyPatch) -> list:
    """The programs ``executorch.exir.to_edge_transform_and_lower`` returns while the test runs (the export calls it
    by that name at build time), so a test can look at the lowered graph of the export it made."""
    import executorch.exir

    real, seen = executorch.exir.to_edge_transform_and_lower, []

    def recording(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(executorch.exir, 'to_edge_transform_and_lower', recording)
    return seen


@pytest.mark.parametrize('fmt', FORMATS)
def test_fp32_export_reloads_within_tolerance(model, tmp_path, fmt, monkeypatch):
    _runtime(fmt)
    lowered = _record_executorch_lowering(monkeypatch) if fmt == 'executorch' else []
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
    run = load_export(out, threads=1)
    got = run(x.numpy())
    assert got.shape == (2, 1000)
    assert np.abs(got - ref).max() <= FP32_ATOL
    if fmt != 'executorch':
        assert meta['batch'] == {'dynamic': True, 'max': None}
        return
    # ExecuTorch's program is planned for batches up to max_batch (default 32): at and below it the export runs, above
    # it load_export refuses before the runtime sees the batch
    assert meta['batch'] == {'dynamic': True, 'max': 32}
    for n in (16, 17, 32):
        x = torch.randn(n, 3, IMG, IMG, generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            ref = model(x).numpy()
        assert np.abs(run(x.numpy()) - ref).max() <= FP32_ATOL, n
    with pytest.raises(ValueError) as e:
        run(np.zeros((33, 3, IMG, IMG), np.float32))
    assert str(e.value) == (f'a batch of 33 images is more than this export takes: max_batch 32 (batch.max in '
                            f'{out / "export.json"}); split the batch, or export with max_batch >= 33')
    # the export form in one delegate: the SE gate per half and 4-D, XNNPACK takes the network whole (plus the
    # classifier after the flatten); with the deploy block's 2-D mean, concat and slices, 14 means and 14 slices ran
    # outside it, between 16 delegates (after to_executorch the flatten's view_copy may be ExecuTorch's own view op)
    assert len(lowered) == 1
    graph = lowered[0].exported_program().graph
    targets = [str(getattr(n.target, '__name__', n.target)) for n in graph.nodes if n.op == 'call_function']
    assert targets.count('executorch_call_delegate') == 2, targets
    outside = {t for t in targets if t.startswith('aten.')}
    assert outside <= {'aten.view_copy.default'}, outside


@pytest.mark.parametrize('name', ['ghostnet_050', 'ghostnet_100', 'ghostnet_130'])
def test_onnxruntime_padded_form_at_every_width(tmp_path, name):
    """ONNX Runtime's export form (feature maps padded to multiples of 16 channels) at every width: fp32 within 1e-4
    of the eval model, loaded with idle threads spinning (the default: ONNX Runtime's own, and about 1.3x faster at
    batch 1 for ghostnet_100 on 2 threads) and without. Its int8 export is tested on trained weights at every width
    (test_onnxruntime_int8_form_agrees_on_trained_weights_at_every_width: random weights give near-tied logits among
    1000 classes, which says little about a quantizer)."""
    _runtime('onnx')
    from timm_ghost.export._onnxruntime import session_options
    from timm_ghost.export.form import GhostBottleneckPadded

    model = randomize_(timm.create_model(name), seed=0).eval()
    form = export_form(model, pad=16)
    padded = [m for m in form.modules() if isinstance(m, GhostBottleneckPadded)]
    assert len(padded) == 16
    assert all(c.out_channels % 16 == 0 for b in padded for c in b.modules() if isinstance(c, torch.nn.Conv2d))
    result = export_model(model, tmp_path / 'fp32', 'onnx', 'fp32', img_size=IMG)
    meta = result.metadata
    assert meta['form'] == 'timm-ghost deploy (BN folded), feature maps padded to multiples of 16 channels'
    assert max(meta['verification']['max_abs_diff'].values()) <= FP32_ATOL
    x = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = model(x).numpy()
    for spin in (True, False):
        got = load_export(tmp_path / 'fp32', threads=2, spin=spin)(x.numpy())
        assert np.abs(got - ref).max() <= FP32_ATOL, spin
    assert session_options(2, spin=True).get_session_config_entry('session.intra_op.allow_spinning') == '1'
    options = session_options(3, spin=False)
    assert options.get_session_config_entry('session.intra_op.allow_spinning') == '0'
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (3, 1)


def test_padding_keeps_feature_maps_of_other_modules_and_refuses_other_models(model):
    """Only a classifier's inner maps are padded: a features_only GhostNet hands its maps out, so it keeps their
    widths; pad_channels on anything but a deploy GhostNet classifier says what it expects."""
    from timm.utils import reparameterize_model

    from timm_ghost.export.form import GhostBottleneckPadded, pad_channels

    features = randomize_(timm.create_model('ghostnet_050', features_only=True), seed=0).eval()
    form = export_form(features, pad=16)
    assert not any(isinstance(m, GhostBottleneckPadded) for m in form.modules())
    x = torch.randn(1, 3, IMG, IMG)
    with torch.no_grad():
        assert [f.shape[1] for f in form(x)] == [f.shape[1] for f in features(x)]
    with pytest.raises(ValueError) as e:
        pad_channels(model)  # not folded: the eval model
    assert str(e.value) == ('pad_channels: expected a deploy GhostNet classifier (timm.utils.reparameterize_model of '
                            'a timm-ghost GhostNet)')
    assert isinstance(pad_channels(reparameterize_model(model)), torch.nn.Module)


@pytest.mark.parametrize('fmt', FORMATS)
def test_int8_export_of_a_trained_model_keeps_its_accuracy(digits, out, fmt, capfd):
    """int8 top-1 on the 360 held-out validation digits at most 1 point below fp32's, with each runtime's own
    quantizer, on a trained model (random weights answer one class for almost every image, so a broken quantizer
    would pass there). The export prints nothing by default."""
    _runtime(fmt)
    model, root, images, targets = digits
    with torch.no_grad():
        fp32 = model(images).argmax(1)
    fp32_top1 = 100 * (fp32 == targets).double().mean().item()
    assert fp32_top1 >= 90, fp32_top1  # trained: a quantizer that breaks the model has something to break
    assert torch.bincount(fp32, minlength=10).min() >= 25  # every class answered (36 images each)
    capfd.readouterr()
    # the speed check (an fp32 build timed beside int8) on ONNX Runtime only: ExecuTorch's fp32 build is a minute
    result = export_model(model, out, fmt, 'int8', calib=root / 'train', calib_size=64, holdout_size=64,
                          speed_check=fmt == 'onnx')
    run = load_export(out, threads=1)
    logits = np.concatenate([run(x.numpy()) for x in images.split(30)])
    assert capfd.readouterr() == ('', '')  # quiet: no progress bars, runtime probes or log lines
    int8_top1 = 100 * (torch.from_numpy(logits).argmax(1) == targets).double().mean().item()
    assert int8_top1 >= fp32_top1 - 1.0, f'{fmt} int8 top-1 {int8_top1:.2f} % vs fp32 {fp32_top1:.2f} %'
    meta = result.metadata
    assert meta['quantization']['calib_images'] == 64 and meta['labels'] == [str(i) for i in range(10)]
    assert meta['verification']['heldout_images'] == 64 and meta['verification']['heldout_top1_agreement'] >= 0.9
    if fmt == 'onnx':  # measured here, so only its shape is asserted (tests/test_export_auto.py: its use)
        assert sorted(meta['speed']['int8_vs_fp32']) == ['1', '32']
        assert all(v > 0 for prec in ('fp32', 'int8') for v in meta['speed']['images_per_s'][prec].values())
    else:
        assert 'speed' not in meta
    with torch.no_grad():
        ref = model(images[:30]).numpy()
    assert np.abs(logits[:30] - ref).max() > 1e-3  # quantized, not fp32


@pytest.mark.parametrize('name', ['ghostnet_050', 'ghostnet_100', 'ghostnet_130'])
def test_onnxruntime_int8_form_agrees_on_trained_weights_at_every_width(digits, out, name):
    """ONNX Runtime's int8 form (padded maps, SE gates folded into their convs, spatial means as GlobalAveragePool:
    no float island left) at every width, trained on the digits: top-1 on the 360 validation digits at most 1 point
    below fp32's, agreeing with fp32 on at least 95 % of them, and exact in its fp32 form before quantization."""
    _runtime('onnx')
    from timm_ghost.export.form import GhostBottleneckPadded

    model, root, images, targets = digits
    if name != 'ghostnet_050':
        model, images, targets = _train_digits(root, name)
    form = export_form(model, pad=16, fold_gates=True)
    gated = [m for m in form.modules() if isinstance(m, GhostBottleneckPadded) and m.se_expand_a is not None]
    assert len(gated) == 7 and all(m.gate_in_expand for m in gated)  # the seven SE blocks of the table
    with torch.no_grad():
        fp32_logits = model(images)
        assert (form(images) - fp32_logits).abs().max() <= FP32_ATOL
    fp32 = fp32_logits.argmax(1)
    fp32_top1 = 100 * (fp32 == targets).double().mean().item()
    assert fp32_top1 >= 90, fp32_top1
    result = export_model(model, out, 'onnx', 'int8', calib=root / 'train', calib_size=64, holdout_size=64,
                          speed_check=False)
    assert result.metadata['form'].endswith(', SE gates folded into their convs')
    assert 'speed' not in result.metadata
    logits = torch.from_numpy(load_export(out, threads=1)(images.numpy()))
    int8_top1 = 100 * (logits.argmax(1) == targets).double().mean().item()
    assert int8_top1 >= fp32_top1 - 1.0, f'{name} int8 top-1 {int8_top1:.2f} % vs fp32 {fp32_top1:.2f} %'
    assert (logits.argmax(1) == fp32).double().mean() >= 0.95
    # the largest logit error over the 360 digits, relative to the largest fp32 logit: quantized, not fp32, and near it
    # (measured 0.068 / 0.113 / 0.091 for the three widths where int8 weights take 7 bits, int8_weights_saturate)
    err = (logits - fp32_logits).abs().max().item() / fp32_logits.abs().max().item()
    assert 1e-4 < err <= 0.2, err


def test_held_out_check_needs_enough_images(digits, tmp_path):
    """An agreement on a handful of held-out images would pass a broken int8 export: too few is refused, naming the
    parameter, before anything is exported."""
    model, root, _, _ = digits
    config = {'input_size': (3, DIGITS_IMG, DIGITS_IMG), 'interpolation': 'bilinear', 'mean': (0.5,) * 3,
              'std': (0.5,) * 3, 'crop_pct': 1.0, 'crop_mode': 'center'}
    with pytest.raises(ValueError, match=f'^holdout_size: expected at least {MIN_HOLDOUT} held-out images for the '
                                         'agreement check, got 0$'):
        export_model(model, tmp_path / 'out', 'onnx', 'int8', calib=root / 'train', holdout_size=0)
    folder = _small_folder(root / 'train', tmp_path / 'calib', 65)  # one image more than --calib-size 64
    with pytest.raises(ValueError) as e:
        export_model(model, tmp_path / 'out', 'onnx', 'int8', calib=folder, calib_size=64)
    assert str(e.value) == (f'--calib-size 64: {folder} has 65 images, which leaves 1 for the held-out check; it '
                            f'needs at least {MIN_HOLDOUT} (lower --calib-size to 33 or add images)')
    _, calib, heldout = calibration_split(folder, config, 33, 500)  # the advice works
    assert (len(calib), len(heldout)) == (33, 32)
    _, calib, heldout = calibration_split(folder, config, 256, 500)  # fewer images than --calib-size
    assert (len(calib), len(heldout)) == (33, 32)
    few = _small_folder(root / 'train', tmp_path / 'few', MIN_HOLDOUT)
    with pytest.raises(ValueError) as e:
        calibration_split(few, config, 256, 500)
    assert str(e.value) == (f'--calib {few}: 32 images found; calibration and the held-out check need at least 33 '
                            '(32 held out)')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['calib', 'few']


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


@pytest.mark.parametrize('fmt', FORMATS)
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
    with pytest.raises(TypeError, match=r"model: expected a torch.nn.Module \(e.g. timm.create_model\('ghostnet_100', "
                                        r"pretrained=True\)\), got str 'ghostnet_050'"):
        export_model('ghostnet_050', tmp_path / 'out', 'onnx')
    with pytest.raises(TypeError, match=r'model: expected a torch.nn.Module .*, got NoneType None'):
        export_module(None, tmp_path / 'out', 'onnx', input_size=(3, 8, 8))
    assert list(tmp_path.iterdir()) == []


def test_openvino_fp32_runs_in_f32(tmp_path, model):
    _runtime('openvino')
    import openvino as ov

    from timm_ghost.export._openvino import compile_config

    meta = export_model(model, tmp_path / 'ov', 'openvino', 'fp32', img_size=IMG).metadata
    assert meta['runtime']['compile_config'] == {'INFERENCE_PRECISION_HINT': 'f32'}
    compiled = ov.Core().compile_model(tmp_path / 'ov' / 'model.xml', 'CPU', compile_config('fp32'))
    assert compiled.get_property('INFERENCE_PRECISION_HINT') == ov.Type.f32


def test_openvino_keeps_a_bounded_number_of_compiled_shapes(tmp_path, model):
    """Each batch size met is compiled with its shape fixed; only the last MAX_COMPILED_SHAPES stay compiled, and one
    dropped is compiled again when met again."""
    _runtime('openvino')
    from timm_ghost.export._openvino import MAX_COMPILED_SHAPES, load

    export_model(model, tmp_path / 'ov', 'openvino', 'fp32', img_size=IMG)
    run = load(tmp_path / 'ov', 'fp32', threads=1)
    x = torch.randn(MAX_COMPILED_SHAPES + 2, 3, IMG, IMG, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = model(x).numpy()
    for n in range(1, MAX_COMPILED_SHAPES + 3):
        assert np.abs(run(x[:n].numpy()) - ref[:n]).max() <= FP32_ATOL
    assert run.cache_info().currsize == MAX_COMPILED_SHAPES == 8
    assert np.abs(run(x[:1].numpy()) - ref[:1]).max() <= FP32_ATOL  # batch 1 was dropped: compiled again
    info = run.cache_info()
    assert (info.currsize, info.misses, info.hits) == (MAX_COMPILED_SHAPES, MAX_COMPILED_SHAPES + 3, 0)


def test_openvino_bf16_export_where_the_cpu_has_bf16(tmp_path, model):
    _runtime('openvino')
    import openvino as ov

    from timm_ghost.export._openvino import bf16_supported

    if not bf16_supported():
        pytest.skip('hardware: OpenVINO reports no native bf16 on this CPU (OPTIMIZATION_CAPABILITIES)')
    out = tmp_path / 'ov'
    meta = export_model(model, out, 'openvino', 'bf16', img_size=IMG).metadata
    assert (meta['precision'], meta['runtime']['compile_config']) == ('bf16', {'INFERENCE_PRECISION_HINT': 'bf16'})
    v = meta['verification']
    assert v['passed'] and max(v['max_abs_diff'].values()) <= v['tolerance']
    compiled = ov.Core().compile_model(out / 'model.xml', 'CPU', meta['runtime']['compile_config'])
    assert compiled.get_property('INFERENCE_PRECISION_HINT') == ov.Type.bf16
    x = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        ref = model(x).numpy()
    diff = np.abs(load_export(out, threads=1)(x.numpy()) - ref).max()
    assert FP32_ATOL < diff <= BF16_RTOL * np.abs(ref).max()  # runs in bf16 (not fp32), within the tolerance


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
    lines = capsys.readouterr().out.splitlines()  # quiet by default: the result and its numbers
    assert lines[0] == f'wrote {out}: model.onnx, export.json' and len(lines) == 2
    assert lines[1].startswith('max |logit diff| vs eval-mode PyTorch: batch 1: ')
    assert lines[1].endswith(' (tolerance 0.0001)')


def test_export_prints_nothing_unless_verbose(tmp_path):
    """In a fresh process (ExecuTorch's runtime probes the CPU, printing from C++, when it is first loaded; NNCF logs
    and draws progress while it quantizes): an ExecuTorch export and an OpenVINO int8 export, reloaded and run,
    write nothing to stdout or stderr (int8's speed warning, which is meant to be seen, is off here: on an 8 px toy
    net int8 can be the slower)."""
    for fmt in ('executorch', 'openvino'):
        _runtime(fmt)
    from timm_ghost.data import write_digits_imagefolder

    calib = write_digits_imagefolder(tmp_path / 'digits', img_size=8).root / 'validation'
    script = textwrap.dedent(f"""
        import warnings, torch
        warnings.simplefilter('error')  # none may escape either
        from timm_ghost.export import export_module, load_export
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 10, 1))
        export_module(net, {str(tmp_path / 'pte')!r}, 'executorch', input_size=(3, 8, 8))
        load_export({str(tmp_path / 'pte')!r})(torch.randn(2, 3, 8, 8).numpy())
        export_module(net, {str(tmp_path / 'ov')!r}, 'openvino', 'int8', input_size=(3, 8, 8), calib={str(calib)!r},
                      calib_size=32, holdout_size=32, min_agreement=0.0, speed_check=False)
        load_export({str(tmp_path / 'ov')!r})(torch.randn(2, 3, 8, 8).numpy())
    """)
    done = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (done.stdout, done.stderr) == ('', '')
    assert sorted(p.name for p in (tmp_path / 'pte').iterdir()) == ['export.json', 'model.pte']


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
    for package in ('openvino', 'nncf'):  # what an environment without the extra imports, whatever is installed here
        monkeypatch.setitem(sys.modules, package, None)
    rc = cli_main(['export', 'ghostnet_050', str(tmp_path / 'out'), '--format', 'openvino'])
    assert rc == 1
    assert _one_line_error(capsys) == ('timm-ghost export: error: --format openvino needs openvino, nncf (not '
                                       'installed): pip install "timm-ghost[openvino]"')
    assert not (tmp_path / 'out').exists()


def test_executorch_on_a_torch_too_old_for_it_is_one_line(tmp_path, capsys, monkeypatch):
    """executorch 1.5 on torch 2.6 (the core's floor) fails deep inside torch.export; the export says so first."""
    _runtime('executorch')
    monkeypatch.setattr(torch, '__version__', '2.6.0+cu124')
    rc = cli_main(['export', 'ghostnet_050', str(tmp_path / 'out'), '--format', 'executorch'])
    assert rc == 1
    assert _one_line_error(capsys) == (
        'timm-ghost export: error: --format executorch needs torch >= 2.14, this is torch 2.6.0+cu124: pip install '
        '"torch>=2.14" (or pip install "timm-ghost[executorch]", which asks for it)')
    assert not (tmp_path / 'out').exists()
    monkeypatch.setattr(torch, '__version__', '2.14.1')
    from timm_ghost.export.api import require_runtime
    assert require_runtime('executorch').EXTRA == 'executorch'


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
