"""Bad input gets a clear error naming the argument and what was expected."""
from __future__ import annotations

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
