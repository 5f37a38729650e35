"""Distributed training on the CPU: two processes (torchrun, gloo) train ghostnet_050 under DistributedDataParallel;
SyncBatchNorm conversion keeps the eval outputs.

timm's train.py passes ``device_ids=[device]`` to DDP, which torch refuses for CPU modules, so DDP is driven here
directly, as train.py does it on GPUs (through ClassificationTask.prepare_distributed since timm 1.0.27, itself
before: tests/helpers.py's TrainRun). This file is also the worker script:
``torchrun --standalone --nproc_per_node=2 tests/test_distributed.py OUT``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import torch

WORLD_SIZE = 2
STEPS = 3
TIMEOUT_S = 240


def _worker(out: Path) -> None:
    """One rank: train a few steps on its own data shard under DDP, then save its weights and losses."""
    import timm
    import torch.distributed as dist
    from helpers import TrainRun
    from timm.optim import create_optimizer_v2
    from timm.utils import distribute_bn, random_seed

    import timm_ghost  # noqa: F401

    dist.init_process_group('gloo')
    rank = dist.get_rank()
    random_seed(0, rank)  # as train.py: per-rank seed, so the initial weights differ until DDP broadcasts rank 0's
    model = timm.create_model('ghostnet_050', num_classes=10, drop_path_rate=0.1)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    task = TrainRun(model)
    task.prepare_distributed()  # CPU: no device ids
    opt = create_optimizer_v2(task.trainable_module(), 'sgd', lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(100 + rank)  # each rank its own batches
    losses = []
    for _ in range(STEPS):
        x, y = torch.randn(8, 3, 32, 32, generator=gen), torch.randint(0, 10, (8,), generator=gen)
        result = task(x, y)
        opt.zero_grad()
        result['loss'].backward()
        opt.step()
        losses.append(result['loss'].item())
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    buffers_before = {k: v.clone() for k, v in model.named_buffers()}
    distribute_bn(model, dist.get_world_size(), reduce=True)  # train.py --dist-bn reduce, after each epoch
    torch.save({'params': params, 'buffers_before': buffers_before, 'state_dict': model.state_dict(), 'init': init,
                'losses': losses,
                'wrapped': type(task.trainable_module()).__name__}, out / f'rank{rank}.pt')
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope='module')
def ddp_run(tmp_path_factory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp('ddp')
    env = dict(os.environ, OMP_NUM_THREADS='1')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={WORLD_SIZE}',
           __file__, str(out)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f'two-process DDP run did not finish in {TIMEOUT_S} s: {e.stderr}')
    assert proc.returncode == 0, proc.stderr[-4000:]
    yield out
    shutil.rmtree(out, ignore_errors=True)


def test_ddp_ranks_end_with_identical_parameters(ddp_run):
    r0, r1 = (torch.load(ddp_run / f'rank{r}.pt', weights_only=True) for r in range(WORLD_SIZE))
    assert r0['wrapped'] == 'DistributedDataParallel'
    # the ranks saw different data (different losses) and started from different seeds...
    assert r0['losses'] != r1['losses']
    assert not torch.equal(r0['init']['conv_stem.weight'], r1['init']['conv_stem.weight'])
    # ...yet DDP's broadcast and gradient averaging leave the same weights on both
    import timm
    num_params = len(list(timm.create_model('ghostnet_050', num_classes=10).parameters()))
    assert len(r0['params']) == len(r1['params']) == num_params
    for k, v in r0['params'].items():
        assert torch.equal(v, r1['params'][k]), k
    # BN statistics follow each rank's own last batch until train.py's distribute_bn averages them
    assert not torch.equal(r0['buffers_before']['bn1.running_mean'], r1['buffers_before']['bn1.running_mean'])
    for k, v in r0['state_dict'].items():
        assert torch.allclose(v.float(), r1['state_dict'][k].float(), rtol=0, atol=1e-7), k
    # and training moved them (rank 0's init is the common starting point)
    moved = (r0['state_dict']['conv_stem.weight'] - r0['init']['conv_stem.weight']).abs().max().item()
    assert moved > 1e-4


def test_sync_batchnorm_conversion_keeps_eval_outputs():
    import timm
    from helpers import randomize_
    from timm.layers import convert_sync_batchnorm

    model = randomize_(timm.create_model('ghostnet_050', num_classes=10), seed=4).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    num_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    synced = convert_sync_batchnorm(model).eval()
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules()) == num_bn
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in synced.modules())
    with torch.no_grad():
        after = synced(x)
    assert (after - before).abs().max().item() < 1e-5
    # the state dict keeps its keys: checkpoints of a SyncBatchNorm run load into the plain model
    assert list(synced.state_dict()) == list(timm.create_model('ghostnet_050', num_classes=10).state_dict())


if __name__ == '__main__':
    _worker(Path(sys.argv[1]))
