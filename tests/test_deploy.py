"""BN-fused deploy mode: ``timm.utils.reparameterize_model`` turns GhostNet into an inference model without
BatchNorm that computes the eval-mode function (max abs logit diff <= 1e-4 in fp32).

Equality is checked for all three widths; TorchScript, torch.compile and ONNX on ghostnet_050 only (the deploy
blocks are the same classes at every width). The deploy model through inductor is checked where users get it:
``timm_ghost.inference_model`` (tests/test_inference.py) and its unfrozen variant in benchmarks/bench_compile.py's short
run (tests/test_benchmarks.py, within 1e-4).
"""
from __future__ import annotations

import copy
import io
import subprocess
import sys

import pytest
import timm
import torch
import torch.nn as nn
from helpers import END_OF_RESOLUTION_CHANNELS, MODEL_NAMES, randomize_
from timm.utils import reparameterize_model

import timm_ghost.deploy as deploy
from timm_ghost import GHOSTNET_STAGES, _compat
from timm_ghost.blocks import GhostBottleneck
from timm_ghost.deploy import GhostBottleneckDeploy, fast_path_enabled, probe_onednn
from timm_ghost.models_info import count_params

TOL = 1e-4
X224 = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
X96 = torch.randn(3, 3, 96, 96, generator=torch.Generator().manual_seed(1))


def _norm_count(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def _norms_in_the_table() -> int:
    """BatchNorms of GhostNet by its table: the stem, two per Ghost module (two per bottleneck), one per downsampling
    depthwise conv, two per conv shortcut (where the block changes width or resolution), one in the final conv."""
    norms, in_chs = 2, 16  # stem and final conv; widths at 1.0 (the structure is the same at every width)
    for stage in GHOSTNET_STAGES:
        for cfg in stage:
            norms += 4 + (cfg.stride > 1) + 2 * (cfg.stride > 1 or cfg.out_chs != in_chs)
            in_chs = cfg.out_chs
    return norms


def _is_channels_last(t: torch.Tensor) -> bool:
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


@pytest.fixture(scope='module')
def pair050():
    """(eval-mode ghostnet_050 with random weights and BN statistics, its deploy copy)."""
    model = randomize_(timm.create_model('ghostnet_050'), seed=3).eval()
    return model, reparameterize_model(model)


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_fused_logits_equal_eval_logits_with_no_batchnorm_left(name):
    model = randomize_(timm.create_model(name), seed=1).eval()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == _norms_in_the_table() == 80
    fused = reparameterize_model(model)
    assert _norm_count(fused) == 0
    assert sum(isinstance(m, GhostBottleneckDeploy) for m in fused.modules()) == 16
    # each folded BN loses its scale and shift (2 C) and gives its conv a bias (C)
    assert count_params(model) - count_params(fused) == sum(n.num_features for n in norms)
    with torch.no_grad():
        ref = model(X224)
        assert ref.abs().max() > 1.0  # logits O(1): a diff bound of 1e-4 means something
        fast = fused(X224)  # eager CPU fast path (autograd off)
    portable = fused(X224)  # autograd on: the standard-ops path
    assert fast.shape == portable.shape == (2, 1000)
    assert _max_diff(fast, ref) <= TOL
    assert _max_diff(portable.detach(), ref) <= TOL


def test_ghostnet_100_folds_80_norms_and_5182508_to_5171524_parameters():
    model = timm.create_model('ghostnet_100').eval()
    assert _norm_count(model) == 80 and count_params(model) == 5_182_508
    fused = reparameterize_model(model)
    assert _norm_count(fused) == 0 and count_params(fused) == 5_171_524


def test_inplace_false_leaves_the_original_untouched(pair050):
    model = randomize_(timm.create_model('ghostnet_050'), seed=2).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    before_norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        ref = model(X96)
    fused = reparameterize_model(model, inplace=False)
    assert fused is not model
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)] == before_norms
    assert all(isinstance(b, GhostBottleneck) for stage in model.blocks[:-1] for b in stage)
    with torch.no_grad():
        assert torch.equal(model(X96), ref)


