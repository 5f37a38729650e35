"""Cache entries for weights fetched from URLs (PaddleClas's ``.pdparams`` after conversion, safetensors URLs), safe
for many processes sharing one cache, and checked on every read.

An entry is a folder ``<root>/<name>/`` holding the stored file and ``entry.json``, the record written with it: the
source URL, the sha256 and size of the download and of the stored file, and what else the writer needs to match
(the converter version). The folder appears complete or not at all (:func:`timm_ghost._io.atomic_output_dir`).

- Reading needs no write access: a read-only cache that holds the weights serves them, offline too.
- A stored file whose size or sha256 no longer matches its record (truncated, edited) is never loaded: it is fetched
  again (the entry replaced), or, offline, reported and removed.
- The first process to miss an entry takes a file lock (``filelock``, as huggingface_hub does per blob) on
  ``<root>/.locks/<name>.lock`` and fetches; the others wait for the lock, then read what it wrote: one download, one
  conversion, the same bytes everywhere.
- A cache that must be written and cannot be says which folder and which setting moves it.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from . import _http
from ._io import atomic_output_dir
from .errors import PretrainedWeightsError

__all__ = ['CacheEntry', 'RECORD_NAME', 'LOCKS_DIR', 'read_entry', 'fetch_entry', 'entry_record']

_logger = logging.getLogger(__name__)

RECORD_NAME = 'entry.json'
LOCKS_DIR = '.locks'
_UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


@dataclass(frozen=True)
class CacheEntry:
    """Where one source's weights live in a cache.

    ``root``: the cache folder; ``name``: the entry's folder in it; ``filename``: the stored file; ``source``: the URL;
    ``match``: record fields that must equal these values for the entry to count (a converter version, say);
    ``env``: the environment variable that moves this cache when ``cache_dir`` is not given, for errors.
    """
    root: Path
    name: str
    filename: str
    source: str
    match: Dict[str, str] = field(default_factory=dict)
    env: str = 'TORCH_HOME'

    @property
    def folder(self) -> Path:
        return self.root / self.name

    @property
    def path(self) -> Path:
        return self.folder / self.filename

    @property
    def lock_path(self) -> Path:
        return self.root / LOCKS_DIR / f'{self.name}.lock'


def _load_record(entry: CacheEntry) -> Optional[Dict[str, Any]]:
    try:
        return json.loads((entry.folder / RECORD_NAME).read_text())
    except (OSError, ValueError):
        return None


def read_entry(entry: CacheEntry) -> Tuple[Optional[Path], str]:
    """``(path, '')`` for an entry whose record matches ``entry`` and whose file matches the size and sha256 recorded
    when it was written; ``(None, problem)`` for one that does not (``problem`` says what is wrong; '' when there is
    simply no entry). Writes nothing."""
    record = _load_record(entry)
    if record is None:
        return None, ''
    if record.get('source') != entry.source or any(record.get(k) != v for k, v in entry.match.items()):
        return None, ''  # another source or converter version: replaced on the next fetch, not an error
    stored = record.get('file') or {}
    try:
        size = entry.path.stat().st_size
    except OSError:
        return None, f'has no {entry.filename}'
    if size != stored.get('size'):
        return None, f'holds {size} bytes where {stored.get("size")} were recorded when it was written'
    actual = _http.sha256_file(entry.path)
    if actual != stored.get('sha256'):
        return None, f'has sha256 {actual} where {stored.get("sha256")} was recorded when it was written'
    return entry.path, ''


def _unwritable(e: OSError, entry: CacheEntry, what: str, problem: str) -> PretrainedWeightsError:
    why = f'its copy there {problem}, and ' if problem else ''
    return PretrainedWeightsError(
        f'{what}: {why}{entry.source} must be written into the weight cache {entry.root}, which cannot be written '
        f'({os.strerror(e.errno)}: {e.filename}). Pass cache_dir= to timm.create_model, or set {entry.env}, to a '
        f'writable folder (a read-only cache serves the weights it already holds)')


def _remove(folder: Path) -> bool:
    try:
        shutil.rmtree(folder)
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False


def fetch_entry(entry: CacheEntry, make: Callable[[Path], Dict[str, Any]], what: str, offline: bool,
                offline_hint: str) -> Path:
    """The stored file of ``entry``: read (and checked) from the cache, else made once under the entry's lock.

    Args:
        entry: where the weights go.
        make: ``make(folder)`` writes ``folder / entry.filename`` and returns the download's ``{'sha256', 'size'}``
            (of the file as fetched, before any conversion); it raises on failure, and then nothing is cached.
        what: the weights' name for errors (the pretrained tag).
        offline: no fetching (``HF_HUB_OFFLINE``): a missing or damaged entry is an error.
        offline_hint: what the offline error adds (e.g. ``load it once online``).
    Raises:
        PretrainedWeightsError: offline without a good copy, or a cache that must be written and cannot be (naming the
            folder and the setting that moves it); and whatever ``make`` raises.
    """
    path, problem = read_entry(entry)
    if path is not None:
        return path
    if offline:
        removed = problem and _remove(entry.folder)
        found = (f'its cached copy {entry.folder} {problem} (truncated or edited; '
                 f'{"removed it" if removed else "it could not be removed"})' if problem else
                 f'{entry.source} is not in the cache ({entry.root})')
        raise PretrainedWeightsError(f'{what}: {found}, and HF_HUB_OFFLINE is set; {offline_hint}')
    try:
        entry.lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = _file_lock(entry.lock_path)
        lock.acquire()
    except OSError as e:
        if e.errno in _UNWRITABLE:
            raise _unwritable(e, entry, what, problem) from e
        raise
    try:
        path, problem = read_entry(entry)  # made by another process while this one waited
        if path is not None:
            return path
        if problem:
            _logger.warning(f'{what}: the cached {entry.path} {problem}; fetching it again')
        try:
            with atomic_output_dir(entry.folder, force=True) as tmp:
                download = make(tmp)
                stored = tmp / entry.filename
                record = {
                    'source': entry.source, **entry.match,
                    'download': {k: download[k] for k in ('sha256', 'size')},
                    'file': {'name': entry.filename, 'sha256': _http.sha256_file(stored),
                             'size': stored.stat().st_size},
                    'recorded': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
                }
                (tmp / RECORD_NAME).write_text(json.dumps(record, indent=1) + '\n')
        except OSError as e:
            if e.errno in _UNWRITABLE:
                raise _unwritable(e, entry, what, problem) from e
            raise
        return entry.path
    finally:
        lock.release()


def _file_lock(path: Path) -> Any:
    from filelock import FileLock
    return FileLock(str(path))


def entry_record(entry: CacheEntry) -> Optional[Dict[str, Any]]:
    """The record of ``entry`` when it is this source's (for ``timm-ghost info --weights``), else None."""
    record = _load_record(entry)
    if record is None or record.get('source') != entry.source:
        return None
    return record
