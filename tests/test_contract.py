"""timm's model contract on every width: heads, pooling, regularisation, features, intermediates, optimisers,
construction, tracing, compilation and export."""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn
from helpers import END_OF_RESOLUTION_CHANNELS, MODEL_NAMES, builtin_model, randomize_, stage_outputs
from safetensors.torch import save_file
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import adapt_input_conv
from timm.optim import create_optimizer_v2

import timm_ghost  # noqa: F401  (registers the models)

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _pair(name: str, seed: int = 0, **kwargs) -> tuple[nn.Module, nn.Module]:
    """Ours and timm's built-in with the same random weights, in eval mode."""
    ours = randomize_(timm.create_model(name, **kwargs), seed).eval()
    builtin = builtin_model(name, **kwargs).eval()
    builtin.load_state_dict(ours.state_dict())
    return ours, builtin


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_num_classes_sets_the_head(name):
    for num_classes, shape in ((10, (2, 10)), (0, (2, 1280))):
        model = timm.create_model(name, num_classes=num_classes).eval()
        assert model.num_classes == num_classes
        with torch.no_grad():
            assert model(X).shape == shape
    assert isinstance(timm.create_model(name, num_classes=0).get_classifier(), nn.Identity)


@pytest.mark.parametrize('name', MODEL_NAMES)
@pytest.mark.parametrize('in_chans', [1, 4])
def test_in_chans_adapts_pretrained_first_conv_as_timm_does(name, in_chans, tmp_path):
    source = randomize_(timm.create_model(name), seed=4)
    path = tmp_path / 'w.safetensors'
    save_file(source.state_dict(), str(path))
    model = timm.create_model(
        name, pretrained=True, in_chans=in_chans, pretrained_cfg_overlay=dict(file=str(path))).eval()
    expected = adapt_input_conv(in_chans, source.conv_stem.weight.detach().clone())
    assert model.conv_stem.weight.shape == (source.conv_stem.out_channels, in_chans, 3, 3)
    assert _max_diff(model.conv_stem.weight, expected) == 0
    assert _max_diff(model.blocks[4][0].ghost1.primary_conv[0].weight,
                     source.blocks[4][0].ghost1.primary_conv[0].weight) == 0
    with torch.no_grad():
        assert model(torch.randn(1, in_chans, 64, 64)).shape == (1, 1000)


