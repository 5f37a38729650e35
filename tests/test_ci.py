"""CI cannot pass a broken build: .ci/run runs the README's test command one step at a time, and a skip that means
"environment missing" fails under TIMM_GHOST_STRICT_SKIPS=1."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CI_RUN = ROOT / '.ci' / 'run'
CI_FLOOR = ROOT / '.ci' / 'floor-env'


def _readme_test_command() -> list:
    text = (ROOT / 'README.md').read_text()
    block = re.search(r'The tests \(the commands CI runs, one per line\):\n\n```bash\n(.*?)```', text, re.S)
    assert block, 'README.md lost its test-command block'
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def _ci_commands(script: Path = CI_RUN) -> list:
    """The lines of a CI script (.ci/run by default) that run something (comments and blank lines dropped)."""
    lines = (line.strip() for line in script.read_text().splitlines())
    return [line for line in lines if line and not line.startswith('#')]


def test_ci_runs_the_readme_test_command_line_by_line():
    readme = _readme_test_command()
    assert readme == ['pip install -e ".[test]"', 'ruff check .', 'python -m pytest -q']
    ci = _ci_commands()
    at = [ci.index(line) for line in readme]
    assert at == sorted(at)
    # between them only bookkeeping: the elapsed times, starting the slow tests, waiting for the Paddle environment
    between = ci[at[0] + 1:at[-1]]
    assert [line for line in between if line not in readme] == [
        "elapsed 'main environment'", 'nice -n 10 python -m pytest -q -m slow > "$LOGS/slow.log" 2>&1 &',
        'slow_job=$!', 'finish "$paddle_job" "$LOGS/paddle.log"', "elapsed 'paddle environment'"]
    # the side environments start before the main one, in the background
    assert ci.index('FLOOR_STEPS=build nice -n 10 bash .ci/floor-env > "$LOGS/floor-build.log" 2>&1 &') < at[0]
    assert ci.index('bash .ci/setup-paddle .venv-paddle > "$LOGS/paddle.log" 2>&1 &') < at[0]


def test_ci_steps_cannot_fail_silently():
    ci = _ci_commands()
    assert ci[0] == 'set -euo pipefail'
    # set -e ignores a failure anywhere in an `a && b` / `a || b` list but its last command: none in a step
    lists = [line for line in ci if re.search(r'&&|\|\|', line)]
    assert lists == []
    assert 'export TIMM_GHOST_STRICT_SKIPS=1' in ci
    assert 'nice -n 10 python -m pytest -q -m slow > "$LOGS/slow.log" 2>&1 &' in ci
    assert 'finish "$slow_job" "$LOGS/slow.log"' in ci
    assert 'python tests/timm_conformance/run.py' in ci


def test_the_floor_environment_is_the_built_wheel():
    """.ci/run's floor step, .ci/floor-env: build and check the wheel, install it alone into the Python 3.10 floor
    environment, smoke-test it from another folder, then run the core suite and timm's conformance run on it; no
    editable install, no other environment with torch."""
    ci = _ci_commands()
    assert ci[-6:-2] == ['finish "$floor_job" "$LOGS/floor-build.log"', 'deactivate',
                         'FLOOR_STEPS=test bash .ci/floor-env', "elapsed 'floor environment (the wheel)'"]
    assert ci[-2:] == ['finish "$slow_job" "$LOGS/slow.log"', "elapsed 'slow tests'"]
    assert not (ROOT / '.ci' / 'wheel-smoke').exists() and not any('wheel-smoke' in line for line in ci)
    floor = _ci_commands(CI_FLOOR)
    assert floor[0] == 'set -euo pipefail'
    # lists only in the conditions of `if` / `for` (finding the interpreter), which set -e leaves alone by design
    assert [line for line in floor if re.search(r'&&|\|\|', line) and not line.startswith(('if ', 'for '))] == []
    steps = [
        'git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$WORK/src"',
        '"$WORK/tools/bin/python" -m build --outdir "$WORK/dist" "$WORK/src"',
        '"$WORK/tools/bin/python" -m twine check --strict "$WORK"/dist/*',
        "step 'wheel built and checked'",
        '"$PYTHON" -m venv "$WORK/venv"',
        'export PIP_CONSTRAINT="$CONSTRAINTS"',
        'python -m pip install --quiet "$wheel"',
        'timm-ghost info',
        "step 'wheel smoke test'",
        ('python -m pip install --quiet pytest pytest-xdist scikit-learn pandas segmentation-models-pytorch '
         'pycocotools'),
        "TIMM_GHOST_TEST_INSTALLED=1 TIMM_GHOST_TEST_WIDTHS=ghostnet_050 pytest -q -m 'not slow' -k 'not onnx' \\",
        'rm -rf "$WORK/pytest-tmp"',
        'python tests/timm_conformance/run.py --no-baseline',
    ]
    at = [floor.index(line) for line in steps]
    assert at == sorted(at)
    # one environment with torch: the floor's, which installs the built wheel and never the source tree
    assert [line for line in floor if re.search(r' -m venv ', line)] == [
        '"$PYTHON" -m venv "$WORK/tools"', '"$PYTHON" -m venv "$WORK/venv"']
    installs = [line for line in floor if 'pip install' in line]
    assert not [line for line in installs if re.search(r' -e |\s\.(\s|$)|(?<![\w-])torch(?![\w-])', line)], installs


def test_a_suite_meant_for_the_installed_package_refuses_the_source_tree():
    """TIMM_GHOST_TEST_INSTALLED=1 (.ci/floor-env): `python -m pytest` from the source folder would import the tree's
    timm_ghost, not the installed wheel, and the run stops saying so."""
    env = {**os.environ, 'TIMM_GHOST_TEST_INSTALLED': '1'}
    proc = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-n', '0', '-p', 'no:cacheprovider', '--co',
                           'tests/test_ci.py'], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert 'TIMM_GHOST_TEST_INSTALLED=1, but the tests import timm_ghost from the source tree' in out


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


def test_conformance_run_takes_the_installed_timms_pins_and_stops_without_them(monkeypatch, capsys):
    run = _conformance()
    pins = json.loads(run.PINS.read_text())
    assert {'1.0.21', '1.0.31'} <= set(pins)  # the floor's and the main environment's timm
    assert all(set(p) == set(run.WIDTHS) and min(p.values()) > 0 for p in pins.values())
    monkeypatch.setattr(run, 'version', lambda name: '1.0.7')
    monkeypatch.setattr(run, 'fetch_sdist', lambda *a: pytest.fail('no download without pins'))
    assert run.main([]) == 1
    assert capsys.readouterr().err == (
        f'timm conformance: FAILED: timm 1.0.7 (installed) has no pinned pass counts in {run.PINS} (pinned: '
        f'{", ".join(sorted(pins))}); run it with --pin, review the run, commit the pins\n')
