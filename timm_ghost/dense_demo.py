"""``timm-ghost demo --task detect`` and ``--task segment``: GhostNet as a dense-prediction backbone, trained and
measured end to end, offline, on a CPU.

Scenes are built from scikit-learn's handwritten digits: several real digits of random size and place on a black
canvas; boxes and masks come from the digits' own pixels. The scenes are written in the formats users meet (COCO
json for boxes, PNG masks for segmentation) and read back from them. The digits of the held-out scenes are the
classification demo's validation digits, so neither the backbone nor the dense model has seen them.

* detect: torchvision's ``FasterRCNN`` on :func:`timm_ghost.detection.ghostnet_fpn_backbone`, scored with
  pycocotools' ``COCOeval`` (COCO mAP and mAP@0.5);
* segment: segmentation_models_pytorch's ``FPN`` on ``tu-ghostnet_050`` with the end-of-resolution taps, scored
  with the mean IoU over background and the ten digits (``smp.metrics``).

Both start the backbone from the classification demo's digits weights (:func:`timm_ghost.demo.run_demo`, run
first when its folder is missing): the fine-tuning a user does from ImageNet weights. Both save a picture of their
predictions on held-out scenes, fold the trained model with ``timm.utils.reparameterize_model`` and check that the
folded model predicts the same.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn

__all__ = [
    'SceneConfig', 'DenseDemoConfig', 'DenseDemoResult', 'write_digit_scenes', 'DetectionScenes',
    'SegmentationScenes', 'run_detect_demo', 'run_segment_demo', 'DEFAULT_DIRS', 'default_config',
    'format_dense_results',
]

DEFAULT_DIRS = {'detect': 'ghostnet-digits-detect', 'segment': 'ghostnet-digits-segment'}
SPLITS = ('train', 'val')
NUM_DIGITS = 10
_MASK_THRESHOLD = 0.3  # share of full ink above which an upscaled digit pixel belongs to the digit


@dataclass
class SceneConfig:
    """Scenes of digits: ``canvas`` px square, ``min_digits``..``max_digits`` digits of side ``min_size``..``max_size``
    px each, not overlapping."""
    canvas: int = 128
    min_digits: int = 1
    max_digits: int = 4
    min_size: int = 24
    max_size: int = 48
    train_scenes: int = 800
    val_scenes: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ('canvas', 'min_digits', 'max_digits', 'min_size', 'max_size', 'train_scenes', 'val_scenes'):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f'{name} must be a positive integer, got {getattr(self, name)!r}')
        if not self.min_digits <= self.max_digits:
            raise ValueError(f'min_digits ({self.min_digits}) must be <= max_digits ({self.max_digits})')
        if not 8 <= self.min_size <= self.max_size <= self.canvas:
            raise ValueError(f'need 8 <= min_size <= max_size <= canvas, got min_size={self.min_size}, '
                             f'max_size={self.max_size}, canvas={self.canvas}')


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
    'detect': {}, 'segment': dict(opt='adamw', lr=1e-3, weight_decay=1e-4, epochs=10, batch_size=8)}


def default_config(task: str) -> DenseDemoConfig:
    """The documented full run's settings of ``task`` ('detect' or 'segment')."""
    if task not in _TASK_SETTINGS:
        raise ValueError(f"task must be 'detect' or 'segment', got {task!r}")
    return DenseDemoConfig(**_TASK_SETTINGS[task])


def _split_digits(seed: int) -> Tuple[Any, Any, Any]:
    """Digit images (0..1 floats, (N, 8, 8)), labels, and the classification demo's train / validation indices."""
    import numpy as np

    from .data import _load_digits
    digits, train_test_split = _load_digits()
    indices = np.arange(len(digits.target))
    train_idx, val_idx = train_test_split(indices, test_size=0.2, stratify=digits.target, random_state=seed)
    return digits.images / 16., digits.target, {'train': train_idx, 'val': val_idx}


