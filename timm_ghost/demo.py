"""``timm-ghost demo``: the whole loop on real data, offline, on a CPU, with timm's own training machinery.

Handwritten digits (scikit-learn) -> ImageFolder -> train ghostnet_050 from scratch with timm.data loaders and
transforms, timm.optim, timm.scheduler and timm.task.ClassificationTask -> Hub-ready folder (model.safetensors +
config.json, timm's ``save_for_hf`` through ``publish.save_hub_folder``, so transformers loads it too) -> reload
through ``timm.create_model('local-dir:...')`` -> BN-fused deploy model (``timm.utils.reparameterize_model``) -> same
predictions, timed side by side.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn

__all__ = [
    'DemoConfig', 'DemoResult', 'run_demo', 'train_classifier', 'evaluate', 'create_digits_loaders', 'format_results',
]

DEFAULT_DEMO_DIR = 'ghostnet-digits-demo'


@dataclass
class DemoConfig:
    """Settings of the demo run; the defaults reach >= 95 % validation top-1 on the digits (fixed seed)."""
    model: str = 'ghostnet_050'
    img_size: int = 64
    epochs: int = 10
    batch_size: int = 64
    opt: str = 'sgd'
    lr: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 5e-5
    sched: str = 'cosine'
    warmup_epochs: int = 1
    smoothing: float = 0.1
    drop_path_rate: float = 0.05
    scale: Tuple[float, float] = (0.7, 1.0)  # random-resized-crop area; no flips (digits are not symmetric)
    channels_last: bool = True  # NHWC: about 2x faster on CPUs for GhostNet's depthwise convolutions
    seed: int = 0
    workers: int = 0
    # torch CPU threads (0: torch's choice). One by default: these small batches leave little to split, and a second
    # OpenMP thread on a CPU that other jobs share can make training tens of times slower (spinning threads)
    threads: int = 1

    def __post_init__(self) -> None:
        for name in ('img_size', 'epochs', 'batch_size'):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f'{name} must be a positive integer, got {getattr(self, name)!r}')
        if self.img_size < 16:
            raise ValueError(f'img_size must be >= 16 (GhostNet downsamples by 32), got {self.img_size!r}')
        if not self.lr > 0:
            raise ValueError(f'lr must be > 0, got {self.lr!r}')
        if self.workers < 0:
            raise ValueError(f'workers must be >= 0, got {self.workers!r}')
        if self.threads < 0:
            raise ValueError(f'threads must be >= 0 (0: torch\'s choice), got {self.threads!r}')


@dataclass
class DemoResult:
    """Numbers of one demo run (also written to ``OUT/results.json``)."""
    out_dir: str
    model_dir: str
    config: Dict[str, Any]
    num_train: int
    num_val: int
    num_classes: int
    history: List[Dict[str, float]]
    train_seconds: float
    val_top1: float
    reloaded_top1: float
    fused_top1: float
    same_argmax: int
    max_abs_logit_diff: float
    params: int
    fused_params: int
    batch_ms: float
    fused_batch_ms: float
    timing_batch: int
    threads: int
    extra: Dict[str, Any] = field(default_factory=dict)


def create_digits_loaders(
        data_dir: Union[str, os.PathLike],
        model: nn.Module,
        cfg: DemoConfig,
) -> Tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader, Dict[str, Any]]:
    """timm.data loaders over an ImageFolder with ``train`` / ``validation`` splits.

    Returns ``(train_loader, val_loader, data_config)``; batches are ``(N, 3, img_size, img_size)`` float images
    normalised with the model's mean / std, and ``(N,)`` class indices. Evaluation resizes the whole image (no crop).
    """
    from timm.data import create_dataset, create_loader, resolve_data_config

    data_config = resolve_data_config({'input_size': (3, cfg.img_size, cfg.img_size), 'crop_pct': 1.0}, model=model)
    common = dict(
        input_size=data_config['input_size'], mean=data_config['mean'], std=data_config['std'],
        interpolation=data_config['interpolation'], num_workers=cfg.workers, use_prefetcher=False,
        device=torch.device('cpu'), persistent_workers=cfg.workers > 0,
    )
    train_set = create_dataset('', root=str(data_dir), split='train', is_training=True)
    val_set = create_dataset('', root=str(data_dir), split='validation', is_training=False)
    train_loader = create_loader(
        train_set, batch_size=cfg.batch_size, is_training=True, scale=cfg.scale, ratio=(0.9, 1.1), hflip=0.,
        color_jitter=0., **common)
    val_loader = create_loader(val_set, batch_size=cfg.batch_size, is_training=False, crop_pct=1.0, **common)
    return train_loader, val_loader, data_config


def _memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


@torch.inference_mode()
def evaluate(
        model: nn.Module,
        loader: torch.utils.data.DataLoader,
        channels_last: bool = False,
) -> Tuple[float, torch.Tensor, torch.Tensor]:
    """Top-1 accuracy (%) of ``model`` over ``loader``; also returns all logits ``(N, C)`` and targets ``(N,)``."""
    was_training = model.training
    model.eval()
    logits, targets = [], []
    for x, y in loader:
        logits.append(model(x.to(memory_format=_memory_format(channels_last))))
        targets.append(y)
    model.train(was_training)
    out, tgt = torch.cat(logits), torch.cat(targets)
    return 100. * (out.argmax(1) == tgt).float().mean().item(), out, tgt


def train_classifier(
        model: nn.Module,
        train_loader: torch.utils.data.DataLoader,
        val_loader: torch.utils.data.DataLoader,
        cfg: DemoConfig,
        progress: bool = True,
        log: Callable[[str], None] = print,
) -> List[Dict[str, float]]:
    """Train ``model`` in place with timm.task.ClassificationTask (label smoothing; the same step on a timm without
    timm.task, see :func:`timm_ghost._compat.classification_task`), timm.optim.create_optimizer_v2
    and timm.scheduler.create_scheduler_v2 (per-update warm-up + cosine). Returns one dict per epoch:
    ``epoch``, ``loss`` (mean training loss), ``lr`` (at the epoch's end), ``val_top1`` (%), ``seconds``."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from tqdm.auto import tqdm

    from ._compat import classification_task

    task = classification_task(model, smoothing=cfg.smoothing)
    optimizer = create_optimizer_v2(
        model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    updates_per_epoch = len(train_loader)
    scheduler, num_epochs = create_scheduler_v2(
        optimizer, sched=cfg.sched, num_epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.lr / 100,
        min_lr=cfg.lr / 1000, step_on_epochs=False, updates_per_epoch=updates_per_epoch)
    history = []
    num_updates = 0
    for epoch in range(num_epochs):
        task.train()
        start, loss_sum, seen = time.perf_counter(), 0., 0
        bar = tqdm(total=len(train_loader), desc=f'epoch {epoch + 1}/{num_epochs}', disable=not progress,
                   unit='batch', dynamic_ncols=True)
        for x, y in train_loader:
            result = task(x.to(memory_format=_memory_format(cfg.channels_last)), y)
            optimizer.zero_grad(set_to_none=True)
            result['loss'].backward()
            optimizer.step()
            num_updates += 1
            scheduler.step_update(num_updates=num_updates)
            loss_sum += result['loss'].item() * x.shape[0]
            seen += x.shape[0]
            bar.set_postfix(loss=f'{loss_sum / seen:.3f}', lr=f'{optimizer.param_groups[0]["lr"]:.3g}', refresh=False)
            bar.update()
        scheduler.step(epoch + 1)
        top1, _, _ = evaluate(model, val_loader, cfg.channels_last)
        row = dict(epoch=epoch + 1, loss=loss_sum / seen, lr=optimizer.param_groups[0]['lr'], val_top1=top1,
                   seconds=time.perf_counter() - start)
        history.append(row)
        bar.set_postfix(loss=f'{row["loss"]:.3f}', val_top1=f'{top1:.1f}%')
        bar.close()
        if not progress:
            log(f'epoch {epoch + 1}/{num_epochs}: loss {row["loss"]:.3f}, val top-1 {top1:.1f} %')
    return history


def _time_batch_ms(model: nn.Module, x: torch.Tensor) -> float:
    """Median wall time (ms) of one forward of ``x`` (torch.utils.benchmark, inference mode, current threads)."""
    import logging
    cpp_logger = logging.getLogger('torch.utils.cpp_extension')  # its import warns when a CUDA build finds no GPU
    level = cpp_logger.level
    cpp_logger.setLevel(logging.ERROR)
    try:
        from torch.utils.benchmark import Timer
    finally:
        cpp_logger.setLevel(level)
    with torch.inference_mode():
        timer = Timer(stmt='model(x)', globals={'model': model, 'x': x}, num_threads=torch.get_num_threads())
        return timer.blocked_autorange(min_run_time=1.0).median * 1e3


def run_demo(
        out: Union[str, os.PathLike] = DEFAULT_DEMO_DIR,
        cfg: Optional[DemoConfig] = None,
        force: bool = False,
        progress: bool = True,
        log: Callable[[str], None] = print,
) -> DemoResult:
    """Run the demo and write ``out``: ``data/`` (digits ImageFolder), ``model/`` (model.safetensors + config.json,
    loadable with ``timm.create_model('local-dir:OUT/model')``) and ``results.json``.

    ``out`` must not exist or be empty unless ``force``; everything is written to a temporary folder beside it and
    renamed into place only when the run succeeded. torch's thread count is set to ``cfg.threads`` for the run and
    restored afterwards. Returns the run's numbers.
    """
    cfg = cfg or DemoConfig()
    previous_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _run_demo(Path(out).expanduser(), cfg, force, progress, log)
    finally:
        torch.set_num_threads(previous_threads)


def _run_demo(out: Path, cfg: DemoConfig, force: bool, progress: bool, log: Callable[[str], None]) -> DemoResult:
    import timm
    from timm.utils import random_seed, reparameterize_model

    from . import ghostnet  # noqa: F401  (registers our ghostnet_* in timm)
    from ._io import atomic_output_dir
    from .data import write_digits_imagefolder
    from .models_info import count_params
    from .publish import save_hub_folder

    threads = torch.get_num_threads()
    fmt = _memory_format(cfg.channels_last)
    with atomic_output_dir(out, force=force) as tmp:
        t0 = time.perf_counter()
        digits = write_digits_imagefolder(tmp / 'data', img_size=cfg.img_size, seed=cfg.seed)
        log(f'[1/5] digits ImageFolder: {digits.counts["train"]} train / {digits.counts["validation"]} validation '
            f'images, {digits.num_classes} classes, {cfg.img_size}x{cfg.img_size} px '
            f'({time.perf_counter() - t0:.1f} s)')

        random_seed(cfg.seed)
        model = timm.create_model(cfg.model, num_classes=digits.num_classes, drop_path_rate=cfg.drop_path_rate)
        model.to(memory_format=fmt)
        train_loader, val_loader, data_config = create_digits_loaders(tmp / 'data', model, cfg)
        log(f'[2/5] training {cfg.model} ({type(model).__module__}.{type(model).__name__}, '
            f'{count_params(model) / 1e6:.2f} M params) from scratch for {cfg.epochs} epochs '
            f'on {threads} CPU thread(s): {cfg.opt} lr {cfg.lr}, {cfg.sched} schedule, label smoothing '
            f'{cfg.smoothing}, drop path {cfg.drop_path_rate}')
        t0 = time.perf_counter()
        history = train_classifier(model, train_loader, val_loader, cfg, progress=progress, log=log)
        train_seconds = time.perf_counter() - t0
        val_top1, logits, targets = evaluate(model, val_loader, cfg.channels_last)

        model_dir = tmp / 'model'
        label_names = [str(i) for i in range(digits.num_classes)]
        model.to(memory_format=torch.contiguous_format)  # safetensors stores contiguous tensors only
        model.pretrained_cfg = _digits_weights_cfg(model.pretrained_cfg, cfg, digits, val_top1)
        save_hub_folder(model, model_dir, model_config=dict(label_names=label_names), data_config=data_config)
        log(f'[3/5] saved a Hub-ready folder: {out / "model"} '
            f'({", ".join(sorted(p.name for p in model_dir.iterdir()))})')

        reloaded = timm.create_model(f'local-dir:{model_dir}', pretrained=True).eval().to(memory_format=fmt)
        reloaded_top1, reloaded_logits, _ = evaluate(reloaded, val_loader, cfg.channels_last)
        if reloaded_logits.shape != logits.shape or not torch.equal(reloaded_logits, logits):
            raise RuntimeError('the model reloaded from model.safetensors does not reproduce the trained logits '
                               f'(max abs diff {(reloaded_logits - logits).abs().max().item():.3g})')
        log(f"[4/5] reloaded with timm.create_model('local-dir:{out / 'model'}'): validation logits identical")

        fused = reparameterize_model(reloaded)  # a fused copy; `reloaded` keeps its BatchNorms
        fused_top1, fused_logits, _ = evaluate(fused, val_loader, cfg.channels_last)
        same_argmax = int((fused_logits.argmax(1) == reloaded_logits.argmax(1)).sum())
        max_diff = (fused_logits - reloaded_logits).abs().max().item()
        x = next(iter(val_loader))[0].to(memory_format=fmt)
        batch_ms = _time_batch_ms(reloaded, x)
        fused_batch_ms = _time_batch_ms(fused, x)
        log(f'[5/5] BN-fused deploy model: {same_argmax}/{len(targets)} identical top-1 predictions, '
            f'max |logit diff| {max_diff:.2g}; batch of {x.shape[0]}: {batch_ms:.1f} ms -> {fused_batch_ms:.1f} ms')

        result = DemoResult(
            out_dir=str(out), model_dir=str(out / 'model'), config=asdict(cfg), num_train=digits.counts['train'],
            num_val=digits.counts['validation'], num_classes=digits.num_classes, history=history,
            train_seconds=train_seconds, val_top1=val_top1, reloaded_top1=reloaded_top1, fused_top1=fused_top1,
            same_argmax=same_argmax, max_abs_logit_diff=max_diff,
            params=count_params(reloaded), fused_params=count_params(fused),
            batch_ms=batch_ms, fused_batch_ms=fused_batch_ms, timing_batch=int(x.shape[0]), threads=threads,
            extra=dict(timm_version=timm.__version__, torch_version=torch.__version__),
        )
        (tmp / 'results.json').write_text(json.dumps(asdict(result), indent=2) + '\n')
    return result


def _digits_weights_cfg(cfg: Dict[str, Any], demo: DemoConfig, digits: Any, val_top1: float) -> Dict[str, Any]:
    """The pretrained cfg saved with the demo's weights: what trained them, on what, with which result (nothing of
    the variant's default ImageNet tag)."""
    from .publish import weights_cfg

    return weights_cfg(
        cfg, tag=None,
        description=(f'trained from scratch by timm-ghost demo on scikit-learn\'s handwritten digits '
                     f'({digits.counts["train"]} training images, {digits.num_classes} classes, {demo.img_size} px): '
                     f'{demo.epochs} epochs, {demo.opt} lr {demo.lr}, {demo.sched} schedule, label smoothing '
                     f'{demo.smoothing}, drop path {demo.drop_path_rate}, seed {demo.seed}'),
        notes=[f'validation top-1 {val_top1:.2f} % on the {digits.counts["validation"]} held-out digits (measured by '
               f'the demo)'])


def format_results(r: DemoResult) -> str:
    """The demo's closing table (Markdown)."""
    best = max(h['val_top1'] for h in r.history)
    minutes, seconds = divmod(int(round(r.train_seconds)), 60)
    rows = [
        ('data', f'sklearn digits: {r.num_train} train / {r.num_val} val images, {r.num_classes} classes, '
                 f'{r.config["img_size"]} px'),
        ('training', f'{r.config["model"]}, {len(r.history)} epochs in {minutes} min {seconds:02d} s '
                     f'on {r.threads} thread(s), final loss {r.history[-1]["loss"]:.3f}'),
        ('val top-1, trained', f'{r.val_top1:.2f} % (best epoch {best:.2f} %)'),
        ('val top-1, reloaded (local-dir:)', f'{r.reloaded_top1:.2f} %'),
        ('val top-1, BN-fused', f'{r.fused_top1:.2f} %'),
        ('fused vs unfused', f'{r.same_argmax}/{r.num_val} same top-1, max abs logit diff {r.max_abs_logit_diff:.2g}'),
        ('params', f'{r.params / 1e6:.3f} M -> {r.fused_params / 1e6:.3f} M fused'),
        (f'CPU latency, batch {r.timing_batch}',
         f'{r.batch_ms:.1f} ms -> {r.fused_batch_ms:.1f} ms fused ({r.batch_ms / r.fused_batch_ms:.2f}x)'),
        ('Hub-ready folder', f'{r.model_dir} (model.safetensors, config.json)'),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f'| {"step":<{width}} | result |', f'|{"-" * (width + 2)}|--------|']
    lines += [f'| {k:<{width}} | {v} |' for k, v in rows]
    return '\n'.join(lines)
