"""The HTTP pieces every remote weight source shares: a bounded metadata request with retries, a streamed download
into place, and sha256. huggingface_hub's own client does the work (its session, headers, progress bar, resume)."""
from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, TypeVar, Union

from . import _compat
from ._io import atomic_output_file
from .errors import PretrainedWeightsError

__all__ = ['PROBE_TRIES', 'Unreachable', 'probe', 'download', 'sha256_file', 'is_timeout', 'url_key']

PROBE_TRIES = 2
PROBE_PAUSE = 0.5  # seconds between the tries; 2 * HF_HUB_ETAG_TIMEOUT + 0.5 s leaves room for the rest of the call
_T = TypeVar('_T')


class Unreachable(Exception):
    """No definite answer after every try (timeouts, refused connections, 5xx / 429); the message says which."""


def is_timeout(e: BaseException) -> bool:
    """Whether ``e`` is a timeout: ``TimeoutError`` or httpx's / httpx2's ``TimeoutException`` (by class name, as the
    HTTP package differs between huggingface_hub versions)."""
    return isinstance(e, TimeoutError) or 'TimeoutException' in {c.__name__ for c in type(e).__mro__}


def _within(seconds: float, fn: Callable[[], _T]) -> _T:
    """``fn()``, or ``TimeoutError`` once ``seconds`` of wall-clock time have passed (``fn`` then runs on, unwaited,
    in a daemon thread: it must have timeouts of its own)."""
    outcome: Dict[str, Any] = {}

    def run() -> None:
        try:
            outcome['value'] = fn()
        except BaseException as e:  # handed to the caller
            outcome['error'] = e

    thread = threading.Thread(target=run, name='timm-ghost-probe', daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f'no answer within {seconds} s')
    if 'error' in outcome:
        raise outcome['error']
    return outcome['value']


def probe(request: Callable[[float], _T]) -> _T:
    """``request(timeout)`` (one HTTP request through huggingface_hub, raising its ``HfHubHTTPError`` on an error
    status), tried ``PROBE_TRIES`` times, each given at most ``HF_HUB_ETAG_TIMEOUT`` seconds of wall-clock time.

    The wall-clock bound matters: before its first request huggingface_hub may make others of its own (its agent
    registry, fetched with a fixed 3 s timeout once a day unless ``HF_HUB_DISABLE_TELEMETRY``), and a socket timeout
    bounds each read, not the request. A try that runs out of time is left to finish in a daemon thread.

    Returns the request's result. Re-raises ``HfHubHTTPError`` for a definite answer (4xx other than 429); raises
    :class:`Unreachable` describing the last failure when no try got one.
    """
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError

    timeout = constants.HF_HUB_ETAG_TIMEOUT
    error = ''
    for attempt in range(PROBE_TRIES):
        if attempt:
            time.sleep(PROBE_PAUSE)
        try:
            return _within(timeout, lambda: request(timeout))
        except HfHubHTTPError as e:
            status = e.response.status_code if e.response is not None else None
            if status is not None and status < 500 and status != 429:
                raise
            error = f'HTTP {status}'
        except Exception as e:  # httpx / httpx2 (by huggingface_hub version) transport errors, by class name
            if is_timeout(e):
                error = f'no answer within HF_HUB_ETAG_TIMEOUT={timeout} s'
            elif 'TransportError' in {c.__name__ for c in type(e).__mro__} or isinstance(e, OSError):
                error = f'{type(e).__name__}: {e}'
            else:
                raise
    raise Unreachable(error)


def download(url: str, target: Path, expected_size: Optional[int] = None) -> Path:
    """Stream ``url`` into ``target`` atomically with huggingface_hub's ``http_get`` (progress bar,
    ``HF_HUB_DOWNLOAD_TIMEOUT`` per read, resume on dropped connections, size check when ``expected_size`` is given).

    Raises ``PretrainedWeightsError`` naming the URL; nothing half-written is left at ``target``.
    """
    http_get = _compat.http_get()
    try:
        with atomic_output_file(target) as tmp, open(tmp, 'wb') as f:
            http_get(url, f, expected_size=expected_size, displayed_filename=target.name)
    except Exception as e:  # timeouts, refused connections, a transfer cut short: one line, the cause chained
        raise PretrainedWeightsError(
            f'could not download {url}: {type(e).__name__}: {(str(e).splitlines() or [""])[0]}; nothing was '
            f'cached') from e
    return target


def sha256_file(path: Union[str, Path]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def url_key(url: str) -> str:
    """16 hex digits of the URL's sha256: the cache folder of what came from ``url``."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]
