"""Run timm's own model tests (``tests/test_models.py`` from timm's sdist) on timm-ghost's ghostnet_050 / _100 / _130.

timm's test-suite is the contract: every test it runs on these names must pass with ``timm_ghost`` imported. The sdist
of the installed timm version is downloaded with pip (cached) unless ``--sdist`` names one; its model tests are
extracted into a temporary folder beside this folder's ``conftest.py`` (which imports ``timm_ghost`` first) and run
with pytest. ``--builtin`` runs the same tests on timm's built-in GhostNet instead (the baseline).

Prints the counts and exits 1 if any test failed or errored (or none ran), else 0::

    python tests/timm_conformance/run.py              # ours
    python tests/timm_conformance/run.py --builtin    # timm's built-ins
"""
from __future__ import annotations

import argparse
import ast
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
from typing import Dict, List, Optional, Sequence

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


def count_results(junit_xml: Path) -> Counter:
    """``{'passed': n, 'failed': n, 'error': n, 'skipped': n}`` and the ids of failures from pytest's JUnit XML."""
    counts: Counter = Counter()
    failed: List[str] = []
    for case in ET.parse(junit_xml).getroot().iter('testcase'):
        outcome = 'passed'
        for child in case:
            if child.tag in ('failure', 'error', 'skipped'):
                outcome = {'failure': 'failed'}.get(child.tag, child.tag)
        counts[outcome] += 1
        if outcome in ('failed', 'error'):
            failed.append(f"{case.get('classname')}::{case.get('name')}")
    counts.failed_ids = failed  # type: ignore[attr-defined]
    return counts


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--sdist', type=Path, help='a timm sdist (.tar.gz) to take the tests from (default: '
                        'download the installed version with pip)')
    parser.add_argument('--cache-dir', type=Path, default=default_cache_dir(), help='where downloaded sdists are '
                        'kept (default: %(default)s)')
    parser.add_argument('--builtin', action='store_true', help="run on timm's built-in GhostNet (the baseline)")
    parser.add_argument('-k', dest='keyword', default=DEFAULT_FILTER, help='pytest -k filter (default: %(default)r)')
    parser.add_argument('pytest_args', nargs='*', help='more pytest arguments (after --)')
    args = parser.parse_args(argv)

    timm_version = version('timm')
    sdist = args.sdist if args.sdist is not None else fetch_sdist(timm_version, args.cache_dir)
    mode = 'builtin' if args.builtin else 'ours'
    with tempfile.TemporaryDirectory(prefix='timm-conformance-') as tmp:
        test_file = extract_tests(sdist, Path(tmp))
        ini = Path(tmp) / 'pytest.ini'
        ini.write_text('[pytest]\n')  # the rootdir: none of this repository's pytest settings apply
        junit = Path(tmp) / 'junit.xml'
        env = {**os.environ, 'TIMM_GHOST_CONFORMANCE': mode}
        env.setdefault('OMP_NUM_THREADS', '1')
        cmd = [sys.executable, '-m', 'pytest', str(test_file), '-k', args.keyword, '-c', str(ini), '-q', '-rfE',
               '-p', 'no:cacheprovider', f'--junitxml={junit}', *args.pytest_args]
        proc = subprocess.run(cmd, cwd=tmp, env=env)
        if not junit.is_file():
            print(f'timm conformance ({mode}): pytest exited {proc.returncode} without results', file=sys.stderr)
            return proc.returncode or 1
        counts = count_results(junit)
    label = 'timm_ghost' if mode == 'ours' else "timm's built-ins"
    print(f"timm {timm_version} tests/test_models.py on {label}: {counts['passed']} passed, {counts['failed']} failed, "
          f"{counts['error']} errors, {counts['skipped']} skipped (sdist {sdist.name})")
    for test_id in counts.failed_ids:  # type: ignore[attr-defined]
        print(f'  FAILED {test_id}')
    ok = counts['passed'] > 0 and not counts['failed'] and not counts['error'] and proc.returncode in (0, 5)
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
