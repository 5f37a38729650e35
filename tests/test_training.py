"""The contract timm's train.py relies on, in-process: create_model with train.py's keywords, its training step
(timm.task since timm 1.0.27, the model and its loss before: tests/helpers.py's TrainRun), timm.optim (layer decay),
ModelEmaV3, checkpoint save / resume, grad checkpointing and channels_last in a training step."""
from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import TASK_API, TrainRun, randomize_
from safetensors.torch import save_file
from timm.layers import DropPath
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3, random_seed

from timm_ghost import GhostNet

NAME = 'ghostnet_050'
IMG = 32


def _batches(n: int, batch_size: int = 8, num_classes: int = 10, seed: int = 0, img_size: int = IMG):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch_size, 3, img_size, img_size, generator=gen),
             torch.randint(0, num_classes, (batch_size,), generator=gen)) for _ in range(n)]


def _train_py_create(**overrides) -> nn.Module:
    """timm.create_model exactly as train.py calls it (argument names and defaults of its command line)."""
    kwargs = dict(
        pretrained=False, in_chans=3, num_classes=10, drop_rate=0.0, drop_path_rate=None, drop_block_rate=None,
        global_pool=None, bn_momentum=None, bn_eps=None, scriptable=False, checkpoint_path='',
    )
    kwargs.update(overrides)
    return timm.create_model(NAME, **kwargs)


# ------------------------------------------------------------------------------------------------ create_model
def test_create_model_with_every_train_py_keyword():
    model = _train_py_create(drop_rate=0.2, drop_path_rate=0.1, global_pool='avgmax', bn_momentum=0.01, bn_eps=1e-3)
    assert isinstance(model, GhostNet) and model.num_classes == 10
    assert model.drop_rate == 0.2
    assert model.global_pool.pool_type == 'avgmax'
    drop_probs = [m.drop_prob for m in model.modules() if isinstance(m, DropPath)]
    assert len(drop_probs) == 15 and max(drop_probs) == pytest.approx(0.1)  # block 0 has rate 0
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) > 50 and all(m.momentum == 0.01 and m.eps == 1e-3 for m in norms)
    out = model(torch.randn(2, 3, IMG, IMG))
    assert out.shape == (2, 10)


def test_create_model_train_py_defaults_are_the_models():
    """train.py's None defaults are dropped by create_model: the model keeps its own."""
    model = _train_py_create()
    assert model.global_pool.pool_type == 'avg'
    assert not any(isinstance(m, DropPath) for m in model.modules())
    assert all(m.momentum == 0.1 and m.eps == 1e-5 for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_drop_block_rate_is_refused_with_a_pointer_to_drop_path():
    with pytest.raises(ValueError, match='drop_block_rate is not supported.*drop_path_rate'):
        _train_py_create(drop_block_rate=0.1)


def test_scriptable_model_scripts_like_train_py_torchscript():
    model = _train_py_create(scriptable=True, drop_path_rate=0.1).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        assert (scripted(x) - model(x)).abs().max().item() < 1e-5


def test_initial_checkpoint_loads_a_train_py_checkpoint(tmp_path):
    """--initial-checkpoint (checkpoint_path): a train.py checkpoint of a DDP-wrapped model loads into the new one."""
    source = randomize_(_train_py_create(), seed=1)
    state = {'module.' + k: v for k, v in source.state_dict().items()}
    torch.save({'epoch': 3, 'arch': NAME, 'state_dict': state}, tmp_path / 'checkpoint-3.pth.tar')
    model = _train_py_create(checkpoint_path=str(tmp_path / 'checkpoint-3.pth.tar'))
    diffs = [(a - b).abs().max().item() for a, b in zip(model.state_dict().values(), source.state_dict().values())
             if a.is_floating_point()]
    assert len(diffs) == len(source.state_dict()) - sum(1 for v in source.state_dict().values()
                                                         if not v.is_floating_point())
    assert max(diffs) == 0.


def test_pretrained_path_adapts_the_head(tmp_path):
    """--pretrained --pretrained-path FILE: pretrained_cfg_overlay=dict(file=..., num_classes=-1) forces head
    adaptation: the body comes from the 1000-class file, the 10-class classifier is new."""
    source = randomize_(timm.create_model(NAME), seed=2)
    save_file(source.state_dict(), tmp_path / 'in1k.safetensors')
    model = _train_py_create(pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / 'in1k.safetensors'),
                                                                          num_classes=-1))
    assert model.classifier.weight.shape == (10, 1280)
    body = {k: v for k, v in source.state_dict().items() if not k.startswith('classifier.')}
    own = model.state_dict()
    assert max((own[k] - v).abs().max().item() for k, v in body.items() if v.is_floating_point()) == 0.
    assert not torch.equal(own['classifier.weight'], source.state_dict()['classifier.weight'][:10])


