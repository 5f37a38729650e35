"""What the dense demos share: their settings and results, the backbone's starting weights, timm's optimizer and
schedule, the training loop, the pictures and the closing table.

``timm-ghost demo --task detect`` (:mod:`timm_ghost.detect_demo`) and ``--task segment``
(:mod:`timm_ghost.segment_demo`) train GhostNet as a dense-prediction backbone end to end, offline, on a CPU, on
scenes of handwritten digits (:mod:`timm_ghost.scenes`). Both start the backbone from the classification demo's
digits weights (:func:`timm_ghost.demo.run_demo`, run first when its folder is missing): the fine-tuning a user does
from ImageNet weights. Both save a picture of their predictions on held-out scenes, fold the trained model with
``timm.utils.reparameterize_model`` and check that the folded model predicts the same.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn

from .scenes import SceneConfig

__all__ = ['DenseDemoConfig', 'DenseDemoResult', 'DEFAULT_DIRS', 'default_config', 'format_dense_results']

DEFAULT_DIRS = {'detect': 'ghostnet-digits-detect', 'segment': 'ghostnet-digits-segment'}


@dataclass
class DenseDemoConfig:
    """Training settings of a dense demo (the defaults are the documented full runs)."""
    model: str = 'ghostnet_050'
    scenes: SceneConfig = field(default_factory=SceneConfig)
    epochs: int = 4
    batch_size: int = 8
    opt: str = 'sgd'  # timm.optim.create_optimizer_v2's name (SGD: momentum 0.9)
    lr: float = 0.02
    weight_decay: float = 1e-4
    clip_grad: float = 10.  # gradient-norm clip: keeps the first steps of a detector stable
    warmup_steps: int = 50
    threads: int = 1  # as the classification demo: a second OpenMP thread on a shared CPU can spin for nothing
    digits_weights: Optional[str] = None  # a classification demo folder's model/ (default: ./ghostnet-digits-demo)

    def __post_init__(self) -> None:
        for name in ('epochs', 'batch_size'):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f'{name} must be a positive integer, got {getattr(self, name)!r}')
        if not self.lr > 0:
            raise ValueError(f'lr must be > 0, got {self.lr!r}')
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0: torch's choice), got {self.threads!r}")


@dataclass
class DenseDemoResult:
    """Numbers of one dense demo run (also written to ``OUT/results.json``)."""
    task: str
    out_dir: str
    config: Dict[str, Any]
    num_train: int
    num_val: int
    history: List[Dict[str, float]]
    train_seconds: float
    metrics: Dict[str, float]
    folded_max_abs_diff: float
    picture: str
    threads: int
    extra: Dict[str, Any] = field(default_factory=dict)


# the full runs' settings per task (DenseDemoConfig's defaults are the detector's)
_TASK_SETTINGS: Dict[str, Dict[str, Any]] = {
    'detect': {}, 'segment': dict(opt='adamw', lr=5e-3, weight_decay=1e-4, epochs=8, batch_size=8)}


def default_config(task: str) -> DenseDemoConfig:
    """The documented full run's settings of ``task`` ('detect' or 'segment')."""
    if task not in _TASK_SETTINGS:
        raise ValueError(f"task must be 'detect' or 'segment', got {task!r}")
    return DenseDemoConfig(**_TASK_SETTINGS[task])


def _digits_weights(cfg: DenseDemoConfig, log: Callable[[str], None], progress: bool) -> Path:
    """The classification demo's Hub-ready folder (``model.safetensors`` + ``config.json``); the demo is run first
    when it is missing."""
    from .demo import DEFAULT_DEMO_DIR, DemoConfig, run_demo
    path = Path(cfg.digits_weights).expanduser() if cfg.digits_weights else Path(DEFAULT_DEMO_DIR) / 'model'
    if (path / 'model.safetensors').is_file():
        return path
    if cfg.digits_weights:
        raise FileNotFoundError(f'digits_weights: {path} has no model.safetensors (expected the model/ folder of a '
                                '`timm-ghost demo` run)')
    log(f'no digits weights at {path}: running the classification demo first')
    result = run_demo(path.parent, DemoConfig(model=cfg.model), progress=progress, log=log)
    return Path(result.model_dir)


def _mean_std() -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    return IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # the classification demo's normalisation (timm's default)