def test_inplace_true_converts_the_model_itself():
    model = randomize_(timm.create_model('ghostnet_050'), seed=2).eval()
    with torch.no_grad():
        ref = model(X96)
    assert reparameterize_model(model, inplace=True) is model
    assert _norm_count(model) == 0
    with torch.no_grad():
        assert _max_diff(model(X96), ref) <= TOL


@pytest.mark.parametrize('output_stride', [32, 16, 8])
def test_features_only_maps_equal_except_the_stem_which_is_normalised(output_stride):
    model = randomize_(timm.create_model('ghostnet_050', features_only=True, output_stride=output_stride)).eval()
    fused = reparameterize_model(model)
    assert _norm_count(fused) == 0
    with torch.no_grad():
        ref, out = model(X96), fused(X96)
        stem_normalised = model.bn1(model.conv_stem(X96))
    assert [f.shape for f in out] == [f.shape for f in ref]
    assert out[-1].shape[-1] == 96 // output_stride
    assert all(_is_channels_last(f) for f in out)
    # feature 0 is conv_stem's output: after folding, the conv includes the BN (pre-activation, not the raw conv)
    assert _max_diff(out[0], stem_normalised) <= TOL
    assert _max_diff(out[0], ref[0]) > 0.1
    for a, b in zip(out[1:], ref[1:]):
        assert _max_diff(a, b) <= TOL


@pytest.mark.parametrize('output_stride', [16, 8])
def test_dilated_classifier_and_intermediates_match(output_stride):
    model = randomize_(timm.create_model('ghostnet_050', output_stride=output_stride)).eval()
    fused = reparameterize_model(model)
    with torch.no_grad():
        assert _max_diff(fused(X96), model(X96)) <= TOL
        final, feats = fused.forward_intermediates(X96)
        ref_final, ref_feats = model.forward_intermediates(X96)
    assert _max_diff(final, ref_final) <= TOL
    assert len(feats) == len(ref_feats) == 5
    assert _is_channels_last(final) and all(_is_channels_last(f) for f in feats)
    for a, b in zip(feats[1:], ref_feats[1:]):
        assert _max_diff(a, b) <= TOL


@pytest.mark.parametrize('name', MODEL_NAMES)
@pytest.mark.parametrize('output_stride, reductions', [(32, [2, 4, 8, 16, 32]), (16, [2, 4, 8, 16, 16]),
                                                       (8, [2, 4, 8, 8, 8])])
