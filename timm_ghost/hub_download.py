"""Safetensors from a Hugging Face Hub repository: found in the cache or downloaded, bounded, verified, and every
failure explained (which weights, which repository, the cause in words, the way round it).

The download is ``huggingface_hub.hf_hub_download`` (its cache, file lock, progress bar and offline mode). One bounded
HEAD request comes first, because on a failing HEAD ``hf_hub_download`` retries with a fixed 60 s timeout and
exponential backoff (minutes against a stalled server); ours gives up after two tries of at most
``HF_HUB_ETAG_TIMEOUT`` seconds of wall-clock time each, falling back to a cached copy like ``hf_hub_download`` does.
Downloaded files are checked against the sha256 the Hub advertises for them (their blob's name in the cache).
"""
from __future__ import annotations

import errno
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Union

from . import _http
from .errors import PretrainedWeightsError

__all__ = ['SAFE_WEIGHTS_NAME', 'PICKLE_WEIGHTS_NAMES', 'download_safetensors', 'hub_cache_dir']

_logger = logging.getLogger(__name__)

SAFE_WEIGHTS_NAME = 'model.safetensors'
PICKLE_WEIGHTS_NAMES = ('pytorch_model.bin', 'model.pth', 'pytorch_model.pth')
_SHA256 = re.compile(r'[0-9a-f]{64}')
_COMMIT_HASH = re.compile(r'[0-9a-f]{40}')


def hub_cache_dir(cache_dir: Optional[Union[str, os.PathLike]] = None) -> str:
    """The Hub cache in use: ``cache_dir`` when given, else huggingface_hub's (``HF_HUB_CACHE`` / ``HF_HOME``)."""
    from huggingface_hub import constants
    return os.fspath(cache_dir) if cache_dir is not None else os.fspath(constants.HF_HUB_CACHE)


@dataclass(frozen=True)
class _HubFile:
    """One file of one repository, as the user asked for it, and how errors name it."""
    repo_id: str
    revision: Optional[str]
    filename: str
    what: str  # the pretrained tag (or the repository when there is none)
    cache_dir: Optional[Union[str, os.PathLike]]

    @property
    def where(self) -> str:
        return f'{self.repo_id}{"@" + self.revision if self.revision else ""}'

    def ways_round(self, timeout: bool = False) -> str:
        from huggingface_hub import constants
        ways = (f'Ways round it: download {self.filename} of {self.where} where the Hub can be reached (`hf download '
                f'{self.repo_id} {self.filename}`) and pass pretrained_cfg_overlay=dict(file=\'/path/to/'
                f'{self.filename}\'); or pass cache_dir= (or set HF_HOME) to a copy of a Hub cache that holds it (this '
                f'one: {hub_cache_dir(self.cache_dir)})')
        if timeout:
            ways += f'; or, for a slow Hub, raise HF_HUB_ETAG_TIMEOUT (now {constants.HF_HUB_ETAG_TIMEOUT} s)'
        return ways


def _parse(model_id: str, filename: Optional[str], what: Optional[str],
           cache_dir: Optional[Union[str, os.PathLike]]) -> _HubFile:
    repo_id, _, revision = model_id.partition('@')  # org/repo@revision, as timm writes hf_hub_id
    where = f'{repo_id}{"@" + revision if revision else ""}'
    hub_file = _HubFile(repo_id, revision or None, filename or SAFE_WEIGHTS_NAME, what or where, cache_dir)
    if not hub_file.filename.endswith('.safetensors'):
        raise PretrainedWeightsError(
            f'{hub_file.what}: {hub_file.where}/{hub_file.filename}: remote weights are loaded only from safetensors '
            f'files; convert it with `timm-ghost convert` and publish model.safetensors')
    return hub_file


