"""Tests leave no large files behind. pytest keeps the temporary folders of its last three runs, and the weights,
checkpoints and exports the tests write (2-40 MB each) added up to 1.5 GB per run. A test module imports
``remove_large_files_after_each_test`` (an autouse fixture) and calls :func:`remove_large_files` when its
module-scoped fixtures end; images, JSON and logs stay for inspection."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Union

import pytest

__all__ = ['LARGE_BYTES', 'remove_large_files', 'remove_large_files_after_each_test']

LARGE_BYTES = 1 << 20


def remove_large_files(root: Union[str, os.PathLike], min_bytes: int = LARGE_BYTES) -> int:
    """Delete every regular file of at least ``min_bytes`` under ``root`` (links are left alone); returns the bytes
    freed."""
    freed = 0
    for path in Path(root).rglob('*'):
        if path.is_file() and not path.is_symlink():
            size = path.stat().st_size
            if size >= min_bytes:
                path.unlink()
                freed += size
    return freed


@pytest.fixture(autouse=True)
def remove_large_files_after_each_test(tmp_path: Path) -> Iterator[None]:
    """After each test, the large files it wrote under its ``tmp_path``."""
    yield
    remove_large_files(tmp_path)