def test_end_of_resolution_taps_in_the_deploy_model(name, output_stride, reductions):
    x = X96[:1, :, :64, :64]
    kwargs = dict(feature_location='bottleneck', output_stride=output_stride)
    model = randomize_(timm.create_model(name, **kwargs), seed=5).eval()
    features = timm.create_model(name, features_only=True, **kwargs).eval()
    state = model.state_dict()  # features_only flattens blocks.N into blocks_N
    features.load_state_dict({k: state[k.replace('blocks_', 'blocks.', 1)] for k in features.state_dict()})
    fused, fused_features = reparameterize_model(model), reparameterize_model(features)
    assert fused_features.feature_info.channels() == END_OF_RESOLUTION_CHANNELS[name]
    assert fused_features.feature_info.reduction() == reductions
    with torch.no_grad():
        ref = model.forward_intermediates(x, intermediates_only=True)
        inter = fused.forward_intermediates(x, intermediates_only=True)
        maps = fused_features(x)
    for out in (inter, maps):
        assert [f.shape[1] for f in out] == END_OF_RESOLUTION_CHANNELS[name]
        assert [64 // f.shape[-1] for f in out] == reductions
        assert all(_is_channels_last(f) for f in out)
        assert max(_max_diff(a, b) for a, b in zip(out, ref)) <= TOL


def test_onednn_probe_passes_here_and_reports_a_real_failure():
    ops = _compat.onednn_ops()
    if ops is None:
        pytest.skip(f'torch {torch.__version__} here has no oneDNN pointwise-conv ops: the fast path is off')
    assert probe_onednn(ops) is None
    # oneDNN's packed-weight conv takes no float64: its own error comes back as the reason
    reason = probe_onednn(ops, torch.float64)
    assert reason.startswith('its probe failed: RuntimeError: ') and 'float' in reason


_FAILED_PROBE = """
import warnings, torch, timm
import timm_ghost
from timm.utils import reparameterize_model
from timm_ghost import _compat, deploy
from timm_ghost.testing import randomize_
fused = reparameterize_model(randomize_(timm.create_model('ghostnet_050')).eval())
x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
portable = fused(x).detach()  # autograd on: the standard-ops path
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    assert not deploy.check_onednn(torch.float64)  # the first probe, in a dtype oneDNN refuses
    with torch.no_grad():
        out = fused(x)
        assert not deploy.fast_path_enabled(x)
        out2 = fused(x)
runtime = [w for w in caught if issubclass(w.category, RuntimeWarning)]
print(len(runtime))
print(runtime[0].message)
print(_compat.onednn_ops() is None, torch.equal(out, portable), torch.equal(out2, portable))
"""


def test_a_failing_probe_switches_the_fast_path_off_with_one_warning():
    if _compat.onednn_ops() is None:
        pytest.skip(f'torch {torch.__version__} here has no oneDNN pointwise-conv ops: the fast path is off')
    res = subprocess.run([sys.executable, '-c', _FAILED_PROBE], capture_output=True, text=True, timeout=120,
                         env={'OMP_NUM_THREADS': '1', **__import__('os').environ})
    assert res.returncode == 0, res.stderr
    count, message, checks = res.stdout.strip().splitlines()
    assert count == '1'
    assert message.startswith("timm-ghost: the deploy model's oneDNN fast path is off (its probe failed: RuntimeError")
    assert message.endswith('standard ops run instead (same results, slower on CPU)')
    assert checks == 'True True True'  # ops off for the process, outputs identical to the portable path


def test_fast_path_runs_only_for_eager_fp32_cpu_inference():
    x = torch.zeros(1, 3, 8, 8)
    assert not fast_path_enabled(x)  # autograd on
    with torch.no_grad():
        assert fast_path_enabled(x)
        assert not fast_path_enabled(x.bfloat16())
    with torch.inference_mode():
        assert fast_path_enabled(x)


def test_fast_path_slices_large_batches_without_changing_results(pair050, monkeypatch):
    _, fused = pair050
    with torch.no_grad():
        whole = fused(X96)
        monkeypatch.setattr(deploy, 'CHUNK_BYTES', 1)  # one image per slice in every block
        sliced = fused(X96)
    assert _max_diff(whole, sliced) <= 1e-5


def test_packed_weight_cache_follows_weight_changes(pair050):
    _, fused = copy.deepcopy(pair050)
    block = fused.blocks[1][0]
    with torch.no_grad():
        fused(X96)  # packs
        block.cheap1.weight.mul_(2.0)  # in-place edit
        block.shortcut_dw.weight = nn.Parameter(block.shortcut_dw.weight * 0.5)  # new tensor
        fast = fused(X96)
    portable = fused(X96)
    assert _max_diff(fast, portable.detach()) <= TOL
    state = fused.state_dict()
    state['blocks.3.0.cheap2.weight'] = state['blocks.3.0.cheap2.weight'] * 3.0
    fused.load_state_dict(state)
    with torch.no_grad():
        fast = fused(X96)
    assert _max_diff(fast, fused(X96).detach()) <= TOL


def test_deepcopy_and_pickle_of_a_used_model(pair050):
    model, fused = pair050
    with torch.no_grad():
        ref = model(X96)
        fused(X96)  # fills the packed-weight caches, which must not travel
    buf = io.BytesIO()
    torch.save(fused, buf)
    buf.seek(0)
    for other in (copy.deepcopy(fused), torch.load(buf, weights_only=False)):
        with torch.no_grad():
            assert _max_diff(other(X96), ref) <= TOL


def test_other_dtypes_take_the_portable_path(pair050):
    model, fused = pair050
    x = X96[:1, :, :32, :32]
    with torch.no_grad():
        ref = model(x)
        out = copy.deepcopy(fused).to(torch.float64)(x.double())
    assert out.dtype == torch.float64
    assert _max_diff(out.float(), ref) <= TOL


def test_training_the_fused_model_trains_a_network_without_normalisation(pair050):
    _, fused = copy.deepcopy(pair050)
    fused.train()
    assert _norm_count(fused) == 0
    loss = fused(X96).logsumexp(1).mean()
    loss.backward()
    grads = [p.grad for p in fused.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert fused.blocks[3][0].primary2_b.weight.grad.abs().sum() > 0


def test_blocks_outside_ghostnets_structure_fold_in_place():
    block = GhostBottleneck(16, 48, 24, 3, stride=2, se_ratio=0.25, act_layer=nn.Hardswish)
    net = randomize_(nn.Sequential(block)).eval()
    x = torch.randn(2, 16, 20, 20)
    with torch.no_grad():
        ref = net(x)
        fused = reparameterize_model(net)
        assert type(fused[0]) is GhostBottleneck and _norm_count(fused) == 0
        assert _max_diff(fused(x), ref) <= TOL


def test_blocks_without_a_registered_form_fold_in_place():
    class Bottleneck(GhostBottleneck):  # a subclass may compute something else: the deploy form is not assumed
        pass

    net = randomize_(nn.Sequential(Bottleneck(16, 48, 24, 3, stride=2, se_ratio=0.25))).eval()
    x = torch.randn(2, 16, 20, 20)
    with torch.no_grad():
        ref = net(x)
        fused = reparameterize_model(net)
        assert type(fused[0]) is Bottleneck and _norm_count(fused) == 0
        assert _max_diff(fused(x), ref) <= TOL


def test_fx_feature_extraction_traces_the_portable_path(pair050):
    from timm.models import create_feature_extractor
    model, fused = pair050
    with torch.no_grad():  # fx proxies must not reach the eager fast path's checks
        extractor = create_feature_extractor(fused, return_nodes={'blocks.5': 'stride16'})
        out = extractor(X96)['stride16']
        ref = model.forward_intermediates(X96, indices=[3], intermediates_only=True)[0]
    assert out.shape == ref.shape == (3, 40, 6, 6)
    assert _max_diff(out, ref) <= TOL


def test_torchscript(pair050):
    model, fused = pair050
    scripted = torch.jit.script(fused)
    with torch.no_grad():
        assert _max_diff(scripted(X96), model(X96)) <= TOL


def test_torch_compile_captures_one_graph(pair050):
    model, fused = pair050
    compiled = torch.compile(fused, fullgraph=True, backend='eager')  # dynamo capture
    with torch.no_grad():
        assert _max_diff(compiled(X96), model(X96)) <= TOL


def test_onnx_export_with_dynamic_batch_matches_onnxruntime(pair050, tmp_path):
    ort = pytest.importorskip('onnxruntime')
    model, fused = pair050
    path = tmp_path / 'ghostnet_050_fused.onnx'
    torch.onnx.export(fused, (X96[:2],), str(path), input_names=['x'], output_names=['logits'],
                      dynamic_shapes={'x': {0: torch.export.Dim('batch')}}, dynamo=True, verbose=False)
    sess = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    assert 'BatchNormalization' not in {n.op_type for n in __import__('onnx').load(str(path)).graph.node}
    with torch.no_grad():
        for x in (X96[:1], X96):
            (out,) = sess.run(None, {'x': x.numpy()})
            assert out.shape == (x.shape[0], 1000)
            assert abs(out - model(x).numpy()).max() <= TOL
