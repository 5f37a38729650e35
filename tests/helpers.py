"""Shared test utilities (imported by the test modules; pytest puts tests/ on sys.path)."""
from __future__ import annotations

import argparse
from typing import Dict, List, Optional

import torch
import torch.nn as nn

import timm_ghost
from timm_ghost._compat import classification_task, timm_at_least
from timm_ghost.testing import randomize_

__all__ = ['MODEL_NAMES', 'END_OF_RESOLUTION_CHANNELS', 'randomize_', 'builtin_model', 'stage_outputs', 'TASK_API',
           'TrainRun', 'HUB_MODEL_ARGS']

MODEL_NAMES = list(timm_ghost.MODEL_NAMES)
# feature_location='bottleneck': channels of the last map at /2 /4 /8 /16 /32 (blocks.0/2/4/6/9), from the table:
# make_divisible(c * width, 4) of 16, 24, 40, 112 and the final conv's 960
END_OF_RESOLUTION_CHANNELS = {
    'ghostnet_050': [8, 12, 20, 56, 480],
    'ghostnet_100': [16, 24, 40, 112, 960],
    'ghostnet_130': [20, 32, 52, 144, 1248],
}

# config.json's model_args for a default GhostNet as publish.save_hub_folder writes them: timm records the model's
# arguments there since timm 1.0.31 (save_hub_folder drops num_classes, which stays at the config's root); older timm
# writes no model_args
HUB_MODEL_ARGS = {'in_chans': 3, 'global_pool': 'avg'} if timm_at_least('1.0.31') else None


def builtin_model(name: str, **kwargs) -> nn.Module:
    """timm's own built-in GhostNet of ``name`` (its entrypoint function, bypassing the registry we replace)."""
    from timm.models import ghostnet as timm_ghostnet
    return getattr(timm_ghostnet, name)(**kwargs)


def stage_outputs(model: nn.Module, x: torch.Tensor) -> List[torch.Tensor]:
    """The output of every stage of a GhostNet (``blocks.0`` .. ``blocks.9``), computed module by module."""
    x = model.act1(model.bn1(model.conv_stem(x)))
    outs = []
    for stage in model.blocks:
        x = stage(x)
        outs.append(x)
    return outs


# timm's train.py drives training through timm.task since timm 1.0.27 (ClassificationTask with its EMA, DDP wrapping
# and checkpoint helpers). Before, it calls the model and its loss itself, keeps a ModelEmaV3 beside the model, wraps
# DDP itself and resumes with timm.models.resume_checkpoint / load_checkpoint(use_ema=True). TrainRun follows the
# train.py of the installed timm, so the training tests check the contract that timm's train.py relies on.
TASK_API = timm_at_least('1.0.27')


class TrainRun:
    """A model, its training step (label smoothing ``smoothing``) and optionally its EMA (``ema_decay``), driven as
    the installed timm's train.py drives them."""

    def __init__(self, model: nn.Module, smoothing: float = 0., ema_decay: Optional[float] = None) -> None:
        self.model = model
        self.step_fn = classification_task(model, smoothing=smoothing)
        self.task = self.step_fn if TASK_API else None
        self.ema = None
        if ema_decay is not None:
            if self.task is not None:
                self.task.setup_ema(decay=ema_decay)
            else:
                from timm.utils import ModelEmaV3
                self.ema = ModelEmaV3(model, decay=ema_decay)
        self.wrapped: Optional[nn.Module] = None  # DDP, before timm.task

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> Dict[str, torch.Tensor]:
        if self.wrapped is not None:
            output = self.wrapped(x)
            return {'loss': self.step_fn.criterion(output, y), 'output': output}
        return self.step_fn(x, y)

    def train(self) -> None:
        self.step_fn.train()

    def trainable_module(self) -> nn.Module:
        """What the optimizer and the checkpoint saver see (the DDP wrapper once distributed)."""
        if self.task is not None:
            return self.task.get_trainable_module()
        return self.wrapped if self.wrapped is not None else self.model

    def ema_model(self) -> nn.Module:
        return self.task.get_trainable_module(ema=True).module if self.task is not None else self.ema.module

    def update_ema(self, step: int) -> None:
        if self.task is not None:
            self.task.update_ema(step=step)
        else:
            self.ema.update(self.model, step=step)

    def prepare_distributed(self) -> None:
        """DDP on the CPU (no device ids), as train.py wraps the model on GPUs."""
        if self.task is not None:
            self.task.prepare_distributed(device_ids=None)
        else:
            from torch.nn.parallel import DistributedDataParallel
            self.wrapped = DistributedDataParallel(self.model, device_ids=None)

    def saver(self, optimizer: torch.optim.Optimizer, checkpoint_dir: str, model_name: str):
        """train.py's CheckpointSaver for this run."""
        from timm.utils import CheckpointSaver
        args = argparse.Namespace(model=model_name)
        if self.task is not None:
            return CheckpointSaver(model=self.trainable_module(), optimizer=optimizer, args=args,
                                   checkpoint_dir=checkpoint_dir, recovery_dir=checkpoint_dir, task=self.task)
        return CheckpointSaver(model=self.trainable_module(), optimizer=optimizer, args=args, model_ema=self.ema,
                               checkpoint_dir=checkpoint_dir, recovery_dir=checkpoint_dir)

    def resume(self, checkpoint: str, optimizer: torch.optim.Optimizer) -> int:
        """train.py --resume: weights, optimizer and EMA from ``checkpoint``; returns the epoch to start at."""
        if self.task is not None:
            from timm.task import load_task_ema_checkpoint, resume_task_checkpoint
            epoch = resume_task_checkpoint(self.task, checkpoint, optimizer=optimizer, log_info=False)
            load_task_ema_checkpoint(self.task, checkpoint)
            return epoch
        from timm.models import load_checkpoint, resume_checkpoint
        epoch = resume_checkpoint(self.model, checkpoint, optimizer=optimizer, log_info=False)
        if self.ema is not None:
            load_checkpoint(self.ema.module, checkpoint, use_ema=True)
        return epoch
