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


# .ci/floor-env sets TIMM_GHOST_TEST_WIDTHS=ghostnet_050: the floor run checks the older timm / torch / Hub versions,
# which the widths meet through the same classes, so tests parametrized over the widths run the named ones only (the
# main environment runs every width; the floor's timm conformance run, every width too).
TEST_WIDTHS = [w.strip() for w in os.environ.get('TIMM_GHOST_TEST_WIDTHS', '').split(',') if w.strip()]


# pytest-xdist's loadfile hands the workers whole files in collection order (--no-loadscope-reorder, pyproject.toml):
# the heaviest files go first, so that the light ones at the end even out the workers' finish (CPU seconds on 2
# workers: tests/test_export.py about 610, test_benchmarks.py 270, test_inference.py 200, test_hub.py 150,
# test_dense_demo.py 140, test_timm_scripts.py and test_paddle.py where they run about 120 and 80, test_contract.py
# 100; the whole suite about 1900)
HEAVY_FILES_FIRST = ('test_export.py', 'test_benchmarks.py', 'test_inference.py', 'test_hub.py', 'test_dense_demo.py',
                     'test_timm_scripts.py', 'test_contract.py', 'test_paddle.py', 'test_workflows.py', 'test_dense.py')


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    rank = {name: i for i, name in enumerate(HEAVY_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's tests stay together
    if not TEST_WIDTHS:
        return
    import timm_ghost

    unknown = sorted(set(TEST_WIDTHS) - set(timm_ghost.MODEL_NAMES))
    if unknown:
        raise pytest.UsageError(f'TIMM_GHOST_TEST_WIDTHS: expected names from {", ".join(timm_ghost.MODEL_NAMES)}, '
                                f'got {", ".join(unknown)}')
    others = set(timm_ghost.MODEL_NAMES) - set(TEST_WIDTHS)

    kept, deselected = [], []
    for item in items:
        params = getattr(getattr(item, 'callspec', None), 'params', {})
        other_width = any(isinstance(v, str) and v in others for v in params.values())
        (deselected if other_width else kept).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


@pytest.fixture(scope='session')
def full_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of ``timm-ghost demo`` with its default settings (the README's main job, its full run), made
    once per test run: under pytest-xdist the first worker to ask runs it in the workers' common temporary folder
    while the others wait on a file lock, then all read it (the two full dense demos start from its weights)."""
    from filelock import FileLock

    from timm_ghost_cli import main

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base  # one run's, never an earlier run's
    out = shared / 'classify_full_demo'
    with FileLock(str(shared / 'classify_full_demo.lock')):
        if not (out / 'results.json').is_file():  # the demo writes its folder whole or not at all
            assert main(['demo', '--out', str(out), '--no-progress']) == 0
    return out


@pytest.fixture(scope='session')
def full_digits_weights(full_demo: Path) -> str:
    """The full classification demo's digits weights, which the full dense demos start from."""
    return str(full_demo / 'model')