def _optimizer(params: List[nn.Parameter], cfg: DenseDemoConfig, total_steps: int) -> Tuple[Any, Any]:
    """timm's optimizer ``cfg.opt`` with timm's cosine schedule and a linear warm-up, stepped per update."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler
    optimizer = create_optimizer_v2(params, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=0.9)
    scheduler = CosineLRScheduler(optimizer, t_initial=total_steps, lr_min=cfg.lr / 100,
                                  warmup_t=min(cfg.warmup_steps, total_steps // 4), warmup_lr_init=cfg.lr / 100,
                                  t_in_epochs=False)
    return optimizer, scheduler


def _collate(batch: List[Any]) -> Tuple[Any, ...]:
    return tuple(zip(*batch))


def _run_context(out: Union[str, os.PathLike], cfg: DenseDemoConfig, force: bool, run: Callable[..., Any]) -> Any:
    previous = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return run(Path(out).expanduser(), cfg, force)
    finally:
        torch.set_num_threads(previous)


def _versions() -> Dict[str, str]:
    import timm
    import torchvision
    versions = {'torch': torch.__version__, 'torchvision': torchvision.__version__, 'timm': timm.__version__}
    try:
        import segmentation_models_pytorch as smp
        versions['segmentation_models_pytorch'] = smp.__version__
    except ImportError:
        pass
    return versions


def _train_loop(model: nn.Module, data: torch.utils.data.Dataset, cfg: DenseDemoConfig,
                loss_fn: Callable[..., torch.Tensor], progress: bool,
                log: Callable[[str], None]) -> Tuple[List[Dict[str, float]], float]:
    """``cfg.epochs`` epochs over ``data`` (shuffled, seeded); one history row per epoch."""
    from tqdm.auto import tqdm
    gen = torch.Generator().manual_seed(cfg.scenes.seed)
    loader = torch.utils.data.DataLoader(data, batch_size=cfg.batch_size, shuffle=True, generator=gen,
                                         collate_fn=_collate, drop_last=True)
    params = [p for p in model.parameters() if p.requires_grad]
    total = cfg.epochs * len(loader)
    optimizer, scheduler = _optimizer(params, cfg, total)
    history, step, start = [], 0, time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        t0, loss_sum = time.perf_counter(), 0.
        bar = tqdm(total=len(loader), desc=f'epoch {epoch + 1}/{cfg.epochs}', disable=not progress, unit='batch',
                   dynamic_ncols=True)
        for images, targets in loader:
            loss = loss_fn(model, images, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad:
                torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
            optimizer.step()
            step += 1
            scheduler.step_update(step)
            loss_sum += loss.item()
            bar.set_postfix(loss=f'{loss.item():.3f}', refresh=False)
            bar.update()
        bar.close()
        row = {'epoch': epoch + 1, 'loss': loss_sum / len(loader), 'lr': optimizer.param_groups[0]['lr'],
               'seconds': time.perf_counter() - t0}
        history.append(row)
        if not progress:
            log(f'epoch {epoch + 1}/{cfg.epochs}: loss {row["loss"]:.3f} ({row["seconds"]:.0f} s)')
    return history, time.perf_counter() - start


def _figure(num: int, cols: int = 4) -> Tuple[Any, Any]:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    rows = math.ceil(num / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows))
    return fig, list(axes.flat)


def _save_figure(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def format_dense_results(r: DenseDemoResult) -> str:
    """The dense demo's closing table (Markdown)."""
    minutes, seconds = divmod(int(round(r.train_seconds)), 60)
    m = r.metrics
    scenes = r.config['scenes']
    rows = [('data', f'digit scenes: {r.num_train} train / {r.num_val} held-out, {scenes["canvas"]} px, '
                     f'{scenes["min_digits"]}-{scenes["max_digits"]} digits of {scenes["min_size"]}-'
                     f'{scenes["max_size"]} px'),
            ('training', f'{len(r.history)} epochs in {minutes} min {seconds:02d} s on {r.threads} thread(s), '
                         f'final loss {r.history[-1]["loss"]:.3f}')]
    if r.task == 'detect':
        rows += [('held-out COCO mAP (0.5:0.95)', f'{m["mAP"]:.3f}'), ('held-out mAP@0.5', f'{m["mAP50"]:.3f}'),
                 ('held-out mAP@0.75', f'{m["mAP75"]:.3f}'),
                 ('folded vs trained', f'boxes and scores within {r.folded_max_abs_diff:.2g}')]
    else:
        rows += [('held-out mean IoU (11 classes)', f'{m["mIoU"]:.3f}'),
                 ('held-out pixel accuracy', f'{m["pixel_accuracy"]:.3f}'),
                 ('folded vs trained', f'logits within {r.folded_max_abs_diff:.2g}')]
    rows.append(('predictions', r.picture))
    width = max(len(k) for k, _ in rows)
    lines = [f'| {"step":<{width}} | result |', f'|{"-" * (width + 2)}|--------|']
    lines += [f'| {k:<{width}} | {v} |' for k, v in rows]
    return '\n'.join(lines)
