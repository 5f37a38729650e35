"""Suite-wide settings."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# One intra-op thread per test process: the suite starts subprocesses (Hub clients, DDP ranks) next to itself on
# small CPUs, and OpenMP threads that outnumber the cores spin instead of working (seconds become minutes).
torch.set_num_threads(1)
os.environ.setdefault('OMP_NUM_THREADS', '1')

# .ci/floor-env runs the suite on the installed wheel and sets TIMM_GHOST_TEST_INSTALLED=1: the tests must then
# import that, not the source tree beside them.
if os.environ.get('TIMM_GHOST_TEST_INSTALLED', '') not in ('', '0'):
    import timm_ghost
    _package = Path(timm_ghost.__file__).resolve().parent
    if _package == Path(__file__).resolve().parents[1] / 'timm_ghost':
        raise RuntimeError(f'TIMM_GHOST_TEST_INSTALLED=1, but the tests import timm_ghost from the source tree '
                           f'({_package}), not the installed package: run the entry point `pytest`, not '
                           f'`python -m pytest` (which puts the current folder first on sys.path)')

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


@pytest.fixture(scope='module')
def full_digits_weights(tmp_path_factory: pytest.TempPathFactory):
    """The classification demo's full run (its default settings): the digits weights the full dense demos start
    from. Module-scoped: each file that uses it trains its own, so files on different workers need not wait."""
    from timm_ghost.demo import DemoConfig, run_demo

    out = tmp_path_factory.mktemp('classify_full') / 'demo'
    return run_demo(out, DemoConfig(), progress=False, log=lambda s: None).model_dir
