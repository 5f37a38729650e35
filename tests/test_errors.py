"""Bad input gets a clear error naming the argument and what was expected."""
from __future__ import annotations

import shutil

import pytest
import timm
import torch

from timm_ghost import PretrainedWeightsError
from timm_ghost.errors import UnsupportedPoolError


@pytest.mark.parametrize('kwargs, match', [
    (dict(width=0), r'width must be > 0, got 0'),
    (dict(width=-0.5), r'width must be > 0, got -0.5'),
    (dict(in_chans=0), r'in_chans must be >= 1, got 0'),
    (dict(num_classes=-3), r'num_classes must be >= 0 .*got -3'),
    (dict(output_stride=4), r'output_stride must be one of 8, 16, 32, got 4'),
    (dict(output_stride=64), r'output_stride must be one of 8, 16, 32, got 64'),
    (dict(global_pool='mean'), r"global_pool must be one of .*'avg'.*got 'mean'"),
    (dict(drop_block_rate=0.1), r'drop_block_rate is not supported.*drop_path_rate'),
    (dict(drop_path_rate=1.5), r'drop_path_rate must be in \[0, 1\)'),
    (dict(feature_location='expansion'), r"feature_location must be '' .* or 'bottleneck' .*got 'expansion'"),
])
def test_bad_arguments_raise_value_error_naming_them(kwargs, match):
    name = 'ghostnet_100'
    if 'width' in kwargs:  # width is fixed by the registered variants: use the class directly
        from timm_ghost import GhostNet
        with pytest.raises(ValueError, match=match):
            GhostNet(**kwargs)
        return
    with pytest.raises(ValueError, match=match):
        timm.create_model(name, **kwargs)


@pytest.mark.parametrize('name', ['ghostnet_050', 'ghostnet_130'])
def test_pretrained_without_weights_names_model_and_existing_tags(name):
    with pytest.raises(PretrainedWeightsError) as info:  # a cfg with no weight source
        timm.create_model(name, pretrained=True, pretrained_cfg=dict(architecture=name))
    message = str(info.value)
    assert f'{name} has no pretrained weights' in message
    assert f'{name}.paddle_in1k' in message  # the weights that do exist
    assert 'pretrained=False' in message


def test_unknown_pretrained_tag_is_timms_error():
    with pytest.raises(RuntimeError, match=r'Invalid pretrained tag \(nonexistent\) for ghostnet_100'):
        timm.create_model('ghostnet_100.nonexistent', pretrained=True)


def test_missing_pretrained_file_is_named(tmp_path):
    missing = tmp_path / 'nope.safetensors'
    with pytest.raises(PretrainedWeightsError, match=f'pretrained file not found: {missing}'):
        timm.create_model('ghostnet_050', pretrained=True, pretrained_cfg_overlay=dict(file=str(missing)))


@pytest.mark.parametrize('shape, got', [((1, 4, 64, 64), '4 channels'), ((1, 1, 64, 64), '1 channels'),
                                        ((3, 64, 64), 'no channels|64 channels')])
