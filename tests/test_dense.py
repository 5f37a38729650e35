"""GhostNet as a dense-prediction backbone: segmentation_models_pytorch encoders, torchvision detection backbones,
the fold inside whole models."""
from __future__ import annotations

import warnings
from collections import OrderedDict

import pytest
import timm
import torch
import torch.nn as nn
from helpers import END_OF_RESOLUTION_CHANNELS, MODEL_NAMES, builtin_model, randomize_
from safetensors.torch import save_file
from torchvision.ops import FrozenBatchNorm2d

import timm_ghost  # noqa: F401
from timm_ghost.blocks import GhostBottleneck
from timm_ghost.deploy import GhostBottleneckDeploy
from timm_ghost.detection import ghostnet_fpn_backbone

smp = pytest.importorskip('segmentation_models_pytorch', reason="needs segmentation_models_pytorch: pip install "
                                                               "'timm-ghost[dense]'")

DEFAULT_TAP_CHANNELS = {
    'ghostnet_050': [8, 12, 20, 40, 80],
    'ghostnet_100': [16, 24, 40, 80, 160],
    'ghostnet_130': [20, 32, 52, 104, 208],
}
# smp architecture, its kwargs, the output stride it asks of the encoder
SMP_MODELS = [
    ('Unet', {}, 32),
    ('FPN', {}, 32),
    ('DeepLabV3Plus', dict(encoder_output_stride=16), 16),
    ('DeepLabV3', {}, 8),
]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# ---------------------------------------------------------------- segmentation_models_pytorch


@pytest.mark.parametrize('name', MODEL_NAMES)
@pytest.mark.parametrize('arch,kwargs,output_stride', SMP_MODELS, ids=[m[0] for m in SMP_MODELS])
def test_smp_model_forward_backward_at_256px(name, arch, kwargs, output_stride):
    torch.manual_seed(0)
    model = getattr(smp, arch)(f'tu-{name}', encoder_weights=None, classes=3, **kwargs)
    x = torch.randn(2, 3, 256, 256)
    out = model(x)
    assert out.shape == (2, 3, 256, 256)
    out.square().mean().backward()
    encoder_grads = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in encoder_grads)
    assert sum(g.abs().sum().item() > 0 for g in encoder_grads) == len(encoder_grads)
    with torch.no_grad():
        deepest = model.encoder(x)[-1]
    assert deepest.shape[-1] == 256 // output_stride


@pytest.mark.parametrize('name', MODEL_NAMES)
@pytest.mark.parametrize('feature_location,expected', [('', DEFAULT_TAP_CHANNELS),
                                                       ('bottleneck', END_OF_RESOLUTION_CHANNELS)],
                         ids=['default', 'bottleneck'])