@pytest.mark.parametrize('name', MODEL_NAMES)
@pytest.mark.parametrize('global_pool', ['avg', 'max', ''])
def test_global_pool_matches_builtin(name, global_pool):
    kwargs = dict(global_pool=global_pool, num_classes=0 if not global_pool else 1000)
    ours, builtin = _pair(name, **kwargs)
    with torch.no_grad():
        out, ref = ours(X), builtin(X)
    assert out.shape == ((2, 1280, 2, 2) if not global_pool else (2, 1000))
    assert _max_diff(out, ref) <= 1e-5


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_drop_rate_is_dropout_before_the_classifier(name):
    model = randomize_(timm.create_model(name, drop_rate=0.5))
    assert model.drop_rate == 0.5
    model.train()
    torch.manual_seed(0)
    a = model(X)
    torch.manual_seed(1)
    b = model(X)
    assert _max_diff(a, b) > 1e-3  # same batch statistics, different dropout masks
    model.eval()
    with torch.no_grad():
        assert _max_diff(model(X), model(X)) == 0


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_drop_path_rate_is_stochastic_depth_rising_over_blocks(name):
    model = randomize_(timm.create_model(name, drop_path_rate=0.2))
    blocks = [b for stage in model.blocks[:-1] for b in stage]
    rates = [getattr(b.drop_path, 'drop_prob', 0.0) for b in blocks]
    assert len(rates) == 16
    assert rates[0] == 0.0 and isinstance(blocks[0].drop_path, nn.Identity)
    assert rates[-1] == pytest.approx(0.2) and rates == sorted(rates)
    assert rates[8] == pytest.approx(0.2 * 8 / 15)
    # eval: identical to the same weights without stochastic depth
    plain = timm.create_model(name).eval()
    plain.load_state_dict(model.state_dict())
    model.eval()
    with torch.no_grad():
        assert _max_diff(model(X), plain(X)) == 0
    # train: residual branches are dropped per sample
    model.train()
    plain.train()
    torch.manual_seed(0)
    assert _max_diff(model(X), plain(X)) > 1e-3


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_features_only_maps_match_feature_info_and_builtin(name):
    ours = randomize_(timm.create_model(name, features_only=True), 5).eval()
    builtin = builtin_model(name, features_only=True).eval()
    builtin.load_state_dict(ours.state_dict())
    with torch.no_grad():
        feats, ref = ours(X), builtin(X)
    assert len(feats) == 5
    assert [f.shape[1] for f in feats] == ours.feature_info.channels()
    assert [64 // f.shape[-1] for f in feats] == ours.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert max(_max_diff(a, b) for a, b in zip(feats, ref)) <= 1e-5
    picked = timm.create_model(name, features_only=True, out_indices=(1, 3))
    picked.load_state_dict(ours.state_dict(), strict=False)
    with torch.no_grad():
        two = picked.eval()(X)
    assert [f.shape for f in two] == [feats[1].shape, feats[3].shape]
    assert max(_max_diff(two[0], feats[1]), _max_diff(two[1], feats[3])) <= 1e-6


@pytest.mark.parametrize('name', MODEL_NAMES)
@pytest.mark.parametrize('output_stride, reductions', [(32, [2, 4, 8, 16, 32]), (16, [2, 4, 8, 16, 16]),
                                                       (8, [2, 4, 8, 8, 8])])
def test_feature_location_bottleneck_taps_the_last_map_of_each_resolution(name, output_stride, reductions):
    full = randomize_(timm.create_model(name, output_stride=output_stride), 6).eval()
    kwargs = dict(feature_location='bottleneck', output_stride=output_stride)
    model = timm.create_model(name, **kwargs).eval()
    model.load_state_dict(full.state_dict())  # the same network: only the taps differ
    features = timm.create_model(name, features_only=True, **kwargs).eval()
    state = full.state_dict()  # features_only flattens blocks.N into blocks_N
    features.load_state_dict({k: state[k.replace('blocks_', 'blocks.', 1)] for k in features.state_dict()})
    for info in (features.feature_info, timm.models.FeatureInfo(model.feature_info, list(range(5)))):
        assert info.module_name() == ['blocks.0', 'blocks.2', 'blocks.4', 'blocks.6', 'blocks.9']
        assert info.channels() == END_OF_RESOLUTION_CHANNELS[name]
        assert info.reduction() == reductions
    with torch.no_grad():
        stages = stage_outputs(full, X)
        expected = [stages[i] for i in (0, 2, 4, 6, 9)]
        final, inter = model.forward_intermediates(X)
        for maps in (features(X), inter):
            assert [64 // f.shape[-1] for f in maps] == reductions
            assert all(torch.equal(a, b) for a, b in zip(maps, expected, strict=True))
        assert torch.equal(final, stages[-1])
        early = model.forward_intermediates(X, indices=[1, 3], stop_early=True, intermediates_only=True)
        assert torch.equal(early[0], expected[1]) and torch.equal(early[1], expected[3])
    assert model.prune_intermediate_layers(indices=[1, 3]) == [1, 3]
    assert len(model.blocks) == 7  # up to blocks.6, the last map at /16
    assert model.num_features == model.head_hidden_size == END_OF_RESOLUTION_CHANNELS[name][3]
    with torch.no_grad():
        pruned = model.forward_intermediates(X, indices=[1, 3], intermediates_only=True)
        assert torch.equal(pruned[0], expected[1]) and torch.equal(pruned[1], expected[3])
        assert torch.equal(model(X), expected[3])  # no head left, unpooled (global_pool='')


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_forward_features_and_head(name):
    ours, builtin = _pair(name)
    with torch.no_grad():
        feats = ours.forward_features(X)
        assert feats.shape == (2, ours.num_features, 2, 2)
        assert _max_diff(feats, builtin.forward_features(X)) <= 1e-5
        pre = ours.forward_head(feats, pre_logits=True)
        assert pre.shape == (2, 1280)
        assert _max_diff(ours.forward_head(feats), ours(X)) == 0
        assert _max_diff(ours.classifier(pre), ours(X)) <= 1e-6


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_forward_intermediates(name):
    ours, builtin = _pair(name)
    with torch.no_grad():
        final, inter = ours.forward_intermediates(X)
        ref_final, ref_inter = builtin.forward_intermediates(X)
        assert _max_diff(final, ours.forward_features(X)) == 0
        assert len(inter) == 5 and [t.shape[1] for t in inter] == [i['num_chs'] for i in ours.feature_info]
        assert max(_max_diff(a, b) for a, b in zip(inter, ref_inter)) <= 1e-5
        last2 = ours.forward_intermediates(X, indices=2, intermediates_only=True)
        assert [t.shape for t in last2] == [t.shape for t in inter[-2:]]
        early = ours.forward_intermediates(X, indices=[1, 2], stop_early=True, intermediates_only=True)
        assert max(_max_diff(a, b) for a, b in zip(early, inter[1:3])) == 0
    with pytest.raises(ValueError, match='output_fmt'):
        ours.forward_intermediates(X, output_fmt='NHWC')


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_prune_intermediate_layers_keeps_requested_maps(name):
    model = randomize_(timm.create_model(name)).eval()
    with torch.no_grad():
        inter = model.forward_intermediates(X, intermediates_only=True)
    kept = model.prune_intermediate_layers(indices=[1, 2])
    assert kept == [1, 2]
    assert len(model.blocks) == 4  # up to the stage of feature 2 (blocks.3)
    assert isinstance(model.classifier, nn.Identity) and model.num_features == inter[2].shape[1]
    with torch.no_grad():
        pruned = model.forward_intermediates(X, indices=[1, 2], intermediates_only=True)
    assert max(_max_diff(a, b) for a, b in zip(pruned, inter[1:3])) == 0


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_reset_classifier(name):
    model = timm.create_model(name).eval()
    model.reset_classifier(7)
    assert model.get_classifier().out_features == 7 and model.num_classes == 7
    with torch.no_grad():
        assert model(X).shape == (2, 7)
    model.reset_classifier(0)
    assert isinstance(model.get_classifier(), nn.Identity)
    with torch.no_grad():
        assert model(X).shape == (2, 1280)
    model.reset_classifier(3, global_pool='max')
    assert model.global_pool.pool_type == 'max'
    with pytest.raises(ValueError, match='num_classes'):
        model.reset_classifier(-2)


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_group_matcher_drives_layer_decay(name):
    model = timm.create_model(name)
    matcher = model.group_matcher()
    assert set(matcher) == {'stem', 'blocks'}
    optimizer = create_optimizer_v2(model, 'sgd', lr=0.1, weight_decay=1e-4, layer_decay=0.7)
    groups = optimizer.param_groups
    params = [p for g in groups for p in g['params']]
    assert len(params) == len(list(model.parameters())) and len({id(p) for p in params}) == len(params)
    scales = sorted({g['lr_scale'] for g in groups})
    assert len(scales) >= 15 and scales[-1] == pytest.approx(1.0) and scales[0] < 0.01
    stem_scale = next(g['lr_scale'] for g in groups if any(p is model.conv_stem.weight for p in g['params']))
    assert stem_scale == scales[0]
    assert model.no_weight_decay() == set()


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_grad_checkpointing_gives_the_same_gradients(name):
    model = randomize_(timm.create_model(name, drop_rate=0.0)).train()
    x = X.clone()

    def grads() -> dict:
        model.zero_grad()
        model(x).square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = grads()
    model.set_grad_checkpointing(True)
    assert model.grad_checkpointing
    ckpt = grads()
    assert max(_max_diff(plain[n], ckpt[n]) for n in plain) <= 1e-5


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_device_and_dtype_construction(name):
    meta = timm.create_model(name, device='meta')
    assert all(p.device.type == 'meta' for p in meta.parameters())
    assert all(b.device.type == 'meta' for b in meta.buffers())
    bf16 = timm.create_model(name, dtype=torch.bfloat16)
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    assert meta.to_empty(device='cpu').conv_stem.weight.device.type == 'cpu'


# the paper's ImageNet table as each cfg quotes it, written out (not formatted from PAPER_RESULTS)
PAPER_NOTES = {
    'ghostnet_050': 'paper (ImageNet-1k, 224 px): params 2.6M, MACs 42M, top-1 66.2, top-5 86.6',
    'ghostnet_100': 'paper (ImageNet-1k, 224 px): params 5.2M, MACs 141M, top-1 73.9, top-5 91.4',
    'ghostnet_130': 'paper (ImageNet-1k, 224 px): params 7.3M, MACs 226M, top-1 75.7, top-5 92.7',
}


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_pretrained_cfg_metadata(name):
    cfg = timm.create_model(name).pretrained_cfg
    # the default tag's evaluation transform: the authors' weights bicubic, PaddleClas's bilinear (its eval resize)
    interpolation = {'in1k': 'bicubic', 'paddle_in1k': 'bilinear'}[cfg['tag']]
    assert cfg['mean'] == IMAGENET_DEFAULT_MEAN and cfg['std'] == IMAGENET_DEFAULT_STD
    assert cfg['crop_pct'] == 0.875 and cfg['interpolation'] == interpolation
    assert cfg['input_size'] == (3, 224, 224)
    assert cfg['first_conv'] == 'conv_stem' and cfg['classifier'] == 'classifier'
    assert cfg['license'] == 'apache-2.0' and cfg['paper_ids'] == 'arXiv:1911.11907'
    note = next(n for n in cfg['notes'] if n.startswith('paper '))  # beside the weights' own reported accuracy
    assert note == PAPER_NOTES[name]
    data_cfg = timm.data.resolve_data_config({}, model=timm.create_model(name))
    assert data_cfg['crop_pct'] == 0.875 and data_cfg['interpolation'] == interpolation


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_channels_last(name):
    model = randomize_(timm.create_model(name)).eval()
    with torch.no_grad():
        ref = model(X)
        model = model.to(memory_format=torch.channels_last)
        out = model(X.contiguous(memory_format=torch.channels_last))
    assert _max_diff(out, ref) <= 1e-5


# bf16 keeps 8 significant bits: one rounding is off by at most u = 2**-8 (0.39 %) of the value. The deepest path
# (stem, 16 bottlenecks of up to 7 convolutions, head conv, classifier) rounds about 115 times; independent rounding
# errors of O(1) activations (randomize_ keeps them so) add like a random walk: sqrt(115) * u = 4.2 %. Measured: 0.8 to
# 1.0 % of the largest logit on X for the three widths.
BF16_RTOL = 0.042


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_bf16_autocast_on_cpu(name):
    model = randomize_(timm.create_model(name)).eval()
    builtin = builtin_model(name).eval()
    builtin.load_state_dict(model.state_dict())
    with torch.no_grad():
        ref = model(X)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out, builtin_out = model(X), builtin(X)
    assert out.dtype == torch.bfloat16
    assert _max_diff(out, ref) <= BF16_RTOL * ref.abs().max().item()
    # the same ops in the same precision as timm's built-in: within one bf16 rounding of the largest logit (measured 0)
    assert _max_diff(out, builtin_out) <= 2 ** -8 * ref.abs().max().item()


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_torchscript(name):
    model = randomize_(timm.create_model(name)).eval()
    scripted = torch.jit.script(model)
    with torch.no_grad():
        assert _max_diff(scripted(X), model(X)) <= 1e-5
        feats = scripted.forward_features(X)
    assert feats.shape == (2, model.num_features, 2, 2)


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_fx_feature_extraction(name, tmp_path):
    path = tmp_path / 'w.safetensors'
    save_file(randomize_(timm.create_model(name)).state_dict(), str(path))
    kwargs = dict(features_only=True, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    hooks = timm.create_model(name, **kwargs).eval()
    fx = timm.create_model(name, feature_cls='fx', **kwargs).eval()
    assert isinstance(fx.graph_module, torch.fx.GraphModule)
    with torch.no_grad():
        feats = fx(X)
        assert len(feats) == 5 and max(_max_diff(a, b) for a, b in zip(feats, hooks(X))) == 0
    with pytest.raises(ValueError, match=r'expected .*3 channels.*got .*4 channels'):
        fx(torch.randn(1, 4, 64, 64))  # the input check survives tracing


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    for name in MODEL_NAMES:
        model = randomize_(timm.create_model(name)).eval()
        compiled = torch.compile(model, fullgraph=True, backend='eager')  # fullgraph: any graph break raises
        with torch.no_grad():
            assert _max_diff(compiled(X), model(X)) <= 1e-5
    explain = torch._dynamo.explain(randomize_(timm.create_model('ghostnet_100')).eval())(X)
    assert explain.graph_break_count == 0 and explain.graph_count == 1


@pytest.mark.slow
def test_torch_compile_inductor_matches_eager():
    torch._dynamo.reset()
    model = randomize_(timm.create_model('ghostnet_050')).eval()
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        assert _max_diff(compiled(X), model(X)) <= 1e-4


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_onnx_export_with_dynamic_batch(name, tmp_path):
    ort = pytest.importorskip('onnxruntime')
    model = randomize_(timm.create_model(name)).eval()
    path = tmp_path / f'{name}.onnx'
    torch.onnx.export(
        model, (X,), str(path), input_names=['input'], output_names=['logits'],
        dynamic_shapes={'x': {0: torch.export.Dim('batch')}}, dynamo=True, verbose=False)
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    for batch in (1, 3):
        x = torch.randn(batch, 3, 64, 64)
        (out,) = session.run(None, {'input': x.numpy()})
        with torch.no_grad():
            assert out.shape == (batch, 1000)
            assert _max_diff(torch.from_numpy(out), model(x)) <= 1e-4
