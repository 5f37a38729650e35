"""Real images, offline: scikit-learn's handwritten digits written as a timm / torchvision ImageFolder.

The 1,797 digits (8x8, 16 grey levels, 10 classes) ship inside scikit-learn, so the train.py / validate.py loop and
``timm-ghost demo`` run on real data without a network. Layout::

    OUT/train/<0..9>/<index>.png         1,437 images (80 %, stratified, fixed seed)
    OUT/validation/<0..9>/<index>.png      360 images

``<index>`` is the sample's index in ``sklearn.datasets.load_digits()``, so every file traces back to its source.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Union

from ._io import atomic_output_dir
from .errors import MissingDependencyError

__all__ = ['DigitsFolder', 'write_digits_imagefolder', 'DIGITS_SPLITS', 'register_cli']

DIGITS_SPLITS = ('train', 'validation')  # the split names train.py and validate.py look for by default
_DIGITS_LEVELS = 16  # load_digits() pixel values are 0..16


@dataclass(frozen=True)
class DigitsFolder:
    """What ``write_digits_imagefolder`` wrote."""
    root: Path
    img_size: int
    num_classes: int
    counts: Dict[str, int]  # images per split


def _load_digits():
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:
        raise MissingDependencyError(
            "the digits data set ships with scikit-learn, which is not installed: pip install 'timm-ghost[demo]'"
        ) from e
    return load_digits(), train_test_split


def write_digits_imagefolder(
        out: Union[str, os.PathLike],
        img_size: int = 64,
        val_fraction: float = 0.2,
        seed: int = 0,
        force: bool = False,
) -> DigitsFolder:
    """Write scikit-learn's handwritten digits as an ImageFolder under ``out``.

    Args:
        out: the folder to create; must not exist or be empty, unless ``force`` (then it is replaced).
        img_size: side of the written PNGs (grey, ``img_size x img_size``, upscaled from 8x8 with bicubic filtering).
        val_fraction: share of each class that goes to ``validation`` (stratified split).
        seed: seed of the split; the same seed gives the same files.
        force: replace a non-empty ``out``.
    Returns:
        A ``DigitsFolder`` with the root, image size, class count and images per split.
    """
    if not isinstance(img_size, int) or img_size < 8:
        raise ValueError(f'img_size must be an integer >= 8 (the digits are 8x8 pixels), got {img_size!r}')
    if not 0. < val_fraction < 1.:
        raise ValueError(f'val_fraction must be in (0, 1), got {val_fraction!r}')
    import numpy as np
    from PIL import Image

    digits, train_test_split = _load_digits()
    indices = np.arange(len(digits.target))
    train_idx, val_idx = train_test_split(
        indices, test_size=val_fraction, stratify=digits.target, random_state=seed)
    pixels = np.rint(digits.images * (255. / _DIGITS_LEVELS)).astype(np.uint8)  # (1797, 8, 8)
    classes = sorted(set(int(t) for t in digits.target))

    counts = {}
    with atomic_output_dir(out, force=force) as tmp:
        for split, split_idx in zip(DIGITS_SPLITS, (train_idx, val_idx)):
            for c in classes:
                (tmp / split / str(c)).mkdir(parents=True)
            for i in sorted(split_idx.tolist()):
                img = Image.fromarray(pixels[i])  # uint8 (8, 8): mode 'L'
                if img_size != 8:
                    img = img.resize((img_size, img_size), Image.Resampling.BICUBIC)
                img.save(tmp / split / str(int(digits.target[i])) / f'{i:04d}.png')
            counts[split] = len(split_idx)
    return DigitsFolder(root=Path(out).expanduser(), img_size=img_size, num_classes=len(classes), counts=counts)


def _cmd_data(args: Any) -> int:
    folder = write_digits_imagefolder(args.out, img_size=args.size, val_fraction=args.val_fraction, seed=args.seed,
                                      force=args.force)
    print(f'wrote {folder.counts["train"]} train / {folder.counts["validation"]} validation images '
          f'({folder.num_classes} classes, {folder.img_size}x{folder.img_size} px) to {folder.root}')
    return 0


def register_cli(sub: Any) -> None:
    """Add ``timm-ghost data``."""
    p = sub.add_parser(
        'data', help="write a real ImageFolder offline: scikit-learn's handwritten digits",
        description="Write scikit-learn's 1,797 handwritten digits as OUT/train/<class>/*.png (80 %%) and "
                    'OUT/validation/<class>/*.png (20 %%, stratified, fixed seed): the folders timm\'s train.py and '
                    'validate.py read.')
    p.add_argument('dataset', choices=['digits'], help='the data set (digits)')
    p.add_argument('out', metavar='OUT', help='output folder; must be new or empty unless --force')
    p.add_argument('--size', type=int, default=64, help='image side in pixels, upscaled from 8x8 (default 64)')
    p.add_argument('--val-fraction', type=float, default=0.2, help='validation share of each class (default 0.2)')
    p.add_argument('--seed', type=int, default=0, help='seed of the split (default 0)')
    p.add_argument('--force', action='store_true', help='replace a non-empty OUT')
    p.set_defaults(func=_cmd_data)
