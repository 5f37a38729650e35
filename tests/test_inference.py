"""``timm_ghost.inference_model``: folded, channels_last, inductor-compiled inference whose outputs stay within
1e-4 of the eval model (every width, ``features_only``, an smp segmenter, a torchvision detector), and its fallback to
the folded eager model with one warning line where ``torch.compile`` cannot run (no C++ compiler, simulated)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import timm
import torch
import torch.nn as nn
from helpers import MODEL_NAMES, randomize_

import timm_ghost
from timm_ghost.inference import INDUCTOR_OPTIONS, DeferredInferenceModel, InferenceModel, compile_report

TOL = 1e-4
# The default options (max_autotune included) are compiled at ghostnet_050, the other widths and the tests of something
# else (frozen weights, the feature maps, smp) without max_autotune, whose GEMM tuning (the head's 1x1 conv and the
# classifier, no width-specific code of ours) is about half of each compile on 2 cores. bench_peers.py's full run
# compiles every width with the default options.
UNTUNED = {k: v for k, v in INDUCTOR_OPTIONS.items() if k != 'max_autotune'}
X64 = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))


def _diff(a, b) -> float:
    if isinstance(a, (list, tuple)):
        return max(_diff(u, v) for u, v in zip(a, b))
    return (a - b).abs().max().item()


def _eval_out(model: nn.Module, x: torch.Tensor):
    with torch.no_grad():
        return model.eval()(x)


def _norms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_compiled_model_equals_the_eval_model_at_every_width(name):
    model = randomize_(timm.create_model(name))
    model.train()
    options = INDUCTOR_OPTIONS if name == 'ghostnet_050' else UNTUNED
    fast = timm_ghost.inference_model(model, batch_size=2, img_size=64, options=options)
    assert isinstance(fast, InferenceModel) and fast.backend == 'inductor', fast.fallback_reason
    assert fast.options == options, fast.options
    assert list(fast.compile_seconds) == [(2, 3, 64, 64)] and fast.compile_seconds[(2, 3, 64, 64)] > 0
    assert model.training and _norms(model) > 0 and _norms(fast) == 0  # the given model is left as it was
    assert fast.num_classes == 1000 and fast.pretrained_cfg['architecture'] == name  # the model's own attributes
    out = fast(X64)
    assert out.shape == (2, 1000) and _diff(out, _eval_out(model, X64)) <= TOL
    assert len(fast.compile_seconds) == 1  # the same shape does not compile again
    assert compile_report(fast)[0] == 'backend: inductor'
    assert compile_report(fast)[1].startswith('compiled 2x3x64x64 in ')


def test_weights_are_frozen_into_the_compiled_graph():
    """freezing is in force while dynamo traces: the compiled model holds the weights as constants, so changing the
    module's weight afterwards changes the eager output and not the compiled one."""
    model = randomize_(timm.create_model('ghostnet_050')).eval()
    fast = timm_ghost.inference_model(model, batch_size=2, img_size=64, options=UNTUNED)
    before = fast(X64)
    with torch.no_grad():
        fast.model.conv_head.weight.mul_(2.0)
    assert fast.backend == 'inductor' and _diff(fast(X64), before) == 0.0
    assert _diff(fast.model(X64), before) > 1e-2


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).relu().mean((2, 3))


def test_more_models_than_dynamos_recompile_limit_all_compile():
    """Each model a process compiles is a recompile of the same forward code (frozen weights are guarded by
    identity); past dynamo's default limit of 8 it would run eager while reporting inductor."""
    x = torch.randn(1, 3, 8, 8)
    for seed in range(10):
        torch.manual_seed(seed)
        model = _Tiny().eval()
        fast = timm_ghost.inference_model(model)
        out = fast(x)
        with torch.no_grad():
            fast.model.conv.weight.zero_()  # frozen into the graph: only eager would now give the bias alone
        assert fast.backend == 'inductor' and _diff(fast(x), out) == 0.0 and _diff(fast.model(x), out) > 0, seed


def test_features_only_maps_equal_the_eval_model():
    """Feature 0 is the stem conv's raw output (timm's tap): its norm stays unfolded so that map stays exact."""
    model = randomize_(timm.create_model('ghostnet_100', features_only=True))
    fast = timm_ghost.inference_model(model, options=UNTUNED)
    assert fast.feature_info.channels() == model.feature_info.channels() == [16, 24, 40, 80, 160]
    assert _norms(fast) == 1  # the stem's
    maps = fast(X64)
    expected = _eval_out(model, X64)
    assert [m.shape[1:] for m in maps] == [e.shape[1:] for e in expected] == [
        (16, 32, 32), (24, 16, 16), (40, 8, 8), (80, 4, 4), (160, 2, 2)]
    assert _diff(maps, expected) <= TOL and fast.backend == 'inductor'


def test_a_failing_compile_falls_back_to_the_folded_model_with_one_warning(monkeypatch):
    def no_compiler(*args, **kwargs):
        raise RuntimeError('InvalidCxxCompiler: No working C++ compiler found\nsecond line of the traceback text')

    monkeypatch.setattr(torch, 'compile', no_compiler)
    model = randomize_(timm.create_model('ghostnet_050')).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        fast = timm_ghost.inference_model(model, batch_size=2, img_size=64)
        out = fast(X64)
    assert [str(w.message) for w in caught] == [
        'timm-ghost: inference_model runs the folded eager model: torch.compile failed (RuntimeError: '
        'InvalidCxxCompiler: No working C++ compiler found)']
    assert fast.backend == 'eager' and _norms(fast) == 0 and _diff(out, _eval_out(model, X64)) <= TOL
    assert compile_report(fast) == [f'backend: eager ({fast.fallback_reason})']


