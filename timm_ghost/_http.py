"""The HTTP pieces every remote weight source shares: a bounded metadata request with retries, a streamed download
into place, sha256, and failures described in words (which cause, what to do instead). huggingface_hub's own client
does the work (its session, headers, progress bar, resume)."""
from __future__ import annotations

import hashlib
import http
import socket
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Tuple, TypeVar, Union

from . import _compat
from ._io import atomic_output_file
from .errors import PretrainedWeightsError

__all__ = ['PROBE_TRIES', 'Unreachable', 'TransferFailed', 'probe', 'download', 'fetch_url', 'sha256_file',
           'is_timeout', 'is_offline', 'url_key', 'cause_in_words']

PROBE_TRIES = 2
PROBE_PAUSE = 0.5  # seconds between the tries; 2 * HF_HUB_ETAG_TIMEOUT + 0.5 s leaves room for the rest of the call
_T = TypeVar('_T')


class Unreachable(Exception):
    """No definite answer after every try (timeouts, refused connections, no DNS, 5xx / 429); the message says which
    in words, ``kind`` in one word (``dns``, ``refused``, ``timeout``, ``http``, ``other``)."""

    def __init__(self, words: str, kind: str = 'other') -> None:
        super().__init__(words)
        self.kind = kind


class TransferFailed(Exception):
    """A download that started and did not finish (cut short, stalled past the read timeout); the message says why."""


def is_timeout(e: BaseException) -> bool:
    """Whether ``e`` is a timeout: ``TimeoutError`` or httpx's / httpx2's ``TimeoutException`` (by class name, as the
    HTTP package differs between huggingface_hub versions)."""
    return isinstance(e, TimeoutError) or 'TimeoutException' in {c.__name__ for c in type(e).__mro__}


def is_offline() -> bool:
    """Whether huggingface_hub is in offline mode (``HF_HUB_OFFLINE``): then only caches are read."""
    from huggingface_hub import constants
    return constants.is_offline_mode() if hasattr(constants, 'is_offline_mode') else bool(constants.HF_HUB_OFFLINE)


