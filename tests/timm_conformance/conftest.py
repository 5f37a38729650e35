"""Conftest for timm's own model tests (``tests/test_models.py`` of timm's sdist), placed beside them by ``run.py``.

It imports ``timm_ghost`` before timm's tests collect, so that ``ghostnet_050 / _100 / _130`` are ours; with
``TIMM_GHOST_CONFORMANCE=builtin`` it leaves timm's built-ins in place (the baseline run). In this repository's own
suite it collects nothing: timm's tests are never copied here, and nothing in this folder is a test.
"""
from __future__ import annotations

import os

import pytest

_MODE = os.environ.get('TIMM_GHOST_CONFORMANCE', '')
# in the project's own suite (no mode set), this folder holds no tests of its own
collect_ignore_glob = [] if _MODE else ['*']

if _MODE == 'ours':
    import timm_ghost  # noqa: F401  (registers our ghostnet_* in timm's registry, replacing the built-ins)
elif _MODE not in ('', 'builtin'):
    raise pytest.UsageError(f"TIMM_GHOST_CONFORMANCE must be 'ours' or 'builtin', got {_MODE!r}")

# the markers timm's pyproject.toml declares for these tests
_MARKERS = ('base', 'forward', 'backward', 'cfg', 'cfg_nonstd', 'torchscript', 'features', 'fxforward', 'fxbackward',
            'timeout')


def pytest_configure(config: pytest.Config) -> None:
    for marker in _MARKERS:
        config.addinivalue_line('markers', f'{marker}: timm test-suite marker')


def _registry() -> dict:
    """Which module and class each of our three names builds right now (the run checks them against its mode)."""
    import timm
    out = {}
    for name in ('ghostnet_050', 'ghostnet_100', 'ghostnet_130'):
        cls = type(timm.create_model(name, pretrained=False))
        out[name] = {'entrypoint': timm.models.model_entrypoint(name).__module__,
                     'class': f'{cls.__module__}.{cls.__qualname__}'}
    return out


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # read by run.py: the classes under test must be timm_ghost's (ours) or timm's (builtin), at the end of the run
    path = os.environ.get('TIMM_GHOST_CONFORMANCE_REPORT')
    if _MODE and path:
        import json
        with open(path, 'w') as f:
            json.dump({'mode': _MODE, 'models': _registry()}, f)


def pytest_report_header(config: pytest.Config) -> str:
    import timm
    entry = timm.models.model_entrypoint('ghostnet_100')
    return f'timm {timm.__version__}; ghostnet_100 from {entry.__module__} (TIMM_GHOST_CONFORMANCE={_MODE})'
