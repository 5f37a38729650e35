"""Scenes of handwritten digits for the dense demos, written in the formats users meet and read back from them.

Several real digits of scikit-learn's handwritten digits, of random size and place, on a black canvas; boxes and
masks come from the digits' own pixels. :func:`write_digit_scenes` writes PNG images, PNG masks and COCO json;
:class:`DetectionScenes` (pycocotools) and :class:`SegmentationScenes` read them as torchvision's detectors and smp's
segmenters take them. The held-out scenes use the classification demo's validation digits.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

__all__ = ['SceneConfig', 'write_digit_scenes', 'DetectionScenes', 'SegmentationScenes', 'SPLITS', 'NUM_DIGITS']

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
