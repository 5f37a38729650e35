"""output_stride 16 / 8: the later stages dilate instead of striding, parameters unchanged."""
from __future__ import annotations

from typing import List

import pytest
import timm
import torch
from helpers import MODEL_NAMES, randomize_, stage_outputs

from timm_ghost import GHOSTNET_STAGES
from timm_ghost.models_info import count_params

X = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize('name', MODEL_NAMES)
@pytest.mark.parametrize('output_stride, reductions', [(32, [2, 4, 8, 16, 32]), (16, [2, 4, 8, 16, 16]),
                                                       (8, [2, 4, 8, 8, 8])])
def test_deepest_feature_map_is_input_over_output_stride(name, output_stride, reductions):
    model = timm.create_model(name, features_only=True, output_stride=output_stride).eval()
    assert model.feature_info.reduction() == reductions
    with torch.no_grad():
        feats = model(X)
    assert [128 // f.shape[-1] for f in feats] == reductions
    assert feats[-1].shape[-2:] == (128 // output_stride, 128 // output_stride)
    assert count_params(model) == count_params(timm.create_model(name, features_only=True))


@pytest.mark.parametrize('name', MODEL_NAMES)
@pytest.mark.parametrize('output_stride', [16, 8])
def test_dilated_network_keeps_parameters_and_weights(name, output_stride):
    base = randomize_(timm.create_model(name)).eval()
    dense = timm.create_model(name, output_stride=output_stride).eval()
    assert count_params(dense) == count_params(base)
    result = dense.load_state_dict(base.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    with torch.no_grad():
        feats = dense.forward_features(X)
        assert feats.shape[-1] == 128 // output_stride
        assert dense(X).shape == (1, 1000)


def test_dilation_replaces_stride_in_the_later_stages():
    model = timm.create_model('ghostnet_100', output_stride=8)
    # blocks.5 (stride 8 -> 16) and blocks.7 (16 -> 32) keep their depthwise conv and shortcut, stride 1
    for stage in (5, 7):
        block = model.blocks[stage][0]
        assert block.conv_dw.stride == (1, 1) and block.shortcut[0].stride == (1, 1)
    assert model.blocks[5][0].conv_dw.dilation == (1, 1)  # the block that would have strided: previous dilation
    assert model.blocks[6][0].ghost1.cheap_operation[0].dilation == (2, 2)
    assert model.blocks[7][0].conv_dw.dilation == (2, 2)
    assert model.blocks[8][0].conv_dw is None and model.blocks[8][0].ghost2.cheap_operation[0].dilation == (4, 4)
    assert model.blocks[8][0].ghost2.cheap_operation[0].padding == (4, 4)
    assert model.blocks[3][0].conv_dw.stride == (2, 2)  # untouched before output stride 8


def _expected_reductions(output_stride: int) -> List[int]:
    """Each stage's output stride from the paper's table: the strides multiply up to ``output_stride``, then stop."""
    reductions, net = [], 2
    for stage in GHOSTNET_STAGES:
        net = min(net * max(cfg.stride for cfg in stage), output_stride)
        reductions.append(net)
    return reductions + [net]  # the final 1x1 conv


def test_expected_reductions_follow_the_table():
    assert _expected_reductions(32) == [2, 4, 4, 8, 8, 16, 16, 32, 32, 32]
    assert _expected_reductions(16) == [2, 4, 4, 8, 8, 16, 16, 16, 16, 16]
    assert _expected_reductions(8) == [2, 4, 4, 8, 8, 8, 8, 8, 8, 8]


@pytest.mark.parametrize('name', MODEL_NAMES)
@pytest.mark.parametrize('output_stride, first_dilated', [(16, 7), (8, 5)])
def test_maps_before_the_first_dilated_stage_equal_the_undilated_models(name, output_stride, first_dilated):
    base = randomize_(timm.create_model(name), seed=4).eval()
    dense = timm.create_model(name, output_stride=output_stride).eval()
    dense.load_state_dict(base.state_dict())
    with torch.no_grad():
        ref, out = stage_outputs(base, X), stage_outputs(dense, X)
    # the same weights and the same ops up to the first stage that dilates instead of striding: bit for bit
    for i in range(first_dilated):
        assert torch.equal(out[i], ref[i]), f'blocks.{i}'
    assert out[first_dilated].shape != ref[first_dilated].shape
    assert [128 // o.shape[-1] for o in out] == _expected_reductions(output_stride)
    assert [128 // o.shape[-1] for o in ref] == _expected_reductions(32)
    assert [o.shape[1] for o in out] == [o.shape[1] for o in ref]