def _digit_patch(img8: Any, size: int) -> Tuple[Any, Any]:
    """An 8x8 digit (0..1) upscaled to ``size`` px (bicubic, as the classification demo): (uint8 image, bool mask)."""
    import numpy as np
    from PIL import Image
    patch = Image.fromarray(np.rint(img8 * 255.).astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
    arr = np.asarray(patch)
    return arr, arr >= _MASK_THRESHOLD * 255.


def write_digit_scenes(out: Union[str, os.PathLike], cfg: Optional[SceneConfig] = None) -> Dict[str, int]:
    """Write scenes of digits under ``out``: ``images/{train,val}/NNNNN.png`` (RGB), ``masks/{train,val}/NNNNN.png``
    (mode L: 0 background, ``1 + digit`` on the digit's pixels) and ``annotations/instances_{train,val}.json``
    (COCO: ``bbox`` ``[x, y, w, h]`` tight around the digit's pixels, ``category_id`` ``1 + digit``, ``area`` its
    pixel count). Train scenes use the classification demo's training digits, val scenes its validation digits.
    ``out`` must not exist or be empty. Returns the number of scenes per split."""
    import numpy as np
    from PIL import Image

    from ._io import atomic_output_dir

    cfg = cfg or SceneConfig()
    images, labels, split_idx = _split_digits(cfg.seed)
    counts = {}
    with atomic_output_dir(out) as tmp:
        for split, num in zip(SPLITS, (cfg.train_scenes, cfg.val_scenes)):
            rng = np.random.default_rng(cfg.seed * 1000 + (split == 'val'))
            pool = split_idx[split]
            for sub in ('images', 'masks'):
                (tmp / sub / split).mkdir(parents=True)
            coco: Dict[str, Any] = {
                'images': [], 'annotations': [],
                'categories': [{'id': 1 + d, 'name': str(d), 'supercategory': 'digit'} for d in range(NUM_DIGITS)],
            }
            for image_id in range(1, num + 1):
                canvas = np.zeros((cfg.canvas, cfg.canvas), np.uint8)
                mask = np.zeros((cfg.canvas, cfg.canvas), np.uint8)
                placed: List[Tuple[int, int, int]] = []
                for _ in range(int(rng.integers(cfg.min_digits, cfg.max_digits + 1))):
                    size = int(rng.integers(cfg.min_size, cfg.max_size + 1))
                    for _try in range(20):  # a free spot: no overlap with the digits already placed
                        x, y = (int(v) for v in rng.integers(0, cfg.canvas - size + 1, size=2))
                        if all(x + size <= px or px + ps <= x or y + size <= py or py + ps <= y
                               for px, py, ps in placed):
                            break
                    else:
                        continue
                    placed.append((x, y, size))
                    i = int(rng.choice(pool))
                    digit = int(labels[i])
                    patch, pmask = _digit_patch(images[i], size)
                    region = canvas[y:y + size, x:x + size]
                    np.maximum(region, patch, out=region)
                    mask[y:y + size, x:x + size][pmask] = 1 + digit
                    ys, xs = np.nonzero(pmask)
                    x0, y0, x1, y1 = x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1
                    coco['annotations'].append({
                        'id': len(coco['annotations']) + 1, 'image_id': image_id, 'category_id': 1 + digit,
                        'bbox': [int(x0), int(y0), int(x1 - x0), int(y1 - y0)], 'area': int(pmask.sum()),
                        'iscrowd': 0,
                    })
                name = f'{image_id:05d}.png'
                Image.fromarray(canvas).convert('RGB').save(tmp / 'images' / split / name)
                Image.fromarray(mask, mode='L').save(tmp / 'masks' / split / name)
                coco['images'].append({'id': image_id, 'file_name': name, 'width': cfg.canvas, 'height': cfg.canvas})
            (tmp / 'annotations').mkdir(exist_ok=True)
            (tmp / 'annotations' / f'instances_{split}.json').write_text(json.dumps(coco))
            counts[split] = num
    return counts


def _read_rgb(path: Path) -> torch.Tensor:
    """A PNG as a ``(3, H, W)`` float tensor in [0, 1]."""
    import numpy as np
    from PIL import Image
    with Image.open(path) as img:
        return torch.from_numpy(np.array(img.convert('RGB'))).permute(2, 0, 1).float().div_(255.)


class DetectionScenes(torch.utils.data.Dataset):
    """A COCO-format detection set (``images/SPLIT/*.png`` + ``annotations/instances_SPLIT.json``), read with
    pycocotools: item ``i`` is ``(image (3, H, W) in [0, 1], {'boxes': (K, 4) xyxy, 'labels': (K,), 'image_id'})``,
    what torchvision's detectors take."""

    def __init__(self, root: Union[str, os.PathLike], split: str) -> None:
        import contextlib
        import io

        from pycocotools.coco import COCO
        self.root = Path(root)
        self.split = split
        with contextlib.redirect_stdout(io.StringIO()):  # COCO() reports its progress on stdout
            self.coco = COCO(str(self.root / 'annotations' / f'instances_{split}.json'))
        self.ids = sorted(self.coco.getImgIds())

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        image_id = self.ids[i]
        info = self.coco.loadImgs(image_id)[0]
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id))
        boxes = torch.tensor([[a['bbox'][0], a['bbox'][1], a['bbox'][0] + a['bbox'][2], a['bbox'][1] + a['bbox'][3]]
                              for a in anns], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([a['category_id'] for a in anns], dtype=torch.int64)
        return _read_rgb(self.root / 'images' / self.split / info['file_name']), {
            'boxes': boxes, 'labels': labels, 'image_id': torch.tensor(image_id)}


class SegmentationScenes(torch.utils.data.Dataset):
    """Images and PNG masks (``images/SPLIT/*.png``, ``masks/SPLIT/*.png``, same names): item ``i`` is
    ``(image (3, H, W) in [0, 1], mask (H, W) int64 class indices)``."""

    def __init__(self, root: Union[str, os.PathLike], split: str) -> None:
        self.root = Path(root)
        self.split = split
        self.names = sorted(p.name for p in (self.root / 'images' / split).glob('*.png'))
        missing = [n for n in self.names if not (self.root / 'masks' / split / n).is_file()]
        if missing:
            raise FileNotFoundError(f'{self.root / "masks" / split}: no mask for {missing[0]} '
                                    f'(expected one PNG per image, same name)')

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        import numpy as np
        from PIL import Image
        name = self.names[i]
        with Image.open(self.root / 'masks' / self.split / name) as img:
            mask = torch.from_numpy(np.array(img, dtype=np.uint8)).long()
        return _read_rgb(self.root / 'images' / self.split / name), mask


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


def _collate(batch: List[Any]) -> Tuple[Any, ...]:
    return tuple(zip(*batch))


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


def _run_context(out: Union[str, os.PathLike], cfg: DenseDemoConfig, force: bool, run: Callable[..., Any]) -> Any:
    previous = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return run(Path(out).expanduser(), cfg, force)
    finally:
        torch.set_num_threads(previous)


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


def run_cli(args: Any) -> int:
    """``timm-ghost demo --task detect|segment``: the full run of the task with its documented settings; ``--out``,
    ``--force``, ``--seed``, ``--threads`` and ``--no-progress`` apply, the classification settings do not."""
    from .demo import DEFAULT_DEMO_DIR, DemoConfig
    classify = DemoConfig()
    for flag, name in (('--epochs', 'epochs'), ('--img-size', 'img_size'), ('--batch-size', 'batch_size'),
                       ('--lr', 'lr'), ('--workers', 'workers')):
        if getattr(args, name) != getattr(classify, name):
            raise ValueError(f'{flag} sets the classify task; --task {args.task} runs its documented settings '
                             '(change them through timm_ghost.dense_demo.DenseDemoConfig)')
    cfg = default_config(args.task)
    cfg.scenes.seed = args.seed
    cfg.threads = args.threads
    out = DEFAULT_DIRS[args.task] if args.out == DEFAULT_DEMO_DIR else args.out
    run = run_detect_demo if args.task == 'detect' else run_segment_demo
    result = run(out, cfg, force=args.force, progress=not args.no_progress)
    print()
    print(format_dense_results(result))
    return 0
