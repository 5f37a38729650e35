"""Suite-wide settings."""
from __future__ import annotations

import os

import pytest
import torch

# One intra-op thread per test process: the suite starts subprocesses (Hub clients, DDP ranks) next to itself on
# small CPUs, and OpenMP threads that outnumber the cores spin instead of working (seconds become minutes).
torch.set_num_threads(1)
os.environ.setdefault('OMP_NUM_THREADS', '1')

# CI sets TIMM_GHOST_STRICT_SKIPS=1: a skip then fails the test unless its reason starts with 'hardware:' (what this
# CPU cannot do). A user without timm's scripts, the Paddle oracle or an export runtime still gets the plain skip;
# in CI a missing environment can never turn into a green run.
STRICT_SKIPS = os.environ.get('TIMM_GHOST_STRICT_SKIPS', '') not in ('', '0')
HARDWARE_PREFIX = 'hardware:'


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, lineno, 'Skipped: reason')
        return str(longrepr[2]).removeprefix('Skipped: ')
    return str(longrepr)


def _strict(report: pytest.TestReport | pytest.CollectReport) -> None:
    if not (STRICT_SKIPS and report.skipped) or hasattr(report, 'wasxfail'):
        return
    reason = _skip_reason(report)
    if reason.startswith(HARDWARE_PREFIX):
        return
    report.outcome = 'failed'
    report.longrepr = (f'skipped with TIMM_GHOST_STRICT_SKIPS=1 (a missing environment fails here; only reasons '
                       f'starting {HARDWARE_PREFIX!r} may skip): {reason}')


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    _strict(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    outcome = yield
    _strict(outcome.get_result())
