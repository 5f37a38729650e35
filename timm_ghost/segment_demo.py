"""``timm-ghost demo --task segment``: segmentation_models_pytorch's ``FPN`` on ``tu-ghostnet_050`` with the
end-of-resolution taps, trained on digit scenes (PNG masks) from the digits weights, scored with the mean IoU over
background and the ten digits (``smp.metrics``), folded and checked, its predictions drawn."""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

import torch
import torch.nn as nn

from .dense_demo import (
    DEFAULT_DIRS,
    DenseDemoConfig,
    DenseDemoResult,
    _digits_weights,
    _figure,
    _mean_std,
    _run_context,
    _save_figure,
    _train_loop,
    _versions,
    default_config,
)
from .scenes import NUM_DIGITS, SegmentationScenes, write_digit_scenes

__all__ = ['build_segmenter', 'predict_masks', 'mean_iou', 'run_segment_demo']

def build_segmenter(cfg: DenseDemoConfig, backbone_weights: Optional[Path] = None) -> nn.Module:
    """smp's FPN on the GhostNet encoder with the end-of-resolution taps, 11 classes (background + digits); the
    encoder starts from ``backbone_weights`` (a Hub-ready folder) through timm's pretrained path. FPN rather than
    Unet: its prediction comes from the pyramid's semantic maps, and in a 120-step trial on 240 scenes it reached a
    mean IoU of 0.22 where Unets reached 0.13 to 0.16. A narrow pyramid (64 / 32 channels instead of 256 / 128):
    the default widths' 3x3 convs at 1/4 resolution made most of the training time."""
    import segmentation_models_pytorch as smp

    from . import ghostnet  # noqa: F401  (registers our ghostnet_* in timm)
    encoder = f'tu-local-dir:{backbone_weights}' if backbone_weights is not None else f'tu-{cfg.model}'
    return smp.FPN(encoder, encoder_weights=True if backbone_weights is not None else None,
                   feature_location='bottleneck', decoder_pyramid_channels=64, decoder_segmentation_channels=32,
                   classes=1 + NUM_DIGITS)


@torch.inference_mode()
def predict_masks(model: nn.Module, data: SegmentationScenes, batch_size: int = 32) -> Tuple[torch.Tensor, ...]:
    """Predicted and true class maps ``(N, H, W)`` over ``data``."""
    model.eval()
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in _mean_std())
    preds, masks = [], []
    for images, mask in torch.utils.data.DataLoader(data, batch_size=batch_size):
        preds.append(model((images - mean) / std).argmax(1))
        masks.append(mask)
    return torch.cat(preds), torch.cat(masks)


def mean_iou(pred: torch.Tensor, target: torch.Tensor, num_classes: int = 1 + NUM_DIGITS) -> Dict[str, float]:
    """smp.metrics' IoU per class over all pixels, and their mean (``mIoU``, background included) and pixel
    accuracy."""
    import segmentation_models_pytorch as smp
    tp, fp, fn, tn = smp.metrics.get_stats(pred, target, mode='multiclass', num_classes=num_classes)
    per_class = smp.metrics.iou_score(tp.sum(0), fp.sum(0), fn.sum(0), tn.sum(0), reduction='none')
    return {'mIoU': float(per_class.mean()), 'pixel_accuracy': float((pred == target).float().mean()),
            **{f'IoU_{"background" if c == 0 else c - 1}': float(v) for c, v in enumerate(per_class.tolist())}}


def run_segment_demo(
        out: Union[str, os.PathLike] = DEFAULT_DIRS['segment'],
        cfg: Optional[DenseDemoConfig] = None,
        force: bool = False,
        progress: bool = True,
        log: Callable[[str], None] = print,
) -> DenseDemoResult:
    """Train smp's FPN on the GhostNet encoder (from the digits weights) on digit scenes and score it.

    Writes ``out``: ``data/`` (the scenes: PNG images, PNG masks, COCO json), ``model.safetensors`` (the
    segmenter's state dict), ``predictions.png`` (held-out scenes, true and predicted masks) and ``results.json``;
    atomically. ``out`` must be new or empty unless ``force``.
    """
    cfg = cfg or default_config('segment')
    return _run_context(out, cfg, force, lambda o, c, f: _run_segment(o, c, f, progress, log))