def _chain(e: BaseException) -> Iterator[BaseException]:
    """``e`` and the exceptions it was raised from or during, outermost first."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _host(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return parts.netloc or url


def _status(e: BaseException) -> Optional[int]:
    response = getattr(e, 'response', None)
    status = getattr(response, 'status_code', None)
    return status if isinstance(status, int) else None


def cause_in_words(e: BaseException, url: str = '') -> Tuple[str, str]:
    """``(kind, words)`` for a failed request: ``dns`` (the host name did not resolve), ``refused`` (nothing listens
    at the host and port), ``timeout``, ``http`` (an error status), or ``other`` (the exception's own line). Read from
    the whole exception chain: httpx wraps the socket error that says what happened."""
    host = _host(url) if url else 'the server'
    for c in _chain(e):
        status = _status(c)
        if status is not None:
            try:
                phrase = http.HTTPStatus(status).phrase
            except ValueError:
                phrase = 'unknown status'
            return 'http', f'HTTP status {status} ({phrase})'
        if isinstance(c, socket.gaierror):
            return 'dns', f'no DNS: name resolution failed for {urllib.parse.urlsplit(url).hostname or host} ({c})'
        if isinstance(c, ConnectionRefusedError):
            return 'refused', f'connection refused by {host}: nothing listens there'
    for c in _chain(e):
        if is_timeout(c):
            return 'timeout', 'timed out'
    return 'other', f'{type(e).__name__}: {(str(e).splitlines() or [""])[0]}'


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


def probe(request: Callable[[float], _T], url: str = '') -> _T:
    """``request(timeout)`` (one HTTP request through huggingface_hub, raising its ``HfHubHTTPError`` on an error
    status), tried ``PROBE_TRIES`` times, each given at most ``HF_HUB_ETAG_TIMEOUT`` seconds of wall-clock time.

    The wall-clock bound matters: before its first request huggingface_hub may make others of its own (its agent
    registry, fetched with a fixed 3 s timeout once a day unless ``HF_HUB_DISABLE_TELEMETRY``), and a socket timeout
    bounds each read, not the request. A try that runs out of time is left to finish in a daemon thread. A host name
    that does not resolve is not tried again.

    Returns the request's result. Re-raises ``HfHubHTTPError`` for a definite answer (4xx other than 429); raises
    :class:`Unreachable` describing the last failure (``url`` names its host) when no try got one.
    """
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError

    timeout = constants.HF_HUB_ETAG_TIMEOUT
    error = Unreachable('no try made')
    for attempt in range(PROBE_TRIES):
        if attempt:
            time.sleep(PROBE_PAUSE)
        try:
            return _within(timeout, lambda: request(timeout))
        except HfHubHTTPError as e:
            status = _status(e)
            if status is not None and status < 500 and status != 429:
                raise
            error = Unreachable(cause_in_words(e, url)[1], 'http')
        except Exception as e:  # httpx / httpx2 (by huggingface_hub version) transport errors, by class name
            if is_timeout(e):
                error = Unreachable(f'timed out: no answer within HF_HUB_ETAG_TIMEOUT={timeout} s', 'timeout')
            elif 'TransportError' in {c.__name__ for c in type(e).__mro__} or isinstance(e, OSError):
                kind, words = cause_in_words(e, url)
                error = Unreachable(words, kind)
                if kind == 'dns':
                    break
            else:
                raise
    raise error


def download(url: str, target: Path, expected_size: Optional[int] = None) -> Path:
    """Stream ``url`` into ``target`` atomically with huggingface_hub's ``http_get`` (progress bar,
    ``HF_HUB_DOWNLOAD_TIMEOUT`` per read, resume on dropped connections, size check when ``expected_size`` is given).

    Raises :class:`TransferFailed` saying why; nothing half-written is left at ``target``.
    """
    from huggingface_hub import constants

    http_get = _compat.http_get()
    try:
        with atomic_output_file(target) as tmp, open(tmp, 'wb') as f:
            http_get(url, f, expected_size=expected_size, displayed_filename=target.name)
    except Exception as e:  # timeouts, refused connections, a transfer cut short: one line, the cause chained
        if is_timeout(e):
            words = (f'the transfer stopped: no data within HF_HUB_DOWNLOAD_TIMEOUT={constants.HF_HUB_DOWNLOAD_TIMEOUT}'
                     f' s, nor after the resume attempts')
        else:
            kind, words = cause_in_words(e, url)
            if kind == 'other':
                words = f'the transfer was cut short ({words})'
        raise TransferFailed(words) from e
    return target


def fetch_url(url: str, target: Path, what: str, ways: str) -> Path:
    """Download ``url`` (any http(s) server; no Hub token is sent) into ``target``: one bounded HEAD request
    (:func:`probe`) for its size, then :func:`download`.

    Args:
        url: the file.
        target: where it lands (written atomically).
        what: the weights' name for errors (the pretrained tag, e.g. ``ghostnet_130.paddle_in1k``).
        ways: what the user can do instead, appended to every error.
    Raises:
        PretrainedWeightsError: ``{what}: could not download {url}: {cause in words}; nothing was cached. {ways}``.
    """
    from huggingface_hub import get_hf_file_metadata
    from huggingface_hub.errors import HfHubHTTPError

    try:
        metadata = probe(lambda timeout: get_hf_file_metadata(url, timeout=timeout, token=False), url)
        return download(url, target, expected_size=metadata.size)
    except (HfHubHTTPError, Unreachable, TransferFailed) as e:
        if isinstance(e, HfHubHTTPError):
            cause = cause_in_words(e, url)[1]
        elif isinstance(e, Unreachable) and e.kind != 'dns':  # a name that does not resolve is asked once
            cause = f'{e} (after {PROBE_TRIES} tries)'
        else:
            cause = str(e)
        raise PretrainedWeightsError(f'{what}: could not download {url}: {cause}; nothing was cached. {ways}') from e


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