def test_smp_decoder_receives_feature_info_channels(name, feature_location, expected):
    kwargs = dict(feature_location=feature_location) if feature_location else {}
    model = smp.Unet(f'tu-{name}', encoder_weights=None, classes=2, **kwargs).eval()
    info = timm.create_model(name, features_only=True, **kwargs).feature_info.channels()
    assert info == expected[name]
    assert model.encoder.out_channels == [3, *info]
    with torch.no_grad():
        feats = model.encoder(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [3, *info]
    assert [f.shape[-1] for f in feats] == [64, 32, 16, 8, 4, 2]
    # the decoder's first block takes the deepest map plus the skip of the next one
    assert model.decoder.blocks[0].conv1[0].in_channels == info[-1] + info[-2]


def test_smp_deeplabv3_at_output_stride_8_fails_on_timms_builtin_and_builds_on_ours(monkeypatch):
    ours = smp.DeepLabV3('tu-ghostnet_100', encoder_weights=None, classes=2).eval()
    with torch.no_grad():
        assert ours(torch.randn(1, 3, 64, 64)).shape == (1, 2, 64, 64)
    create_model = timm.create_model
    # smp builds its encoder through timm.create_model: route it to timm's built-in entrypoint
    monkeypatch.setattr(timm, 'create_model', lambda name, **kw: builtin_model(name, **kw))
    with pytest.raises(AssertionError, match='only output_stride==32 is valid, dilation not supported'):
        smp.DeepLabV3('tu-ghostnet_100', encoder_weights=None, classes=2)
    monkeypatch.setattr(timm, 'create_model', create_model)


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_smp_encoder_weights_go_through_timms_pretrained_path(name, tmp_path):
    source = randomize_(timm.create_model(name), seed=3)
    path = tmp_path / 'w.safetensors'
    save_file(source.state_dict(), str(path))
    model = smp.Unet(f'tu-{name}', encoder_weights=True, feature_location='bottleneck',
                     pretrained_cfg_overlay=dict(file=str(path)), classes=2)
    encoder = model.encoder.model
    assert encoder.pretrained_cfg['file'] == str(path)
    loaded = dict(encoder.state_dict())
    src = source.state_dict()
    compared = [k for k in loaded if k.replace('blocks_', 'blocks.') in src]
    assert len(compared) == len(loaded)
    assert max(_max_diff(loaded[k], src[k.replace('blocks_', 'blocks.')]) for k in compared) == 0
    path.unlink()


def test_smp_encoder_weights_come_from_the_hub_as_create_model_loads_them(tmp_path):
    """``encoder_weights`` through the Hub route of the default tag (timm/ghostnet_100.in1k), served by the loopback
    Hub to a fresh process, as a user's smp model would get them."""
    from hub_server import HubServer, hub_env, run_client, state_digest
    from safetensors.torch import save as save_safetensors

    source = randomize_(timm.create_model('ghostnet_100'), seed=5).state_dict()
    with HubServer() as hub:
        hub.commit('timm/ghostnet_100.in1k', {'model.safetensors': save_safetensors(source)})
        run = run_client([{'id': 'unet', 'smp': 'Unet', 'encoder': 'tu-ghostnet_100',
                           'kwargs': {'encoder_weights': 'imagenet', 'feature_location': 'bottleneck', 'classes': 2}}],
                         hub_env(hub.endpoint, tmp_path / 'home'), timeout=300)
        assert hub.downloads('timm/ghostnet_100.in1k', 'model.safetensors') == 1
    r = run['unet']
    assert r['ok'], r
    assert r['hf_hub_id'] == 'timm/ghostnet_100.in1k'
    # the taps end at blocks.9 (the 960-channel conv): every weight but the head's
    assert set(r['keys']) == {k for k in source if not k.startswith(('conv_head.', 'classifier.'))}
    assert r['digest'] == state_digest({k: source[k] for k in r['keys']})


def test_smp_meta_device_construction_works_without_warnings():
    with torch.device('meta'):
        meta = timm.create_model('ghostnet_100', features_only=True)  # smp's first try, to read feature_info
    assert all(p.is_meta for p in meta.parameters())
    assert meta.feature_info.reduction() == [2, 4, 8, 16, 32]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        for name in MODEL_NAMES:
            smp.Unet(f'tu-{name}', encoder_weights=None, feature_location='bottleneck')
            smp.DeepLabV3(f'tu-{name}', encoder_weights=None)
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize('arch,kwargs', [('Unet', dict(feature_location='bottleneck')), ('DeepLabV3', {})],
                         ids=['Unet', 'DeepLabV3-os8'])
def test_reparameterize_folds_the_encoder_inside_an_smp_model(arch, kwargs):
    model = randomize_(getattr(smp, arch)('tu-ghostnet_100', encoder_weights=None, classes=4, **kwargs)).eval()
    x = torch.randn(2, 3, 128, 128)
    num_blocks = sum(isinstance(m, GhostBottleneck) for m in model.modules())
    assert num_blocks == (16 if kwargs else 12)  # the default taps end at blocks.7: smp leaves blocks.8-9 out
    with torch.no_grad():
        ref = model(x)
        folded = timm.utils.reparameterize_model(model)
        out = folded(x)
    assert sum(isinstance(m, GhostBottleneckDeploy) for m in folded.modules()) == num_blocks
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.encoder.modules())
    assert _max_diff(out, ref) < 1e-4


# ---------------------------------------------------------------- torchvision detection


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_fpn_backbone_returns_torchvisions_ordered_dict(name):
    backbone = ghostnet_fpn_backbone(name).eval()
    assert backbone.out_channels == 256
    with torch.no_grad():
        out = backbone(torch.randn(2, 3, 128, 96))
    assert isinstance(out, OrderedDict)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        '0': (2, 256, 32, 24), '1': (2, 256, 16, 12), '2': (2, 256, 8, 6), '3': (2, 256, 4, 3), 'pool': (2, 256, 2, 2)}
    assert [blk[0].in_channels for blk in backbone.fpn.inner_blocks] == END_OF_RESOLUTION_CHANNELS[name][1:]


