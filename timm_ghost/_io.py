"""Atomic output: a folder or file appears complete or not at all, and an existing one is replaced only once its
successor is complete. The one place timm-ghost writes results to disk this way."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Optional, Union

__all__ = ['atomic_output_dir', 'atomic_output_file', 'check_output_dir']

PathLike = Union[str, os.PathLike]


def check_output_dir(out: PathLike, force: bool = False, flag: str = '--force', name: str = 'OUT') -> Path:
    """Return ``out`` as a Path if it may be written: new, an empty folder, or (with ``force``) a folder to replace.

    Raises ``FileExistsError`` naming ``name`` and ``flag`` otherwise.
    """
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f'{name} {out} exists and is not a directory')
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FileExistsError(f'{name} {out} exists and is not empty (pass {flag} to replace it)')
    return out


def _usual_mode(path: Path, directory: bool, mode: Optional[int] = None) -> None:
    """mkdtemp / mkstemp create 0700 / 0600; give the result ``mode``, else the mode a plain mkdir / open would get
    under the umask."""
    if mode is None:
        umask = os.umask(0)
        os.umask(umask)
        mode = (0o777 if directory else 0o666) & ~umask
    os.chmod(path, mode)


@contextlib.contextmanager
def atomic_output_dir(out: PathLike, force: bool = False, flag: str = '--force', name: str = 'OUT') -> Iterator[Path]:
    """Yield a fresh hidden folder beside ``out`` that becomes ``out`` when the block succeeds.

    ``out`` must be new or empty unless ``force`` (see :func:`check_output_dir`). An existing ``out`` is moved aside
    and deleted only after the new folder is in place. On any error the temporary folder is removed and ``out`` is
    left as it was.
    """
    out = check_output_dir(out, force, flag, name)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{out.name}.', suffix='.partial', dir=out.parent))
    try:
        yield tmp
        _usual_mode(tmp, directory=True)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f'.{out.name}.', suffix='.old', dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_output_file(path: PathLike, keep_mode: bool = False) -> Iterator[Path]:
    """Yield a hidden temporary path beside ``path``; when the block succeeds it replaces ``path`` in one rename.

    The new file gets the usual mode for a new file, or with ``keep_mode`` that of the ``path`` it replaces. On any
    error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.incomplete')
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _usual_mode(tmp, directory=False, mode=path.stat().st_mode & 0o7777 if keep_mode and path.exists() else None)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
