"""``timm-ghost demo --task detect``: torchvision's ``FasterRCNN`` on
:func:`timm_ghost.detection.ghostnet_fpn_backbone`, trained on digit scenes (COCO json) from the digits weights,
scored with pycocotools' ``COCOeval`` (COCO mAP and mAP@0.5), folded and checked, its predictions drawn."""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import torch
import torch.nn as nn

from .dense_demo import (
    DEFAULT_DIRS,
    DenseDemoConfig,
    DenseDemoResult,
    _collate,
    _digits_weights,
    _figure,
    _mean_std,
    _run_context,
    _save_figure,
    _train_loop,
    _versions,
    default_config,
)
from .scenes import NUM_DIGITS, DetectionScenes, write_digit_scenes

__all__ = ['build_detector', 'predict_detections', 'coco_map', 'run_detect_demo']

def build_detector(cfg: DenseDemoConfig, backbone_weights: Optional[Path] = None) -> nn.Module:
    """Faster R-CNN on a GhostNet FPN backbone (levels at strides 8 / 16 / 32 + pool, 128 channels), sized for
    digits of 24 to 48 px on a small canvas: one anchor size per level (16 to 128 px), a 256-wide box head."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

    from .detection import ghostnet_fpn_backbone
    name = f'local-dir:{backbone_weights}' if backbone_weights is not None else cfg.model
    backbone = ghostnet_fpn_backbone(name, pretrained=backbone_weights is not None, trainable_layers=5,
                                     returned_layers=[2, 3, 4], out_channels=128)
    mean, std = _mean_std()
    size = cfg.scenes.canvas
    anchors = AnchorGenerator(sizes=((16,), (32,), (64,), (128,)), aspect_ratios=((0.5, 1.0, 2.0),) * 4)
    return FasterRCNN(
        backbone, rpn_anchor_generator=anchors,
        box_head=TwoMLPHead(backbone.out_channels * 7 * 7, 256), box_predictor=FastRCNNPredictor(256, 1 + NUM_DIGITS),
        min_size=size, max_size=size, image_mean=list(mean), image_std=list(std),
        rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=150, rpn_pre_nms_top_n_test=150,
        rpn_post_nms_top_n_test=50, rpn_batch_size_per_image=128, box_batch_size_per_image=64,
        box_detections_per_img=20)


@torch.inference_mode()
def predict_detections(model: nn.Module, data: DetectionScenes, batch_size: int = 16) -> List[Dict[str, Any]]:
    """The detector's predictions on ``data`` as COCO results (``image_id``, ``category_id``, ``bbox`` xywh,
    ``score``)."""
    model.eval()
    results = []
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, collate_fn=_collate)
    for images, targets in loader:
        for out, target in zip(model(list(images)), targets):
            for box, score, label in zip(out['boxes'].tolist(), out['scores'].tolist(), out['labels'].tolist()):
                results.append({'image_id': int(target['image_id']), 'category_id': int(label),
                                'bbox': [box[0], box[1], box[2] - box[0], box[3] - box[1]], 'score': float(score)})
    return results


def coco_map(data: DetectionScenes, results: List[Dict[str, Any]]) -> Dict[str, float]:
    """pycocotools' bbox evaluation of ``results`` against ``data``'s annotations: ``mAP`` (0.5:0.95),
    ``mAP50``, ``mAP75``, ``AR100``."""
    import contextlib
    import io

    from pycocotools.cocoeval import COCOeval
    if not results:
        return {'mAP': 0., 'mAP50': 0., 'mAP75': 0., 'AR100': 0.}
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its table; the demo prints its own
        detections = data.coco.loadRes(results)
        evaluator = COCOeval(data.coco, detections, 'bbox')
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    s = evaluator.stats
    return {'mAP': float(s[0]), 'mAP50': float(s[1]), 'mAP75': float(s[2]), 'AR100': float(s[8])}


def run_detect_demo(
        out: Union[str, os.PathLike] = DEFAULT_DIRS['detect'],
        cfg: Optional[DenseDemoConfig] = None,
        force: bool = False,
        progress: bool = True,
        log: Callable[[str], None] = print,
) -> DenseDemoResult:
    """Train Faster R-CNN on a GhostNet FPN backbone (from the digits weights) on digit scenes and score it.

    Writes ``out``: ``data/`` (the scenes: PNG images, COCO json, PNG masks), ``model.safetensors`` (the detector's
    state dict), ``predictions.png`` (held-out scenes with predicted boxes) and ``results.json``; atomically (a
    temporary folder renamed into place when the run succeeded). ``out`` must be new or empty unless ``force``.
    """
    cfg = cfg or default_config('detect')
    return _run_context(out, cfg, force, lambda o, c, f: _run_detect(o, c, f, progress, log))


def _run_detect(out: Path, cfg: DenseDemoConfig, force: bool, progress: bool,
                log: Callable[[str], None]) -> DenseDemoResult:
    from safetensors.torch import save_file
    from timm.utils import random_seed, reparameterize_model

    from ._io import atomic_output_dir, check_output_dir

    check_output_dir(out, force=force)
    weights = _digits_weights(cfg, log, progress)
    with atomic_output_dir(out, force=force) as tmp:
        t0 = time.perf_counter()
        counts = write_digit_scenes(tmp / 'data', cfg.scenes)
        train_set, val_set = DetectionScenes(tmp / 'data', 'train'), DetectionScenes(tmp / 'data', 'val')
        log(f'[1/4] digit scenes: {counts["train"]} train / {counts["val"]} held-out, {cfg.scenes.canvas} px, '
            f'COCO json + PNG ({time.perf_counter() - t0:.1f} s)')

        random_seed(cfg.scenes.seed)
        model = build_detector(cfg, weights)
        log(f'[2/4] training Faster R-CNN on ghostnet_fpn_backbone(local-dir:{weights}) for {cfg.epochs} epochs on '
            f'{torch.get_num_threads()} thread(s) (FrozenBatchNorm2d in the backbone)')
        history, train_seconds = _train_loop(
            model, train_set, cfg, lambda m, images, targets: sum(m(list(images), list(targets)).values()),
            progress, log)

        results = predict_detections(model, val_set)
        metrics = coco_map(val_set, results)
        log(f'[3/4] held-out scenes: COCO mAP {metrics["mAP"]:.3f}, mAP@0.5 {metrics["mAP50"]:.3f}, '
            f'mAP@0.75 {metrics["mAP75"]:.3f} (pycocotools)')

        folded = reparameterize_model(model)
        diff = _detections_diff(model, folded, val_set)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / 'model.safetensors'))
        _draw_detections(folded, val_set, tmp / 'predictions.png')
        log(f'[4/4] folded detector (reparameterize_model): boxes and scores within {diff:.2g} of the trained one; '
            f'predictions drawn in {out / "predictions.png"}')
        result = DenseDemoResult(
            task='detect', out_dir=str(out), config=asdict(cfg), num_train=len(train_set), num_val=len(val_set),
            history=history, train_seconds=train_seconds, metrics=metrics, folded_max_abs_diff=diff,
            picture=str(out / 'predictions.png'), threads=torch.get_num_threads(), extra=_versions())
        (tmp / 'results.json').write_text(json.dumps(asdict(result), indent=2) + '\n')
    return result


@torch.inference_mode()
def _detections_diff(model: nn.Module, folded: nn.Module, data: DetectionScenes, num: int = 8) -> float:
    """Largest difference of boxes and scores between two detectors on the first ``num`` images of ``data``
    (infinite when they keep different numbers of detections or labels)."""
    images = [data[i][0] for i in range(min(num, len(data)))]
    model.eval()
    folded.eval()
    diff = 0.
    for a, b in zip(model(images), folded(images)):
        if a['boxes'].shape != b['boxes'].shape or not torch.equal(a['labels'], b['labels']):
            return math.inf
        if len(a['boxes']):
            diff = max(diff, (a['boxes'] - b['boxes']).abs().max().item(),
                       (a['scores'] - b['scores']).abs().max().item())
    return diff


@torch.inference_mode()
def _draw_detections(model: nn.Module, data: DetectionScenes, path: Path, num: int = 8,
                     min_score: float = 0.5) -> None:
    """Held-out scenes with the predicted boxes (score >= ``min_score``) and ``digit score`` labels."""
    import matplotlib.patches as patches
    model.eval()
    images = [data[i][0] for i in range(min(num, len(data)))]
    fig, axes = _figure(len(images))
    for ax, image, out in zip(axes, images, model(images)):
        ax.imshow(image.permute(1, 2, 0).numpy())
        for box, score, label in zip(out['boxes'].tolist(), out['scores'].tolist(), out['labels'].tolist()):
            if score < min_score:
                continue
            ax.add_patch(patches.Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1], fill=False,
                                           edgecolor='lime', linewidth=1.5))
            ax.text(box[0], box[1] - 2, f'{label - 1} {score:.2f}', color='lime', fontsize=8)
        ax.axis('off')
    for ax in axes[len(images):]:
        ax.axis('off')
    _save_figure(fig, path)