def test_fpn_backbone_freezes_batchnorm_and_the_early_levels():
    backbone = ghostnet_fpn_backbone('ghostnet_100')
    num_bn = sum(isinstance(m, nn.BatchNorm2d) for m in timm.create_model('ghostnet_100').modules())
    assert num_bn == 80
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in backbone.body.modules()) == num_bn
    # trainable_layers=3: levels 2, 3, 4 (blocks.3 onwards) train; the stem and blocks.0-2 do not
    trainable = {n.split('.')[0] for n, p in backbone.body.named_parameters() if p.requires_grad}
    assert trainable == {f'blocks_{i}' for i in range(3, 10)}
    for layers, first in [(0, None), (1, 7), (2, 5), (4, 1), (5, 0)]:
        body = ghostnet_fpn_backbone('ghostnet_050', trainable_layers=layers).body
        trainable = sorted(int(n.split('.')[0][7:]) for n, p in body.named_parameters()
                           if p.requires_grad and n.startswith('blocks_'))
        assert (trainable[0] if trainable else None) == first
        assert body.conv_stem.weight.requires_grad == (layers == 5)
    trainable_bn = ghostnet_fpn_backbone('ghostnet_050', norm_layer=nn.BatchNorm2d)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in trainable_bn.modules()) == num_bn
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in trainable_bn.modules())


def test_fpn_backbone_frozen_batchnorm_keeps_its_statistics_in_training():
    backbone = randomize_(ghostnet_fpn_backbone('ghostnet_050', trainable_layers=5))
    before = {k: v.clone() for k, v in backbone.state_dict().items() if 'running' in k}
    backbone.train()
    backbone(torch.randn(2, 3, 64, 64))
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items() if 'running' in k)


def test_fpn_backbone_bad_arguments_name_the_parameter():
    with pytest.raises(ValueError, match=r'trainable_layers must be an integer in \[0, 5\], got 6'):
        ghostnet_fpn_backbone('ghostnet_050', trainable_layers=6)
    with pytest.raises(ValueError, match=r'returned_layers must be increasing levels in \[1, 4\] .*got \[0, 1\]'):
        ghostnet_fpn_backbone('ghostnet_050', returned_layers=[0, 1])
    with pytest.raises(ValueError, match=r'returned_layers must be .*got \[3, 2\]'):
        ghostnet_fpn_backbone('ghostnet_050', returned_layers=[3, 2])
    with pytest.raises(ValueError, match='norm_layer must be FrozenBatchNorm2d'):
        ghostnet_fpn_backbone('ghostnet_050', norm_layer=nn.GroupNorm)
    with pytest.raises(ValueError, match='features_only is set by ghostnet_fpn_backbone'):
        ghostnet_fpn_backbone('ghostnet_050', features_only=False)


def test_fpn_backbone_loads_pretrained_weights_and_dilates(tmp_path):
    source = randomize_(timm.create_model('ghostnet_050'), seed=5)
    path = tmp_path / 'w.safetensors'
    save_file(source.state_dict(), str(path))
    backbone = ghostnet_fpn_backbone('ghostnet_050', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                                     output_stride=16, returned_layers=[2, 3, 4])
    assert torch.equal(backbone.body.blocks_6[0].ghost1.primary_conv[0].weight,
                       source.blocks[6][0].ghost1.primary_conv[0].weight)
    assert torch.equal(backbone.body.blocks_6[0].ghost1.primary_conv[1].running_var,
                       source.blocks[6][0].ghost1.primary_conv[1].running_var)
    with torch.no_grad():
        out = backbone.eval()(torch.randn(1, 3, 64, 64))
    assert [v.shape[-1] for v in out.values()] == [8, 4, 4, 2]


@pytest.fixture(scope='module')
def scenes(tmp_path_factory):
    from timm_ghost.scenes import DetectionScenes, SceneConfig, write_digit_scenes
    root = tmp_path_factory.mktemp('scenes') / 'data'
    write_digit_scenes(root, SceneConfig(canvas=96, min_size=20, max_size=40, train_scenes=4, val_scenes=2))
    data = DetectionScenes(root, 'train')
    return [data[i] for i in range(len(data))]


def _detector(kind: str, name: str) -> nn.Module:
    from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7
    common = dict(num_classes=11, min_size=96, max_size=96)
    if kind == 'FasterRCNN':  # fewer proposals and sampled boxes than torchvision's defaults: the test stays short
        return FasterRCNN(ghostnet_fpn_backbone(name, out_channels=64), rpn_pre_nms_top_n_train=200,
                          rpn_post_nms_top_n_train=100, rpn_batch_size_per_image=64, box_batch_size_per_image=32,
                          **common)
    backbone = ghostnet_fpn_backbone(name, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(64, 64),
                                      out_channels=64)
    return (RetinaNet if kind == 'RetinaNet' else FCOS)(backbone, **common)