def _run_segment(out: Path, cfg: DenseDemoConfig, force: bool, progress: bool,
                 log: Callable[[str], None]) -> DenseDemoResult:
    from safetensors.torch import save_file
    from timm.utils import random_seed, reparameterize_model

    from ._io import atomic_output_dir, check_output_dir

    check_output_dir(out, force=force)
    weights = _digits_weights(cfg, log, progress)
    with atomic_output_dir(out, force=force) as tmp:
        t0 = time.perf_counter()
        counts = write_digit_scenes(tmp / 'data', cfg.scenes)
        train_set, val_set = SegmentationScenes(tmp / 'data', 'train'), SegmentationScenes(tmp / 'data', 'val')
        log(f'[1/4] digit scenes: {counts["train"]} train / {counts["val"]} held-out, {cfg.scenes.canvas} px, '
            f'PNG masks + COCO json ({time.perf_counter() - t0:.1f} s)')

        random_seed(cfg.scenes.seed)
        model = build_segmenter(cfg, weights)
        log(f"[2/4] training smp.FPN('tu-local-dir:{weights}', feature_location='bottleneck') for {cfg.epochs} "
            f'epochs on {torch.get_num_threads()} thread(s)')
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in _mean_std())
        import segmentation_models_pytorch as smp
        ce, dice = nn.CrossEntropyLoss(), smp.losses.DiceLoss('multiclass')  # Dice: the thin digits count as much

        def loss_fn(m: nn.Module, images: Tuple[torch.Tensor, ...], masks: Tuple[torch.Tensor, ...]) -> torch.Tensor:
            logits, target = m((torch.stack(images) - mean) / std), torch.stack(masks)
            return ce(logits, target) + dice(logits, target)

        history, train_seconds = _train_loop(model, train_set, cfg, loss_fn, progress, log)
        pred, target = predict_masks(model, val_set)
        metrics = mean_iou(pred, target)
        log(f'[3/4] held-out scenes: mean IoU {metrics["mIoU"]:.3f} (background + 10 digits), pixel accuracy '
            f'{metrics["pixel_accuracy"]:.3f}')

        folded = reparameterize_model(model)
        with torch.inference_mode():
            x = (torch.stack([val_set[i][0] for i in range(8)]) - mean) / std
            diff = (model(x) - folded(x)).abs().max().item()
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / 'model.safetensors'))
        _draw_masks(folded, val_set, tmp / 'predictions.png')
        log(f'[4/4] folded segmenter (reparameterize_model): logits within {diff:.2g} of the trained one; '
            f'predictions drawn in {out / "predictions.png"}')
        result = DenseDemoResult(
            task='segment', out_dir=str(out), config=asdict(cfg), num_train=len(train_set), num_val=len(val_set),
            history=history, train_seconds=train_seconds, metrics=metrics, folded_max_abs_diff=diff,
            picture=str(out / 'predictions.png'), threads=torch.get_num_threads(), extra=_versions())
        (tmp / 'results.json').write_text(json.dumps(asdict(result), indent=2) + '\n')
    return result


@torch.inference_mode()
def _draw_masks(model: nn.Module, data: SegmentationScenes, path: Path, num: int = 4) -> None:
    """Held-out scenes, one per row: the image, the true mask, the predicted mask."""
    import numpy as np
    sub = torch.utils.data.Subset(data, range(min(num, len(data))))
    pred, target = predict_masks(model, sub)  # type: ignore[arg-type]
    fig, axes = _figure(3 * len(sub), cols=3)
    for k in range(len(sub)):
        image = data[k][0].permute(1, 2, 0).numpy()
        for ax, img, title in zip(axes[3 * k:3 * k + 3], (image, target[k].numpy(), pred[k].numpy()),
                                  ('image', 'true mask', 'predicted mask')):
            ax.imshow(img if img.ndim == 3 else np.ma.masked_equal(img, 0) - 1, cmap='tab10', vmin=0, vmax=9,
                      interpolation='nearest')
            ax.set_title(title, fontsize=9)
            ax.axis('off')
    for ax in axes[3 * len(sub):]:
        ax.axis('off')
    _save_figure(fig, path)
