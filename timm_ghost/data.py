"""Real images, offline: scikit-learn's handwritten digits written as a timm / torchvision ImageFolder.

The 1,797 digits (8x8, 16 grey levels, 10 classes) ship inside scikit-learn, so the train.py / validate.py loop and
``timm-ghost demo`` run on real data without a network. Layout::

    OUT/train/<0..9>/<index>.png         1,437 images (80 %, stratified, fixed seed)
    OUT/validation/<0..9>/<index>.png      360 images

``<index>`` is the sample's index in ``sklearn.datasets.load_digits()``, so every file traces back to its source.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, Union

__all__ = ['DigitsFolder', 'write_digits_imagefolder', 'atomic_output_dir', 'DIGITS_SPLITS']

DIGITS_SPLITS = ('train', 'validation')  # the split names train.py and validate.py look for by default
_DIGITS_LEVELS = 16  # load_digits() pixel values are 0..16


@dataclass(frozen=True)
class DigitsFolder:
    """What ``write_digits_imagefolder`` wrote."""
    root: Path
    img_size: int
    num_classes: int
    counts: Dict[str, int]  # images per split


@contextlib.contextmanager
def atomic_output_dir(out: Union[str, os.PathLike], force: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``out`` that becomes ``out`` when the block succeeds.

    A non-empty ``out`` is refused (``FileExistsError``) unless ``force``, in which case it is replaced only once the
    new content is complete. On any error the temporary folder is removed and ``out`` is left as it was.
    """
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f'{out} exists and is not a directory')
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FileExistsError(f'{out} exists and is not empty (use --force to replace it)')
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{out.name}.partial-', dir=out.parent))
    try:
        yield tmp
        if out.is_dir():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load_digits():
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:
        raise RuntimeError(
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