@pytest.mark.parametrize('name', MODEL_NAMES)
@pytest.mark.parametrize('kind', ['FasterRCNN', 'RetinaNet', 'FCOS'])
def test_detector_trains_and_predicts(kind, name, scenes):
    torch.manual_seed(0)
    model = _detector(kind, name)
    images, targets = [s[0] for s in scenes], [s[1] for s in scenes]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    model.train()
    losses = []
    for _ in range(8):
        loss_dict = model(images, targets)
        loss = sum(loss_dict.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses
    model.eval()
    with torch.no_grad():
        preds = model(images[:2])
    assert len(preds) == 2
    for p in preds:
        assert set(p) == {'boxes', 'scores', 'labels'}
        n = len(p['scores'])
        assert p['boxes'].shape == (n, 4) and p['labels'].shape == (n,) and p['labels'].dtype == torch.int64
        if n:
            assert (p['boxes'][:, 2:] >= p['boxes'][:, :2]).all() and p['boxes'].max() <= 96
            assert 1 <= p['labels'].min() and p['labels'].max() <= 10


@pytest.mark.parametrize('kind', ['FasterRCNN', 'RetinaNet'])
def test_reparameterize_folds_the_backbone_inside_a_detector(kind, scenes):
    torch.manual_seed(0)
    model = _detector(kind, 'ghostnet_100')
    if kind == 'FasterRCNN':
        randomize_(model.backbone.body, seed=1)
        model.roi_heads.score_thresh = 0.
    else:  # heads at their init score every anchor about 0.01, ties that any rounding reorders
        randomize_(model, seed=1)
        model.detections_per_img = 20
    model.eval()
    images = [s[0] for s in scenes[:2]]
    with torch.no_grad():
        ref = model(images)
        folded = timm.utils.reparameterize_model(model)
        out = folded(images)
    assert sum(isinstance(m, GhostBottleneckDeploy) for m in folded.modules()) == 16
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in folded.backbone.modules()) == 1  # the stem's stays
    for a, b in zip(ref, out):
        assert len(a['boxes']) > 0
        assert torch.equal(a['labels'], b['labels'])
        assert _max_diff(a['boxes'], b['boxes']) / 96 < 1e-4  # in units of the image side
        assert _max_diff(a['scores'], b['scores']) < 1e-4


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_frozen_batchnorm_folds_like_batchnorm(name):
    model = randomize_(timm.create_model(name)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        frozen = timm.layers.freeze_batch_norm_2d(timm.create_model(name))
        frozen.load_state_dict(model.state_dict())
        frozen.eval()
        assert _max_diff(frozen(x), ref) < 1e-5
        folded = timm.utils.reparameterize_model(frozen)
        assert _max_diff(folded(x), ref) < 1e-4
        plain = timm.utils.reparameterize_model(model)
        assert _max_diff(plain(x), ref) < 1e-4
    assert sum(isinstance(m, GhostBottleneckDeploy) for m in folded.modules()) == 16
    assert [type(m).__name__ for m in folded.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))] == [
        'FrozenBatchNorm2d']  # the stem's norm, which freeze_batch_norm_2d replaced by a plain FrozenBatchNorm2d


@pytest.mark.parametrize('fmt', ['onnx', pytest.param('openvino', marks=pytest.mark.slow)])
def test_smp_segmenter_with_a_folded_encoder_exports_verified(fmt, tmp_path):
    from timm_ghost.export import export_module, load_export
    model = randomize_(smp.Unet('tu-ghostnet_050', encoder_weights=None, feature_location='bottleneck',
                                decoder_channels=(64, 32, 16, 16, 8), classes=3)).eval()
    folded = timm.utils.reparameterize_model(model)
    assert sum(isinstance(m, GhostBottleneckDeploy) for m in folded.modules()) == 16
    result = export_module(folded, tmp_path / fmt, fmt, input_size=(3, 96, 96))
    assert result.metadata['output_size'] == [3, 96, 96]
    run = load_export(tmp_path / fmt)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        ref = model(x)
    assert _max_diff(torch.from_numpy(run(x.numpy())), ref) < 1e-4
    for path in (tmp_path / fmt).iterdir():
        path.unlink()


def test_docs_dense_table_is_bench_dense_output_of_the_committed_json():
    """docs/dense.md's speed table is exactly what bench_dense.py renders from benchmarks/results/dense.json."""
    import json
    import sys
    from pathlib import Path
    bench = Path(__file__).resolve().parent.parent / 'benchmarks'
    sys.path.insert(0, str(bench))
    try:
        import bench_dense
    finally:
        sys.path.remove(str(bench))
    data = json.loads((bench / 'results' / 'dense.json').read_text())
    assert data['kind'] == 'dense' and not data['short'] and data['sizes'] == [320, 512] and data['threads'] == 2
    start, end = bench_dense.DOCS_MARKERS
    doc = (bench.parent / 'docs' / 'dense.md').read_text()
    assert doc.count(start) == 1 and doc.count(end) == 1
    assert doc.split(f'{start}\n', 1)[1].split(end, 1)[0] == bench_dense.render_table(data)