def download_safetensors(
        model_id: str,
        filename: Optional[str] = None,
        cache_dir: Optional[Union[str, Path]] = None,
        what: Optional[str] = None,
) -> Path:
    """Download (or find in the cache) ``filename`` (default ``model.safetensors``) of Hub repo ``model_id``.

    Args:
        model_id: ``org/repo``, optionally pinned as ``org/repo@revision`` (branch, tag or commit hash).
        filename: a ``.safetensors`` file of the repo; pickles are refused.
        cache_dir: Hub cache folder (default: huggingface_hub's), as ``timm.create_model`` takes it.
        what: how errors name the weights (the pretrained tag; default the repository).
    Returns:
        Path of the cached file (a snapshot entry of huggingface_hub's cache).
    Raises:
        PretrainedWeightsError: naming the weights, repository, revision and file, for a missing repository /
            revision / file (and which pickles the repo offers instead), an unreachable or failing server (after at
            most ``2 * HF_HUB_ETAG_TIMEOUT + 1`` s when no cached copy exists), a transfer cut short, a cache that
            must be written and cannot be, or a cached file whose sha256 differs from the Hub's.
    """
    from huggingface_hub import hf_hub_download

    hub_file = _parse(model_id, filename, what, cache_dir)
    cached = _cached_commit(hub_file)
    if cached is not None:  # a commit never changes: no request needed
        return _verified(cached, hub_file)
    if not _http.is_offline():
        fallback = _probe_or_cached(hub_file)
        if fallback is not None:
            return _verified(fallback, hub_file)
    try:
        path = hf_hub_download(hub_file.repo_id, hub_file.filename, revision=hub_file.revision, cache_dir=cache_dir)
    except Exception as e:  # every failure in words, the cause chained
        raise _explained(e, hub_file) from e
    return _verified(Path(path), hub_file)


def _cached(hub_file: _HubFile) -> Optional[Path]:
    from huggingface_hub import try_to_load_from_cache
    cached = try_to_load_from_cache(hub_file.repo_id, hub_file.filename, cache_dir=hub_file.cache_dir,
                                    revision=hub_file.revision)
    return Path(cached) if isinstance(cached, str) else None


def _cached_commit(hub_file: _HubFile) -> Optional[Path]:
    """The cached file when the revision is a commit hash (then no request is needed), else None."""
    if hub_file.revision and _COMMIT_HASH.fullmatch(hub_file.revision):
        return _cached(hub_file)
    return None


