"""tests/tidy.py: what a passed test wrote is deleted, what a failed test wrote is kept for inspection."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tidy import LARGE_BYTES, remove_large_files

_PROBE = '''
from tidy import remove_artifacts_of_passed_tests  # noqa: F401


def test_passes(tmp_path):
    (tmp_path / 'model').mkdir()
    (tmp_path / 'model' / 'model.safetensors').write_bytes(bytes(3 << 20))
    (tmp_path / 'log.txt').write_text('done')


def test_fails(tmp_path):
    (tmp_path / 'model.safetensors').write_bytes(bytes(3 << 20))
    assert False, 'kept for inspection'
'''


def test_passed_tests_leave_nothing_failed_tests_keep_their_files(tmp_path):
    (tmp_path / 'test_probe.py').write_text(_PROBE)
    basetemp = tmp_path / 'basetemp'
    res = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '--rootdir', str(tmp_path),
                          f'--basetemp={basetemp}', str(tmp_path / 'test_probe.py')],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env=dict(os.environ, PYTHONPATH=str(Path(__file__).parent)))
    assert '1 failed, 1 passed' in res.stdout, res.stdout + res.stderr
    left = sorted(str(p.relative_to(basetemp)) for p in basetemp.rglob('*') if p.is_file())
    assert left == ['test_fails0/model.safetensors']
    assert (basetemp / 'test_fails0' / 'model.safetensors').stat().st_size == 3 << 20


@pytest.mark.parametrize('size, removed', [(LARGE_BYTES - 1, False), (LARGE_BYTES, True)])
def test_remove_large_files_takes_files_from_one_mib(tmp_path, size, removed):
    (tmp_path / 'a' / 'b').mkdir(parents=True)
    (tmp_path / 'a' / 'b' / 'w.bin').write_bytes(bytes(size))
    (tmp_path / 'link.bin').symlink_to(tmp_path / 'a' / 'b' / 'w.bin')
    assert remove_large_files(tmp_path) == (size if removed else 0)
    assert (tmp_path / 'a' / 'b' / 'w.bin').exists() != removed and (tmp_path / 'link.bin').is_symlink()