# ------------------------------------------------------------------------------------------------ task / optim / EMA
def test_classification_task_forward_and_backward():
    random_seed(0)
    model = _train_py_create()
    run = TrainRun(model, smoothing=0.1)
    (x, y), = _batches(1)
    result = run(x, y)
    assert result['output'].shape == (8, 10) and result['loss'].ndim == 0
    expected = F.cross_entropy(result['output'], y, label_smoothing=0.1)
    assert (result['loss'] - expected).abs().item() < 1e-5
    result['loss'].backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads)
    assert sum(int(g.abs().sum() > 0) for g in grads) == len(grads)  # every parameter learns
    assert run.trainable_module() is model
    if TASK_API:
        assert run.task.get_eval_model() is model


def test_optimizer_layer_decay_follows_the_network_depth():
    model = _train_py_create()
    opt = create_optimizer_v2(model, 'sgd', lr=0.1, weight_decay=1e-4, momentum=0.9, layer_decay=0.75)
    by_name = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in opt.param_groups:
        for p in group['params']:
            by_name[names[id(p)]] = (group['lr_scale'], group['weight_decay'])
    assert len(by_name) == len(list(model.parameters()))
    scales = sorted({round(s, 12) for s, _ in by_name.values()})
    # stem, 16 bottlenecks, the head convs, the classifier: 19 depths
    assert len(scales) == 19
    assert by_name['classifier.weight'][0] == 1.0
    assert by_name['conv_stem.weight'][0] == pytest.approx(0.75 ** 18)
    block_scales = [by_name[f'{prefix}.ghost1.primary_conv.0.weight'][0] for prefix in
                    [n.rsplit('.ghost1', 1)[0] for n in by_name if n.endswith('ghost1.primary_conv.0.weight')]]
    assert len(block_scales) == 16 and all(a < b for a, b in zip(block_scales, block_scales[1:]))
    # weight decay only on conv / linear weights
    assert all((wd == 0.) == (p.ndim <= 1) for (_, wd), p in
               zip((by_name[n] for n, _ in model.named_parameters()), model.parameters()))