def test_a_compiled_model_that_disagrees_is_not_used(monkeypatch):
    monkeypatch.setattr(torch, 'compile', lambda model, **kwargs: (lambda x: model(x) + 1e-3))
    model = randomize_(timm.create_model('ghostnet_050')).eval()
    with pytest.warns(RuntimeWarning, match=r'the compiled model differs from the eager one by 0\.001 > atol 0\.0001'):
        fast = timm_ghost.inference_model(model, batch_size=1, img_size=64)
    assert fast.backend == 'eager' and _diff(fast(X64), _eval_out(model, X64)) <= TOL


def test_no_compiler_in_a_fresh_process_falls_back_with_one_line(tmp_path):
    """A machine without a C++ compiler: CXX names none and inductor's cache is empty, so inductor must build."""
    code = textwrap.dedent('''
        import timm, torch, timm_ghost
        model = timm.create_model('ghostnet_050').eval()
        fast = timm_ghost.inference_model(model, batch_size=1, img_size=64)
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            print(fast.backend, float((fast(x) - model(x)).abs().max()))
    ''')
    env = dict(os.environ, CXX=str(tmp_path / 'no-such-c++'), CC=str(tmp_path / 'no-such-cc'),
               TORCHINDUCTOR_CACHE_DIR=str(tmp_path / 'inductor'), OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    backend, diff = proc.stdout.split()
    assert backend == 'eager' and float(diff) <= TOL
    ours = [line for line in proc.stderr.splitlines() if 'timm-ghost: inference_model' in line]
    assert len(ours) == 1 and 'No working C++ compiler' in ours[0], proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr


def test_compile_false_is_the_folded_channels_last_model():
    model = randomize_(timm.create_model('ghostnet_050')).eval()
    fast = timm_ghost.inference_model(model, compile=False)
    assert fast.backend == 'eager' and fast.fallback_reason is None
    assert fast.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    assert _diff(fast(X64), _eval_out(model, X64)) <= TOL and fast.compile_seconds == {}


def test_smp_segmenter_with_a_ghostnet_encoder():
    smp = pytest.importorskip('segmentation_models_pytorch')
    model = randomize_(smp.Unet('tu-ghostnet_050', encoder_weights=None, classes=2))
    fast = timm_ghost.inference_model(model, batch_size=2, img_size=64, options=UNTUNED)
    assert fast.backend == 'inductor' and _norms(fast.encoder) == 1  # the stem's: smp's decoder takes its raw map
    out = fast(X64)
    assert out.shape == (2, 2, 64, 64) and _diff(out, _eval_out(model, X64)) <= TOL


def test_torchvision_detector_gets_its_backbone_compiled():
    from torchvision.models.detection import FasterRCNN

    from timm_ghost.detection import ghostnet_fpn_backbone

    detector = FasterRCNN(randomize_(ghostnet_fpn_backbone('ghostnet_050')), num_classes=3, min_size=96,
                          max_size=96).eval()
    fast = timm_ghost.inference_model(detector, compile=False)
    assert isinstance(fast, FasterRCNN) and isinstance(fast.backbone, InferenceModel)
    assert fast is not detector and not isinstance(detector.backbone, InferenceModel)
    images = [torch.rand(3, 96, 96, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    with torch.no_grad():
        expected = detector(images)
    got = fast(images)
    assert [d['boxes'].shape for d in got] == [d['boxes'].shape for d in expected]
    features = fast.backbone(torch.rand(1, 3, 96, 96))
    assert set(features) == {'0', '1', '2', '3', 'pool'}
    with pytest.raises(ValueError, match='a detector takes images of any size: leave batch_size out'):
        timm_ghost.inference_model(detector, batch_size=1)


def test_errors_name_the_parameter():
    model = timm.create_model('ghostnet_050')
    with pytest.raises(TypeError, match='inference_model: model must be a torch.nn.Module, got str'):
        timm_ghost.inference_model('ghostnet_050')
    with pytest.raises(ValueError, match=r'inference_model: batch_size must be an int >= 1, got 0'):
        timm_ghost.inference_model(model, batch_size=0)
    fast = timm_ghost.inference_model(model, compile=False)
    with pytest.raises(RuntimeError, match='an inference model does not train: its BatchNorms are folded'):
        fast.train()


def test_deferred_model_loads_a_checkpoint_then_runs_folded():
    source = randomize_(timm.create_model('ghostnet_050', num_classes=10))
    deferred = DeferredInferenceModel(timm.create_model('ghostnet_050', num_classes=10), compile=False)
    assert deferred.state_dict().keys() == source.state_dict().keys()
    deferred.load_state_dict(source.state_dict())
    assert sum(p.numel() for p in deferred.parameters()) == sum(p.numel() for p in source.parameters())
    out = deferred.eval()(X64)
    assert isinstance(deferred.fast, InferenceModel) and _diff(out, _eval_out(source, X64)) <= TOL
    deferred.to(torch.float64)
    assert deferred.fast is None  # rebuilt for the new dtype on the next call
