"""CI cannot pass a broken build: .ci/run runs the README's test command one step at a time, and a skip that means
"environment missing" fails under TIMM_GHOST_STRICT_SKIPS=1."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CI_RUN = ROOT / '.ci' / 'run'


def _readme_test_command() -> list:
    text = (ROOT / 'README.md').read_text()
    block = re.search(r'The tests \(the commands CI runs, one per line\):\n\n```bash\n(.*?)```', text, re.S)
    assert block, 'README.md lost its test-command block'
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def _ci_commands() -> list:
    """.ci/run's lines that run something (comments and blank lines dropped)."""
    lines = (line.strip() for line in CI_RUN.read_text().splitlines())
    return [line for line in lines if line and not line.startswith('#')]


def test_ci_runs_the_readme_test_command_line_by_line():
    readme = _readme_test_command()
    assert readme == ['pip install -e ".[test]"', 'ruff check .', 'python -m pytest -q']
    ci = _ci_commands()
    at = ci.index(readme[0])
    assert ci[at:at + len(readme)] == readme


def test_ci_steps_cannot_fail_silently():
    ci = _ci_commands()
    assert ci[0] == 'set -euo pipefail'
    # set -e ignores a failure anywhere in an `a && b` / `a || b` list but its last command: none in a step
    lists = [line for line in ci if re.search(r'&&|\|\|', line)]
    assert lists == []
    assert 'export TIMM_GHOST_STRICT_SKIPS=1' in ci
    assert 'python -m pytest -q -m slow' in ci
    assert 'python tests/timm_conformance/run.py' in ci


def _run_planted(tmp_path: Path, strict: bool) -> subprocess.CompletedProcess:
    shutil.copy(ROOT / 'tests' / 'conftest.py', tmp_path / 'conftest.py')
    (tmp_path / 'test_planted.py').write_text(
        'import pytest\n\n'
        'def test_missing_env():\n    pytest.skip("TIMM_SCRIPTS is not set")\n\n'
        'def test_missing_package():\n    pytest.importorskip("no_such_package_for_timm_ghost")\n\n'
        '@pytest.mark.skipif(True, reason="no runtime")\ndef test_marked():\n    pass\n\n'
        'def test_cpu_feature():\n    pytest.skip("hardware: this CPU reports no bf16")\n\n'
        'def test_passes():\n    assert 1 + 1 == 2\n')
    env = {k: v for k, v in os.environ.items() if k != 'TIMM_GHOST_STRICT_SKIPS'}
    if strict:
        env['TIMM_GHOST_STRICT_SKIPS'] = '1'
    return subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_planted_skips_fail_under_strict_mode_only(tmp_path):
    relaxed = _run_planted(tmp_path, strict=False)
    assert relaxed.returncode == 0, relaxed.stdout
    assert '1 passed, 4 skipped' in relaxed.stdout
    strict = _run_planted(tmp_path, strict=True)
    assert strict.returncode == 1, strict.stdout
    # the hardware skip stays a skip; the marked skip fails in setup (an error)
    assert '2 failed, 1 passed, 1 skipped, 1 error' in strict.stdout
    assert 'skipped with TIMM_GHOST_STRICT_SKIPS=1' in strict.stdout


def _conformance():
    import importlib.util
    path = ROOT / 'tests' / 'timm_conformance' / 'run.py'
    spec = importlib.util.spec_from_file_location('timm_conformance_run', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _counts(run, passed, skipped=(), failed=()):
    from collections import Counter
    counts = Counter(passed=len(passed), skipped=len(skipped), failed=len(failed), error=0)
    counts.ids = {'passed': list(passed), 'skipped': list(skipped), 'failed': list(failed), 'error': []}
    counts.failed_ids = list(failed)
    counts.returncode = 1 if failed else 0
    return counts


def test_conformance_check_fails_on_foreign_classes_new_skips_and_missing_passes():
    run = _conformance()
    ours = {'mode': 'ours', 'models': {w: {'entrypoint': 'timm_ghost.ghostnet', 'class': 'timm_ghost.ghostnet.GhostNet'}
                                       for w in run.WIDTHS}}
    passed = [f'tests.test_models::test_model_forward[{w}]' for w in run.WIDTHS] + \
        ['tests.test_models::test_model_forward_fx_torchscript[1-ghostnet_050]']
    pins = {'ghostnet_050': 2, 'ghostnet_100': 1, 'ghostnet_130': 1}
    assert run.passed_per_width(passed) == pins
    assert run.check('ours', _counts(run, passed), ours, pins, baseline_skips=[]) == []

    builtin = {'mode': 'ours', 'models': {**ours['models'], 'ghostnet_100': {
        'entrypoint': 'timm.models.ghostnet', 'class': 'timm.models.ghostnet.GhostNet'}}}
    assert run.check('ours', _counts(run, passed), builtin, pins, []) == [
        'ghostnet_100 built timm.models.ghostnet.GhostNet (from timm.models.ghostnet), '
        'expected timm_ghost.ghostnet.GhostNet']

    skipped = ['tests.test_models::test_model_backward[ghostnet_130]']
    assert run.check('ours', _counts(run, passed, skipped), ours, pins, baseline_skips=[]) == [
        "SKIPPED here but not on timm's built-ins: tests.test_models::test_model_backward[ghostnet_130]"]
    assert run.check('ours', _counts(run, passed, skipped), ours, pins, baseline_skips=skipped) == []

    assert run.check('ours', _counts(run, passed[1:]), ours, pins, []) == [
        'ghostnet_050: 1 tests passed, pinned 2 (pins.json)']
    assert run.check('ours', _counts(run, passed, failed=['t[ghostnet_050]']), ours, pins, []) == [
        'FAILED t[ghostnet_050]']


def test_readme_is_at_most_200_lines_and_its_links_resolve():
    """The README stays a front page (the docs carry the rest): at most 200 lines, every relative link a file here."""
    text = (ROOT / 'README.md').read_text()
    assert len(text.splitlines()) <= 200
    links = re.findall(r'\]\(((?!https?://)[^)#\s]+)(?:#[^)]*)?\)', text)
    assert len(links) >= 8
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, f'README.md links to files that do not exist: {missing}'