def test_model_ema_v3_tracks_the_model():
    random_seed(0)
    model = _train_py_create()
    ema = ModelEmaV3(model, decay=0.9)
    assert isinstance(ema.module, GhostNet)
    before = copy.deepcopy(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    (x, y), = _batches(1)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    ema.update(model, step=10)  # past warm-up: decay 0.9
    after = model.state_dict()
    for k, v in ema.module.state_dict().items():
        if v.is_floating_point():
            assert (v - (0.9 * before[k] + 0.1 * after[k])).abs().max().item() < 1e-6, k
    assert not torch.equal(ema.module.conv_stem.weight, model.conv_stem.weight)


# ------------------------------------------------------------------------------------------------ save / resume
def _setup(seed: int):
    random_seed(seed)
    model = _train_py_create(drop_rate=0.2, drop_path_rate=0.1)
    run = TrainRun(model, smoothing=0.1, ema_decay=0.9)
    opt = create_optimizer_v2(model, 'sgd', lr=0.05, momentum=0.9, weight_decay=1e-4)
    return run, opt


def _step(run, opt, batch, step: int) -> float:
    run.train()
    torch.manual_seed(1000 + step)  # dropout / drop-path draws, as a resumed run's seeding would give
    result = run(*batch)
    opt.zero_grad()
    result['loss'].backward()
    opt.step()
    run.update_ema(step=step + 100)
    return result['loss'].item()


def test_save_resume_continues_exactly(tmp_path):
    batches = _batches(4, seed=5)
    straight_run, straight_opt = _setup(seed=0)
    straight = [_step(straight_run, straight_opt, b, i) for i, b in enumerate(batches)]

    run, opt = _setup(seed=0)
    first = [_step(run, opt, b, i) for i, b in enumerate(batches[:2])]
    run.saver(opt, str(tmp_path), NAME).save_checkpoint(epoch=0, metric=50.)
    checkpoint = tmp_path / 'checkpoint-0.pth.tar'
    assert checkpoint.is_file()

    resumed, resumed_opt = _setup(seed=123)  # other init: everything must come from the checkpoint
    assert resumed.resume(str(checkpoint), resumed_opt) == 1
    rest = [_step(resumed, resumed_opt, b, i) for i, b in enumerate(batches[2:], start=2)]

    assert first == straight[:2]
    assert rest == straight[2:]  # bit for bit: weights, BN statistics, momentum buffers and EMA all restored
    for a, b in zip(resumed.ema_model().state_dict().values(), straight_run.ema_model().state_dict().values()):
        assert torch.equal(a, b)


def test_checkpoint_loads_into_a_fresh_model_for_validation(tmp_path):
    """validate.py --checkpoint: timm.models.load_checkpoint reads train.py's file into create_model's model."""
    from timm.models import load_checkpoint
    run, opt = _setup(seed=0)
    _step(run, opt, _batches(1)[0], 0)
    run.saver(opt, str(tmp_path), NAME).save_checkpoint(0, 1.)
    for use_ema, source in ((False, run.trainable_module()), (True, run.ema_model())):
        model = timm.create_model(NAME, num_classes=10)
        load_checkpoint(model, str(tmp_path / 'checkpoint-0.pth.tar'), use_ema=use_ema)
        for a, b in zip(model.state_dict().values(), source.state_dict().values()):
            assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------ memory / layout
@pytest.mark.parametrize('variant', ['grad_checkpointing', 'channels_last'])
def test_train_step_variants_match_the_plain_step(variant):
    """train.py --grad-checkpointing / --channels-last: two optimizer steps land on the same weights."""
    random_seed(0)
    plain = _train_py_create()
    init = [p.detach().clone() for p in plain.parameters()]
    other = copy.deepcopy(plain)
    calls = []
    other.blocks[3][0].register_forward_pre_hook(lambda *a: calls.append(1))
    if variant == 'grad_checkpointing':
        other.set_grad_checkpointing(True)
    else:
        other.to(memory_format=torch.channels_last)
    losses = {}
    for name, model in (('plain', plain), (variant, other)):
        task = TrainRun(model)
        opt = create_optimizer_v2(model, 'sgd', lr=0.01, momentum=0.9)
        losses[name] = []
        # 64 px and 16 images: BatchNorm over 1x1 late maps of 8 images is too ill-conditioned to compare float32 runs
        for x, y in _batches(2, batch_size=16, seed=3, img_size=64):
            if name == 'channels_last':
                x = x.to(memory_format=torch.channels_last)
            result = task(x, y)
            opt.zero_grad()
            result['loss'].backward()
            opt.step()
            losses[name].append(result['loss'].item())
    # checkpointing re-runs each segment's forward during backward
    assert len(calls) == (4 if variant == 'grad_checkpointing' else 2)
    if variant == 'channels_last':
        assert other.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    assert abs(losses['plain'][0] - losses[variant][0]) < 1e-5  # same weights, same images
    assert abs(losses['plain'][1] - losses[variant][1]) < 1e-3 * losses['plain'][1]
    # the two runs' weight updates agree to float32 rounding
    update = torch.cat([(p - p0).flatten() for p, p0 in zip(plain.parameters(), init)])
    gap = torch.cat([(p - q).flatten() for p, q in zip(plain.parameters(), other.parameters())])
    assert gap.norm() / update.norm() < 1e-2
