"""Run timm's own model tests (``tests/test_models.py`` from timm's sdist) on timm-ghost's ghostnet_050 / _100 / _130.

timm's test-suite is the contract: every test it runs on these names must pass with ``timm_ghost`` imported. The sdist
of the installed timm version is downloaded with pip (cached) unless ``--sdist`` names one; its model tests are
extracted into a temporary folder beside this folder's ``conftest.py`` (which imports ``timm_ghost`` first) and run
with pytest. ``--builtin`` runs the same tests on timm's built-in GhostNet instead (the baseline).

By default it runs timm's built-ins first (the baseline), then ours, prints the counts and exits 1 if any of ours
failed or errored, if a model under test is not the mode's class (``timm_ghost.ghostnet.GhostNet`` /
``timm.models.ghostnet.GhostNet``), if ours skips a test the built-ins run, or if fewer tests pass per width than
``pins.json`` records for the installed timm version; else 0::

    python tests/timm_conformance/run.py                # baseline + ours, checked
    python tests/timm_conformance/run.py --no-baseline  # ours only (skips not compared)
    python tests/timm_conformance/run.py --builtin      # timm's built-ins only
    python tests/timm_conformance/run.py --pin          # record this timm version's passes per width
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from importlib.metadata import version
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
# our three models; timm's GhostNet v2 / v3 and RepGhost share the prefix, pretrained tests need the network
DEFAULT_FILTER = '(ghostnet_050 or ghostnet_100 or ghostnet_130) and not pretrained and not repghost and not ghostnetv'
TEST_FILE = 'tests/test_models.py'


def default_cache_dir() -> Path:
    root = os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache'
    return Path(root) / 'timm-ghost' / 'timm-sdist'


def fetch_sdist(timm_version: str, cache_dir: Path) -> Path:
    """The sdist ``timm-<version>.tar.gz``, downloaded by pip into ``cache_dir`` unless already there."""
    path = cache_dir / f'timm-{timm_version}.tar.gz'
    if path.is_file():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:  # nothing half-downloaded under the final name
        subprocess.run([sys.executable, '-m', 'pip', 'download', '--quiet', '--no-binary', ':all:', '--no-deps',
                        f'timm=={timm_version}', '-d', tmp], check=True)
        found = list(Path(tmp).glob('timm-*.tar.gz'))
        if len(found) != 1:
            raise FileNotFoundError(f'pip download of timm=={timm_version} gave {[p.name for p in found]}, '
                                    f'expected one timm-{timm_version}.tar.gz')
        os.replace(found[0], path)
    return path


def _local_imports(source: str, available: Sequence[str]) -> List[str]:
    """The modules of ``available`` (names of the sdist's tests/*.py) that ``source`` imports."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split('.')[-1] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split('.')[-1])
            names.update(alias.name for alias in node.names)
    return sorted(n for n in names if n in available)


def extract_tests(sdist: Path, dest: Path) -> Path:
    """Extract timm's model tests (and the tests/ modules they import) into ``dest/tests``; returns the test file."""
    tests = dest / 'tests'
    tests.mkdir(parents=True)
    with tarfile.open(sdist) as tar:
        members: Dict[str, tarfile.TarInfo] = {}
        for m in tar.getmembers():
            parts = Path(m.name).parts  # timm-<version>/tests/<file>.py
            if m.isfile() and len(parts) == 3 and parts[1] == 'tests' and parts[2].endswith('.py'):
                members[parts[2]] = m
        if 'test_models.py' not in members:
            raise FileNotFoundError(f'{sdist} has no {TEST_FILE}')
        todo, done = ['test_models.py'], set()
        while todo:
            name = todo.pop()
            if name in done:
                continue
            done.add(name)
            source = tar.extractfile(members[name]).read().decode()
            (tests / name).write_text(source)
            stems = [n[:-3] for n in members if n not in ('conftest.py', '__init__.py')]
            todo += [f'{m}.py' for m in _local_imports(source, stems)]
    shutil.copy(HERE / 'conftest.py', tests / 'conftest.py')
    return tests / 'test_models.py'


WIDTHS = ('ghostnet_050', 'ghostnet_100', 'ghostnet_130')
# tests that must pass per width, per timm version: a run that passes fewer (a test silently deselected, renamed or
# turned into a skip) fails. Pin a new timm version with --pin after a run whose failures and skips were reviewed.
PINS = HERE / 'pins.json'
EXPECTED_CLASS = {'ours': 'timm_ghost.ghostnet.GhostNet', 'builtin': 'timm.models.ghostnet.GhostNet'}


def count_results(junit_xml: Path) -> Counter:
    """``{'passed': n, 'failed': n, 'error': n, 'skipped': n}`` with the test ids of each outcome
    (``counts.ids[outcome]``) from pytest's JUnit XML."""
    counts: Counter = Counter()
    ids: Dict[str, List[str]] = {'passed': [], 'failed': [], 'error': [], 'skipped': []}
    for case in ET.parse(junit_xml).getroot().iter('testcase'):
        outcome = 'passed'
        for child in case:
            if child.tag in ('failure', 'error', 'skipped'):
                outcome = {'failure': 'failed'}.get(child.tag, child.tag)
        counts[outcome] += 1
        ids[outcome].append(f"{case.get('classname')}::{case.get('name')}")
    counts.ids = ids  # type: ignore[attr-defined]
    counts.failed_ids = ids['failed'] + ids['error']  # type: ignore[attr-defined]
    return counts


def passed_per_width(passed_ids: Sequence[str]) -> Dict[str, int]:
    """How many of ``passed_ids`` test each width (the model name in the test's parameters)."""
    return {w: sum(1 for t in passed_ids if f'[{w}' in t or f'-{w}' in t) for w in WIDTHS}


def run_tests(mode: str, sdist: Path, keyword: str, pytest_args: Sequence[str]) -> Optional[Tuple[Counter, dict]]:
    """timm's model tests in ``mode`` ('ours' or 'builtin'): the counts and the registry the run ended with."""
    with tempfile.TemporaryDirectory(prefix='timm-conformance-') as tmp:
        test_file = extract_tests(sdist, Path(tmp))
        ini = Path(tmp) / 'pytest.ini'
        ini.write_text('[pytest]\n')  # the rootdir: none of this repository's pytest settings apply
        junit = Path(tmp) / 'junit.xml'
        report = Path(tmp) / 'registry.json'
        env = {**os.environ, 'TIMM_GHOST_CONFORMANCE': mode, 'TIMM_GHOST_CONFORMANCE_REPORT': str(report)}
        env.setdefault('OMP_NUM_THREADS', '1')
        cmd = [sys.executable, '-m', 'pytest', str(test_file), '-k', keyword, '-c', str(ini), '-q', '-rfEs',
               '-p', 'no:cacheprovider', f'--junitxml={junit}', *pytest_args]
        proc = subprocess.run(cmd, cwd=tmp, env=env)
        if not junit.is_file() or not report.is_file():
            print(f'timm conformance ({mode}): pytest exited {proc.returncode} without results', file=sys.stderr)
            return None
        counts = count_results(junit)
        counts.returncode = proc.returncode  # type: ignore[attr-defined]
        return counts, json.loads(report.read_text())


def check(mode: str, counts: Counter, registry: dict, pins: Optional[Dict[str, int]],
          baseline_skips: Optional[Sequence[str]]) -> List[str]:
    """What is wrong with a run: failures, foreign classes under test, skips the built-ins do not have, too few
    passes per width. An empty list is a pass."""
    problems = [f'FAILED {t}' for t in counts.failed_ids]  # type: ignore[attr-defined]
    if counts['passed'] == 0:
        problems.append('no test passed')
    if counts.returncode not in (0, 1, 5):  # type: ignore[attr-defined]
        problems.append(f'pytest exited {counts.returncode}')  # type: ignore[attr-defined]
    for name, got in registry['models'].items():
        if got['class'] != EXPECTED_CLASS[mode]:
            problems.append(f'{name} built {got["class"]} (from {got["entrypoint"]}), expected {EXPECTED_CLASS[mode]}')
    if baseline_skips is not None:
        for t in sorted(set(counts.ids['skipped']) - set(baseline_skips)):  # type: ignore[attr-defined]
            problems.append(f"SKIPPED here but not on timm's built-ins: {t}")
    if pins is not None:
        for width, got in passed_per_width(counts.ids['passed']).items():  # type: ignore[attr-defined]
            if got < pins[width]:
                problems.append(f'{width}: {got} tests passed, pinned {pins[width]} ({PINS.name})')
    return problems


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--sdist', type=Path, help='a timm sdist (.tar.gz) to take the tests from (default: '
                        'download the installed version with pip)')
    parser.add_argument('--cache-dir', type=Path, default=default_cache_dir(), help='where downloaded sdists are '
                        'kept (default: %(default)s)')
    parser.add_argument('--builtin', action='store_true', help="run only on timm's built-in GhostNet (the baseline)")
    parser.add_argument('--no-baseline', action='store_true', help="skip the baseline run on timm's built-ins (then "
                        'skips are not compared)')
    parser.add_argument('--pin', action='store_true', help=f'record the passes per width of this timm version in '
                        f'{PINS.name} (after a reviewed run)')
    parser.add_argument('-k', dest='keyword', default=DEFAULT_FILTER, help='pytest -k filter (default: %(default)r)')
    parser.add_argument('pytest_args', nargs='*', help='more pytest arguments (after --)')
    args = parser.parse_args(argv)

    timm_version = version('timm')
    all_pins = json.loads(PINS.read_text()) if PINS.is_file() else {}
    custom = args.keyword != DEFAULT_FILTER or bool(args.pytest_args)
    # the pins of the installed timm version only: another version's tests pass other counts
    pins = None if custom or args.pin else all_pins.get(timm_version)
    if pins is None and not (custom or args.pin):
        print(f'timm conformance: FAILED: timm {timm_version} (installed) has no pinned pass counts in {PINS} '
              f'(pinned: {", ".join(sorted(all_pins)) or "none"}); run it with --pin, review the run, commit the pins',
              file=sys.stderr)
        return 1
    sdist = args.sdist if args.sdist is not None else fetch_sdist(timm_version, args.cache_dir)
    problems: List[str] = []

    baseline_skips = None
    modes = ['builtin'] if args.builtin else (['ours'] if args.no_baseline else ['builtin', 'ours'])
    for mode in modes:
        result = run_tests(mode, sdist, args.keyword, args.pytest_args)
        if result is None:
            return 1
        counts, registry = result
        label = 'timm_ghost' if mode == 'ours' else "timm's built-ins"
        per_width = passed_per_width(counts.ids['passed'])  # type: ignore[attr-defined]
        print(f"timm {timm_version} tests/test_models.py on {label}: {counts['passed']} passed, {counts['failed']} "
              f"failed, {counts['error']} errors, {counts['skipped']} skipped (sdist {sdist.name}); passed per width: "
              + ', '.join(f'{w} {n}' for w, n in per_width.items()))
        if mode == 'builtin':
            baseline_skips = counts.ids['skipped']  # type: ignore[attr-defined]
            # the built-ins' own failures are timm's business; only ours must be clean
            problems += [p for p in check(mode, counts, registry, None, None) if not p.startswith('FAILED')]
        else:
            problems += check(mode, counts, registry, pins, baseline_skips)
            if args.pin and not problems:
                all_pins[timm_version] = per_width
                PINS.write_text(json.dumps(all_pins, indent=2, sort_keys=True) + '\n')
                print(f'pinned timm {timm_version}: {per_width} in {PINS}')
    for p in problems:
        print(f'  {p}')
    print('timm conformance: ' + ('FAILED' if problems else 'passed'))
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
