"""Tests leave nothing large behind. pytest keeps the temporary folders of its last three runs, and the weights,
checkpoints, exports and image folders the tests write (2-40 MB each) added up to 1.5 GB per run. A test module
imports ``remove_artifacts_of_passed_tests`` (an autouse fixture: a passed test's ``tmp_path`` is emptied, a failed
one's kept for inspection, as pytest's ``tmp_path_retention_policy = "failed"`` would) and calls
:func:`remove_large_files` when its module-scoped fixtures end."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator, Union

import pytest

__all__ = ['LARGE_BYTES', 'remove_large_files', 'remove_artifacts_of_passed_tests']

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
def remove_artifacts_of_passed_tests(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[None]:
    """Empty the test's ``tmp_path`` once it has passed (its result is counted before fixtures are torn down); a
    failed test keeps everything it wrote."""
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed == failed_before:
        for path in tmp_path.iterdir():
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink()