def _probe_or_cached(hub_file: _HubFile) -> Optional[Path]:
    """None when the Hub answered the bounded HEAD request (``hf_hub_download`` goes on); the cached copy when it
    did not; PretrainedWeightsError naming the cause when it did not and nothing is cached."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    url = hf_hub_url(hub_file.repo_id, hub_file.filename, revision=hub_file.revision)
    try:
        _http.probe(lambda timeout: get_hf_file_metadata(url, timeout=timeout), url)
        return None
    except HfHubHTTPError:
        return None  # 401/404...: a definite answer, raised with its meaning by hf_hub_download
    except _http.Unreachable as e:
        cached = _cached(hub_file)
        if cached is not None:
            _logger.warning(f'{constants.ENDPOINT} not reachable ({e}); using the cached {hub_file.where}/'
                            f'{hub_file.filename}')
            return cached
        tries = '' if e.kind == 'dns' else f' after {_http.PROBE_TRIES} tries'
        raise PretrainedWeightsError(
            f'{hub_file.what}: could not reach Hub repository {hub_file.where} (file {hub_file.filename}) at '
            f'{constants.ENDPOINT}{tries}: {e}. No cached copy. {hub_file.ways_round(timeout=e.kind == "timeout")}'
        ) from e


def _explained(e: Exception, hub_file: _HubFile) -> Exception:
    """The PretrainedWeightsError for an exception of ``hf_hub_download``: what was asked, what went wrong, what to do.
    Checked in order: the subclasses before their bases (``LocalEntryNotFoundError`` is an ``EntryNotFoundError``)."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    what, where, filename, repo_id = hub_file.what, hub_file.where, hub_file.filename, hub_file.repo_id
    if isinstance(e, PretrainedWeightsError):
        return e
    if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PretrainedWeightsError(
            f'{what}: {where}/{filename} must be downloaded into the Hub cache {hub_cache_dir(hub_file.cache_dir)}, '
            f'which cannot be written ({os.strerror(e.errno)}: {e.filename}). Pass cache_dir= to timm.create_model, '
            f'or set HF_HOME (or HF_HUB_CACHE), to a writable folder (a read-only cache serves weights it already '
            f'holds)')
    if isinstance(e, GatedRepoError):
        return PretrainedWeightsError(
            f'{what}: Hub repository {repo_id} is gated (looking for {filename}): {_auth_hint()}, after accepting its '
            f'terms on the repository page')
    if isinstance(e, RepositoryNotFoundError):
        if e.response is not None and e.response.status_code == 401:  # the Hub's answer for a private repository
            return PretrainedWeightsError(
                f'{what}: Hub repository {repo_id} not found at {constants.ENDPOINT}, or private (HTTP 401, looking '
                f'for {filename}): {_auth_hint()}')
        return PretrainedWeightsError(
            f'{what}: Hub repository {repo_id} not found (looking for {filename}) at {constants.ENDPOINT}')
    if isinstance(e, RevisionNotFoundError):
        return PretrainedWeightsError(
            f'{what}: revision {hub_file.revision!r} not found in Hub repository {repo_id} ({filename})')
    if isinstance(e, LocalEntryNotFoundError):
        if _http.is_offline():
            return PretrainedWeightsError(
                f'{what}: {where}/{filename} is not in the cache ({hub_cache_dir(hub_file.cache_dir)}) and '
                f'HF_HUB_OFFLINE is set; download it once online. {hub_file.ways_round()}')
        kind, words = _http.cause_in_words(e.__cause__ or e.__context__ or e, constants.ENDPOINT)
        return PretrainedWeightsError(
            f'{what}: could not download {filename} from Hub repository {where} at {constants.ENDPOINT}, and no '
            f'cached copy: {words}. {hub_file.ways_round(timeout=kind == "timeout")}')
    if isinstance(e, EntryNotFoundError):
        pickles = _remote_pickles(repo_id, hub_file.revision)
        if pickles:
            return PretrainedWeightsError(
                f'{what}: Hub repository {where} has no {filename}, only pickle weights ({", ".join(pickles)}); '
                f'remote pickles are never loaded. Convert them with `timm-ghost convert` and upload '
                f'model.safetensors')
        return PretrainedWeightsError(f'{what}: file {filename} not found in Hub repository {where}')
    if _http.is_timeout(e):
        return PretrainedWeightsError(
            f'{what}: the transfer of {filename} from Hub repository {where} stopped: no data within '
            f'HF_HUB_DOWNLOAD_TIMEOUT={constants.HF_HUB_DOWNLOAD_TIMEOUT} s, nor after huggingface_hub\'s resume '
            f'attempts; nothing was kept in the cache. Try again, or raise HF_HUB_DOWNLOAD_TIMEOUT. '
            f'{hub_file.ways_round()}')
    # connection refused, 5xx, a transfer cut short
    words = _http.cause_in_words(e, constants.ENDPOINT)[1]
    return PretrainedWeightsError(
        f'{what}: could not download {filename} from Hub repository {where} at {constants.ENDPOINT}: {words}. '
        f'{hub_file.ways_round()}')


def _auth_hint() -> str:
    """What to do about a 401: send a token, or one that can read the repository."""
    from huggingface_hub import get_token
    try:
        token = get_token()
    except Exception:  # a failing OIDC exchange, say: treat as no token
        token = None
    if token:
        return 'the token in use (HF_TOKEN or `hf auth login`) cannot read it; use one of an account with access'
    return 'no token was sent; log in with `hf auth login` or set HF_TOKEN to a token of an account with access'


def _verified(path: Path, hub_file: _HubFile) -> Path:
    """Check a cached file against the sha256 the Hub advertised for it (its blob's name in the cache); a mismatch
    removes the entry and raises."""
    blob = path.resolve()
    if _SHA256.fullmatch(blob.name):
        actual = _http.sha256_file(blob)
        if actual != blob.name:
            removed = True
            for entry in (path, blob):  # never leave a poisoned entry: the next try downloads again
                try:
                    entry.unlink()
                except FileNotFoundError:
                    pass
                except OSError:
                    removed = False
            raise PretrainedWeightsError(
                f'{hub_file.what}: {hub_file.where}/{hub_file.filename}: the cached file has sha256 {actual}, the Hub '
                f'advertised {blob.name}; ' + ('removed it from the cache, try again' if removed else
                                               f'it could not be removed from the read-only cache '
                                               f'{hub_cache_dir(hub_file.cache_dir)}: pass cache_dir= (or set '
                                               f'HF_HOME) to a writable folder'))
    return path


def _remote_pickles(repo_id: str, revision: Optional[str]) -> List[str]:
    from huggingface_hub import file_exists
    found = []
    for name in PICKLE_WEIGHTS_NAMES:
        try:
            if file_exists(repo_id, name, revision=revision):
                found.append(name)
        except Exception:
            break
    return found
