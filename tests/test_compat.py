"""timm_ghost._compat's stand-ins for the timm APIs newer than the floor (timm 1.0.21): each gives what the newer timm
gives, and its own path (taken on an older timm) is exercised here on any timm."""
from __future__ import annotations

import argparse
import json
import os
import pickle

import pytest
import timm
import torch
import torch.nn.functional as F
from helpers import randomize_

from timm_ghost import _compat


@pytest.mark.parametrize('version, release', [
    ('1.0.21', (1, 0, 21)), ('1.0.29.dev0', (1, 0, 29)), ('1.0.30rc1', (1, 0, 30)), ('1.0.31+cpu', (1, 0, 31)),
    ('2.0', (2, 0)),
])
def test_release_numbers(version, release):
    assert _compat._release(version) == release


def test_the_installed_timm_is_in_the_supported_range():
    assert _compat.timm_at_least(_compat.TIMM_FLOOR)
    assert _compat._release(_compat.TIMM_FLOOR) == (1, 0, 21) and _compat._release(_compat.TIMM_TESTED) == (1, 0, 31)
    assert _compat.timm_at_least(timm.__version__) and not _compat.timm_at_least('99.0')


def test_get_device_dtype_rule():
    """timm.layers.get_device_dtype (1.0.29) and the stand-in: explicit values first, else the first parameter's."""
    model = torch.nn.Linear(3, 2).to(torch.bfloat16)
    for rule in (_compat.get_device_dtype, _compat._get_device_dtype):
        assert rule(model) == {'device': torch.device('cpu'), 'dtype': torch.bfloat16}
        assert rule(model, dtype=torch.float16) == {'device': torch.device('cpu'), 'dtype': torch.float16}
        assert rule(torch.nn.ReLU()) == {'device': None, 'dtype': None}


def test_reset_classifier_keeps_the_models_dtype():
    model = timm.create_model('ghostnet_050', num_classes=4, dtype=torch.bfloat16)
    model.reset_classifier(7)
    assert model.classifier.weight.dtype == torch.bfloat16 and model.classifier.weight.shape == (7, 1280)


@pytest.mark.parametrize('smoothing', [0., 0.1])
def test_classification_task_loss_is_cross_entropy_with_smoothing(smoothing):
    model = randomize_(timm.create_model('ghostnet_050', num_classes=10), seed=3).eval()  # no dropout draws
    task = _compat.classification_task(model, smoothing=smoothing)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 3, 32, 32, generator=gen), torch.randint(0, 10, (4,), generator=gen)
    result = task(x, y)
    assert result['output'].shape == (4, 10)
    expected = F.cross_entropy(result['output'], y, label_smoothing=smoothing)
    assert (result['loss'] - expected).abs().item() < 1e-5
    # before timm 1.0.23 (no timm.task) the stand-in gives the same
    step = _compat._ClassificationStep(model, task.criterion)
    assert (step(x, y)['loss'] - expected).abs().item() < 1e-5


@pytest.mark.parametrize('smoothing', [-0.1, 1.0])
def test_classification_task_refuses_a_smoothing_outside_0_1(smoothing):
    with pytest.raises(ValueError, match=rf'smoothing must be in \[0, 1\), got {smoothing}'):
        _compat.classification_task(torch.nn.Identity(), smoothing=smoothing)


# timm's own path where the installed timm has it, the stand-in on every timm
@pytest.mark.parametrize('native', [True, False] if _compat.timm_at_least('1.0.31') else [False])
def test_save_for_hf_writes_the_data_config(tmp_path, monkeypatch, native):
    """``data_config`` reaches config.json's pretrained_cfg through timm's own argument (1.0.31) and through the
    stand-in (older timm), which leaves the model's pretrained_cfg as it was."""
    monkeypatch.setattr(_compat, 'timm_at_least', lambda version: native)
    model = randomize_(timm.create_model('ghostnet_050', num_classes=3), seed=1)
    before = dict(model.pretrained_cfg)
    data_config = {'input_size': (3, 16, 16), 'interpolation': 'bilinear', 'mean': (0.5, 0.5, 0.5),
                   'std': (0.25, 0.25, 0.25), 'crop_pct': 1.0, 'crop_mode': 'center'}
    _compat.save_for_hf(model, tmp_path, model_config={'label_names': ['a', 'b', 'c']}, data_config=data_config)
    config = json.loads((tmp_path / 'config.json').read_text())
    cfg = config['pretrained_cfg']
    assert (cfg['input_size'], cfg['interpolation'], cfg['crop_pct'], cfg['crop_mode']) == (
        [3, 16, 16], 'bilinear', 1.0, 'center')
    assert (cfg['mean'], cfg['std']) == ([0.5] * 3, [0.25] * 3)
    assert cfg.get('pool_size') is None and 'test_input_size' not in cfg and 'test_crop_pct' not in cfg
    assert config['num_classes'] == 3 and config['label_names'] == ['a', 'b', 'c']
    assert model.pretrained_cfg == before
    loaded = timm.create_model(f'local-dir:{tmp_path}', pretrained=True)
    assert torch.equal(loaded.classifier.weight, model.classifier.weight)


def _train_py_checkpoint(path, marker=None):
    model = randomize_(timm.create_model('ghostnet_050', num_classes=10), seed=5)
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    checkpoint = {'epoch': 3, 'state_dict': model.state_dict(), 'state_dict_ema': ema,
                  'args': argparse.Namespace(model='ghostnet_050')}
    if marker is not None:
        class Payload:
            def __reduce__(self):
                return os.makedirs, (str(marker),)
        checkpoint['extra'] = Payload()
    torch.save(checkpoint, path)
    return model.state_dict(), ema


@pytest.mark.parametrize('timm_reads_weights_only', [True, False] if _compat.timm_at_least('1.0.26') else [False])
def test_load_state_dict_weights_only(tmp_path, monkeypatch, timm_reads_weights_only):
    """train.py's checkpoints (an argparse.Namespace in ``args``) load, EMA first unless ``use_ema=False``; a pickle
    with code is refused naming its globals, and the code does not run: through timm's loader (1.0.26 on) and the
    stand-in before."""
    monkeypatch.setattr(_compat, 'timm_loads_weights_only', lambda: timm_reads_weights_only)
    state, ema = _train_py_checkpoint(tmp_path / 'last.pth.tar')
    loaded = _compat.load_state_dict_weights_only(tmp_path / 'last.pth.tar')
    assert list(loaded) == list(ema) and all(torch.equal(loaded[k], ema[k]) for k in ema)
    loaded = _compat.load_state_dict_weights_only(tmp_path / 'last.pth.tar', use_ema=False)
    assert all(torch.equal(loaded[k], state[k]) for k in state)

    marker = tmp_path / 'code-ran'
    _train_py_checkpoint(tmp_path / 'evil.pth', marker=marker)
    with pytest.raises((pickle.UnpicklingError, RuntimeError), match=r'weights_only=True blocked .*'
                       r'Unsupported globals: .*os\.makedirs'):
        _compat.load_state_dict_weights_only(tmp_path / 'evil.pth')
    assert not marker.exists()