def test_wrong_input_channels_give_expected_and_received(shape, got):
    model = timm.create_model('ghostnet_050').eval()
    with pytest.raises(ValueError, match=rf'expected a \(N, 3, H, W\) tensor .*got shape .*({got})'):
        with torch.no_grad():
            model(torch.randn(*shape))
    single = timm.create_model('ghostnet_050', in_chans=1).eval()
    with pytest.raises(ValueError, match=r'expected a \(N, 1, H, W\).*in_chans=1'):
        with torch.no_grad():
            single(torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize('pool', ['catavgmax', 'fastcatavgmax'])
def test_concat_pooling_is_refused_as_timm_expects(pool):
    # timm recognises a model without concat pooling by the AssertionError (timm's own test-suite catches exactly
    # that); the message still says what GhostNet takes and why
    match = rf"global_pool must be one of .*'avgmax'.*got '{pool}' \(concat pooling doubles the pooled width"
    with pytest.raises(UnsupportedPoolError, match=match) as info:
        timm.create_model('ghostnet_050', global_pool=pool)
    assert isinstance(info.value, AssertionError) and isinstance(info.value, ValueError)
    model = timm.create_model('ghostnet_050', num_classes=5)
    with pytest.raises(AssertionError, match=match):
        model.reset_classifier(7, pool)
    assert model.num_classes == 5 and model.global_pool.pool_type == 'avg'  # nothing changed


def test_unknown_pool_is_the_same_error_without_the_concat_note():
    with pytest.raises(UnsupportedPoolError) as info:
        timm.create_model('ghostnet_050', global_pool='mean')
    assert str(info.value) == ("global_pool must be one of ('', 'avg', 'max', 'avgmax', 'fast', 'fastavg', 'fastmax', "
                               "'fastavgmax'), got 'mean'")


# ------------------------------------------------------------------------------------------------ weights files
ACCEPTED = ('--weights takes a .safetensors file, a torch checkpoint of tensors (.pth / .pt / .bin / .pth.tar / '
            '.ckpt), a PaddleClas .pdparams, or a folder with model.safetensors + config.json')


@pytest.fixture(scope='module')
def image(tmp_path_factory):
    import numpy as np
    from PIL import Image
    path = tmp_path_factory.mktemp('img') / 'img.png'
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    """A Hub-ready folder of a 3-class ghostnet_050 (timm's save_for_hf)."""
    from timm.models import save_for_hf
    root = tmp_path_factory.mktemp('hub') / 'folder'
    save_for_hf(timm.create_model('ghostnet_050', num_classes=3), root, safe_serialization=True)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _predict_error(capsys, image, *args) -> str:
    from timm_ghost_cli import main
    assert main(['predict', str(image), *args]) == 1
    captured = capsys.readouterr()
    assert captured.out == '' and captured.err.count('\n') == 1  # one line, no traceback
    return captured.err.rstrip('\n')


def test_corrupt_safetensors_is_one_line_naming_the_file(capsys, image, tmp_path, folder):
    import re
    bad = tmp_path / 'corrupt.safetensors'
    bad.write_bytes(b'\xff' * 64)  # a header length of 2**64 - 1 bytes
    # safetensors' own words for the fault (they vary between its versions) stand between the parentheses
    reason = r'truncated or corrupt \(Error while deserializing header: [^;]+; '
    err = _predict_error(capsys, image, '--weights', str(bad))
    assert re.fullmatch(rf'timm-ghost predict: error: --weights {re.escape(str(bad))}: not a readable safetensors '
                        rf'file, {reason}64 bytes\)', err), err
    cut = tmp_path / 'cut'
    shutil.copytree(folder, cut)
    weights = cut / 'model.safetensors'
    weights.write_bytes(weights.read_bytes()[:100_000])
    expected = rf'{re.escape(str(weights))}: not a readable safetensors file, {reason}100,000 bytes\)'
    err = _predict_error(capsys, image, '--weights', str(cut))
    assert re.fullmatch(rf'timm-ghost predict: error: --weights {expected}', err), err
    err = _predict_error(capsys, image, '--model', f'local-dir:{cut}')
    assert re.fullmatch(rf'timm-ghost predict: error: --model local-dir:{re.escape(str(cut))}: {expected}', err), err


def test_weights_of_another_format_say_what_the_file_is_and_what_is_accepted(capsys, image, tmp_path):
    import numpy as np
    np.savez(tmp_path / 'w.npz', conv=np.zeros((4, 3, 3, 3), np.float32))
    (tmp_path / 'bad.pth').write_text('these are not weights\n')
    np.save(tmp_path / 'w.npy', np.zeros(3))
    cases = {'w.npz': 'a NumPy archive (.npz), not a weights file timm-ghost reads',
             'bad.pth': 'a text file, not a torch checkpoint',
             'w.npy': 'a NumPy array (.npy), not a weights file timm-ghost reads'}
    for name, what in cases.items():
        err = _predict_error(capsys, image, '--weights', str(tmp_path / name))
        assert err == f'timm-ghost predict: error: --weights {tmp_path / name}: {what}; {ACCEPTED}'
        assert 'weights_only=False' not in err


def test_checkpoint_with_objects_is_refused_without_advice_to_run_code(capsys, image, tmp_path):
    model = timm.create_model('ghostnet_050', num_classes=3)
    torch.save({'model': model}, tmp_path / 'whole_model.pth')  # pickles the module: loading it would run code
    err = _predict_error(capsys, image, '--weights', str(tmp_path / 'whole_model.pth'))
    assert err == (f'timm-ghost predict: error: --weights {tmp_path / "whole_model.pth"}: a torch checkpoint that '
                   f'holds Python objects besides tensors; timm-ghost loads only tensors (weights_only=True) and never '
                   f'runs code from a file. Re-save its state_dict (torch.save(model.state_dict(), ...)) or save it as '
                   f'safetensors')
    torch.save(model.state_dict(), tmp_path / 'sd.pth')
    (tmp_path / 'cut.pth').write_bytes((tmp_path / 'sd.pth').read_bytes()[:5000])
    err = _predict_error(capsys, image, '--weights', str(tmp_path / 'cut.pth'))
    assert err.startswith(f'timm-ghost predict: error: --weights {tmp_path / "cut.pth"}: a truncated or damaged zip '
                          f'archive (the format of torch checkpoints and NumPy .npz files), not a torch checkpoint')


def test_invalid_config_json_is_named(capsys, image, tmp_path, folder):
    broken = tmp_path / 'broken'
    shutil.copytree(folder, broken)
    (broken / 'config.json').write_text('{architecture: "ghostnet_050"}')
    expected = (f'{broken / "config.json"}: not valid JSON (Expecting property name enclosed in double quotes: line 1 '
                f'column 2 (char 1))')
    assert _predict_error(capsys, image, '--weights', str(broken)) == f'timm-ghost predict: error: --weights {expected}'
    assert _predict_error(capsys, image, '--weights', str(broken / 'model.safetensors')) == (
        f'timm-ghost predict: error: --weights {broken / "model.safetensors"}: {expected}')
    assert _predict_error(capsys, image, '--model', f'local-dir:{broken}') == (
        f'timm-ghost predict: error: --model local-dir:{broken}: {expected}')
