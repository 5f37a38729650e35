"""PaddleClas weights: the restricted reader, the exact mapping onto timm's layout, and every route that loads them.

The parity tests compare against PaddleClas's own GhostNet, run by ``tests/paddle_oracle.py`` in the interpreter named
by ``TIMM_GHOST_PADDLE_PYTHON`` (a venv with paddlepaddle + paddleclas, made by ``.ci/setup-paddle``); they skip when
it is unset or missing. The URL route runs against a plain HTTP server on 127.0.0.1.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import timm
import torch

import timm_ghost_cli as cli
from timm_ghost._compat import timm_at_least
from timm_ghost.errors import ConversionError, PretrainedWeightsError
from timm_ghost.paddle import (
    CONVERTER_VERSION,
    PADDLECLAS_WEIGHTS,
    convert_paddle_state_dict,
    download_paddle_weights,
    load_pdparams,
    paddle_cache_dir,
    read_pdparams,
)

HERE = Path(__file__).parent
SCALES = {'ghostnet_050': 0.5, 'ghostnet_100': 1.0, 'ghostnet_130': 1.3}
FILES = {'ghostnet_050': 'GhostNet_x0_5_pretrained.pdparams', 'ghostnet_100': 'GhostNet_x1_0_pretrained.pdparams',
         'ghostnet_130': 'GhostNet_x1_3_pretrained.pdparams'}
TOLERANCE = 1e-4  # max abs logit difference against Paddle's eval output (logits O(1))
PADDLE_ENV = 'TIMM_GHOST_PADDLE_PYTHON'


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope='session')
def paddle_python() -> str:
    path = os.environ.get(PADDLE_ENV)
    if not path:
        pytest.skip(f'{PADDLE_ENV} is not set: the PaddleClas parity tests need a Paddle interpreter '
                    f'(bash .ci/setup-paddle; export {PADDLE_ENV}=$PWD/.venv-paddle/bin/python)')
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        pytest.skip(f'{PADDLE_ENV}={path} is not an executable file (run bash .ci/setup-paddle)')
    return path


class Oracle:
    """PaddleClas's GhostNet of one width, saved in both key forms, with its eval logits on a fixed batch."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.structured = folder / 'structured.pdparams'
        self.names = folder / 'names.pdparams'
        self.input = torch.from_numpy(np.load(folder / 'input.npy'))
        self.logits = torch.from_numpy(np.load(folder / 'logits.npy'))
        self.meta = json.loads((folder / 'meta.json').read_text())

    def file(self, form: str) -> Path:
        return {'structured': self.structured, 'names': self.names}[form]


@pytest.fixture(scope='session')
def oracles(paddle_python, tmp_path_factory) -> Dict[str, Oracle]:
    """One Paddle process per width (Paddle's parameter names are global to a process)."""
    root = tmp_path_factory.mktemp('paddle')
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    found = {}
    for name, scale in SCALES.items():
        out = root / name
        proc = subprocess.run([paddle_python, str(HERE / 'paddle_oracle.py'), '--scale', str(scale), '--out', str(out)],
                              capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, f'paddle_oracle.py --scale {scale} failed:\n{proc.stderr[-3000:]}'
        found[name] = Oracle(out)
    return found


@torch.no_grad()
def _max_diff(model: torch.nn.Module, oracle: Oracle) -> float:
    return (model.eval()(oracle.input) - oracle.logits).abs().max().item()


def _evil_pickle(marker: Path) -> bytes:
    """A pickle that, unpickled with the standard unpickler, creates ``marker`` (os.system) while loading."""
    class Evil:
        def __reduce__(self):
            return os.system, (f'touch {marker}',)
    return pickle.dumps({'conv1_weights': np.zeros((8, 3, 3, 3), np.float32), 'payload': Evil()}, protocol=4)


# ------------------------------------------------------------------------------------------------ a plain file server
class FileServer:
    """``GET`` / ``HEAD /<name>`` on 127.0.0.1 for the bytes in ``files``. ``truncate``: every full response stops at
    half of the body and the connection closes; a ranged request (a resume) gets its headers and no body."""

    def __init__(self) -> None:
        self.files: Dict[str, bytes] = {}
        self.truncate = False
        self.requests: List[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'

            def log_message(self, *args) -> None:
                pass

            def _serve(self, body: bool) -> None:
                server.requests.append(f'{self.command} {self.path}')
                data = server.files.get(self.path.lstrip('/'))
                if data is None:
                    self.send_response(404)
                    self.send_header('Content-Length', '0')
                    self.end_headers()
                    return
                ranged = self.headers.get('Range', '').startswith('bytes=')
                start = int(self.headers['Range'][6:].split('-')[0]) if ranged else 0
                self.send_response(206 if ranged else 200)
                self.send_header('Content-Length', str(len(data) - start))
                if ranged:
                    self.send_header('Content-Range', f'bytes {start}-{len(data) - 1}/{len(data)}')
                self.send_header('Accept-Ranges', 'bytes')
                self.end_headers()
                if not body:
                    return
                if server.truncate:
                    if not ranged:
                        self.wfile.write(data[:len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(data[start:])

            def do_GET(self) -> None:
                self._serve(body=True)

            def do_HEAD(self) -> None:
                self._serve(body=False)

        self.httpd = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f'http://127.0.0.1:{self.httpd.server_address[1]}/{name}'

    def gets(self, name: str) -> int:
        return sum(r == f'GET /{name}' for r in self.requests)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FileServer()
    yield s
    s.stop()


def _files_under(folder: Path) -> List[str]:
    """The files under ``folder`` but the cache's lock files (``.locks/``, kept or removed by filelock's version)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob('*') if p.is_file() and '.locks' not in p.parts) \
        if folder.exists() else []


# ------------------------------------------------------------------------------------------------ cfgs and tags
def test_every_width_has_paddleclas_tags_with_its_transform_and_reported_accuracy():
    assert timm.list_pretrained('ghostnet_*') == [
        'ghostnet_050.paddle_in1k', 'ghostnet_100.in1k', 'ghostnet_100.paddle_in1k', 'ghostnet_130.paddle_in1k',
        'ghostnet_130.ssld_in1k']
    assert [timm.get_pretrained_cfg(n).tag for n in SCALES] == ['paddle_in1k', 'in1k', 'paddle_in1k']
    assert all(timm.is_model_pretrained(n) for n in SCALES)
    reported = {  # PaddleClas's model-zoo table: top-1, top-5
        'ghostnet_050.paddle_in1k': ('GhostNet_x0_5_pretrained.pdparams', 66.8, 86.9),
        'ghostnet_100.paddle_in1k': ('GhostNet_x1_0_pretrained.pdparams', 74.0, 91.6),
        'ghostnet_130.paddle_in1k': ('GhostNet_x1_3_pretrained.pdparams', 75.7, 92.5),
        'ghostnet_130.ssld_in1k': ('GhostNet_x1_3_ssld_pretrained.pdparams', 79.4, 94.5),
    }
    assert set(PADDLECLAS_WEIGHTS) == set(reported)
    for tag, (filename, top1, top5) in reported.items():
        cfg = timm.get_pretrained_cfg(tag)
        assert cfg.url == f'https://paddle-imagenet-models-name.bj.bcebos.com/dygraph/{filename}'
        assert cfg.hf_hub_id is None and cfg.has_weights
        assert (cfg.input_size, cfg.crop_pct, cfg.crop_mode, cfg.interpolation) == (
            (3, 224, 224), 0.875, 'center', 'bilinear')  # resize 256 (224 / 0.875), centre crop 224
        assert (cfg.mean, cfg.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        assert (cfg.license, cfg.origin_url) == ('apache-2.0', 'https://github.com/PaddlePaddle/PaddleClas')
        assert cfg.notes[0] == (f'PaddleClas reported (ImageNet-1k val, resize 256 / centre crop 224; not measured '
                                f'here): top-1 {top1}, top-5 {top5}')
    transform = timm.data.create_transform(**timm.data.resolve_data_config(
        {}, pretrained_cfg=timm.get_pretrained_cfg('ghostnet_050.paddle_in1k').to_dict()))
    assert 'Resize(size=256, interpolation=bilinear' in repr(transform) and 'CenterCrop(size=(224, 224))' in repr(
        transform)


# ------------------------------------------------------------------------------------------------ the reader
@pytest.mark.parametrize('protocol', [2, 4, 5])
def test_reader_rebuilds_numpy_arrays_of_any_pickle_protocol(tmp_path, protocol):
    arrays = {'conv1_weights': np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2) / 7,
              'conv1_bn_mean': np.array([1.5, -2.25], np.float32), 'steps': np.array([3], np.int64)}
    path = tmp_path / 'x.pdparams'
    path.write_bytes(pickle.dumps({**arrays, 'StructuredToParameterName@@': {'a': 'b'}}, protocol=protocol))
    got = read_pdparams(path)
    assert sorted(got) == sorted(arrays)  # Paddle's name table dropped
    for k, v in arrays.items():
        assert got[k].dtype == v.dtype and np.array_equal(got[k], v)


def test_a_code_running_global_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / 'ran'
    path = tmp_path / 'GhostNet_x0_5_pretrained.pdparams'
    path.write_bytes(_evil_pickle(marker))
    with pytest.raises(PretrainedWeightsError) as info:
        read_pdparams(path)
    assert str(info.value) == (
        f'{path}: refused to unpickle: the pickle names the global posix.system, and a .pdparams file may hold numpy '
        f'arrays only (nothing in it was run)')
    assert not marker.exists()
    for name in ('builtins.eval', 'numpy.load', 'numpy.ctypeslib.load_library'):  # numpy, but not reconstruction
        module, attr = name.rsplit('.', 1)
        path.write_bytes(b'\x80\x04\x8c' + bytes([len(module)]) + module.encode() + b'\x8c' + bytes([len(attr)])
                         + attr.encode() + b'\x93.')  # PROTO 4, two SHORT_BINUNICODE, STACK_GLOBAL, STOP
        with pytest.raises(PretrainedWeightsError, match=rf'names the global {name},'):
            read_pdparams(path)


def test_reader_rejects_torch_files_and_truncated_pickles(tmp_path):
    torch_file = tmp_path / 'model.pdparams'
    torch.save({'w': torch.zeros(2)}, torch_file)
    with pytest.raises(PretrainedWeightsError, match=r'model\.pdparams: not a \.pdparams pickle \(a zip archive'):
        read_pdparams(torch_file)
    cut = tmp_path / 'cut.pdparams'
    cut.write_bytes(pickle.dumps({'conv1_weights': np.zeros((64, 64), np.float32)}, protocol=4)[:5000])
    with pytest.raises(PretrainedWeightsError, match=r'cut\.pdparams: not a readable \.pdparams pickle: '):
        read_pdparams(cut)
    with pytest.raises(PretrainedWeightsError, match=r'nope\.pdparams: no such file'):
        read_pdparams(tmp_path / 'nope.pdparams')


def test_only_plain_pickles_are_taken_for_paddle_files(tmp_path):
    from safetensors.torch import save_file

    from timm_ghost.paddle import looks_like_pdparams

    paddle_like = tmp_path / 'weights.bin'
    paddle_like.write_bytes(pickle.dumps({'conv1_weights': np.zeros(2, np.float32)}, protocol=4))
    torch.save({'w': torch.zeros(2)}, tmp_path / 'zip.pth')
    torch.save({'w': torch.zeros(2)}, tmp_path / 'legacy.pth', _use_new_zipfile_serialization=False)
    # a safetensors file whose 8-byte header length (0x480) starts like a protocol-4 pickle: b'\x80\x04'
    size = next(n for n in range(2000) if _safetensors_header(n) == 0x480)
    save_file({'w': torch.zeros(2)}, str(tmp_path / 'st.bin'), metadata={'pad': 'x' * size})
    assert (tmp_path / 'st.bin').read_bytes()[:2] == b'\x80\x04'
    assert looks_like_pdparams(paddle_like) and looks_like_pdparams(tmp_path / 'any.pdparams')
    assert not any(looks_like_pdparams(tmp_path / n) for n in ('zip.pth', 'legacy.pth', 'st.bin', 'missing.pth'))


def _safetensors_header(pad: int) -> int:
    from safetensors.torch import save
    return int.from_bytes(save({'w': torch.zeros(2)}, metadata={'pad': 'x' * pad})[:8], 'little')


def test_a_state_dict_of_another_network_is_not_converted():
    with pytest.raises(ConversionError, match=r'not a PaddleClas GhostNet checkpoint: neither conv1\._conv\.weight '
                                              r'nor conv1_weights among its keys \(first keys: stem\.weight\)'):
        convert_paddle_state_dict({'stem.weight': np.zeros(3, np.float32)})


# ------------------------------------------------------------------------------------------------ parity (Paddle)
@pytest.mark.parametrize('form', ['structured', 'names'])
@pytest.mark.parametrize('name', list(SCALES))
def test_converted_weights_give_paddleclas_logits(oracles, name, form):
    oracle = oracles[name]
    state = load_pdparams(oracle.file(form))
    model = timm.create_model(name)
    assert list(state) == list(model.state_dict())  # exactly timm's keys, in its order
    model.load_state_dict(state, strict=True)
    assert oracle.logits.abs().max().item() > 0.5  # O(1) logits
    assert _max_diff(model, oracle) <= TOLERANCE


@pytest.mark.parametrize('form', ['structured', 'names'])
@pytest.mark.parametrize('name', list(SCALES))
def test_local_pdparams_loads_through_pretrained_cfg_overlay(oracles, name, form):
    oracle = oracles[name]
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(oracle.file(form))))
    assert model.pretrained_cfg['file'] == str(oracle.file(form))
    assert _max_diff(model, oracle) <= TOLERANCE
    # timm's adaptation still applies: a new head, the backbone's features unchanged
    headless = timm.create_model(name, pretrained=True, num_classes=0,
                                 pretrained_cfg_overlay=dict(file=str(oracle.file(form))))
    with torch.no_grad():
        assert (headless.eval()(oracle.input) - model.forward_head(model.forward_features(oracle.input),
                                                                   pre_logits=True)).abs().max().item() == 0


def test_a_paddle_checkpoint_of_another_width_names_model_and_tensors(oracles):
    with pytest.raises(PretrainedWeightsError) as info:
        timm.create_model('ghostnet_100', pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(oracles['ghostnet_050'].names)))
    message = str(info.value)
    assert message.startswith('checkpoint does not fit ghostnet_100: ')
    assert 'blocks.0.0.ghost1.primary_conv.0.weight: checkpoint (4, 8, 1, 1) vs model (8, 16, 1, 1)' in message


def test_missing_and_unexpected_paddle_tensors_are_named(oracles):
    state = read_pdparams(oracles['ghostnet_050'].names)
    state.pop('_ghostbottleneck_3_se_2_offset')
    state['extra_weights'] = np.zeros(2, np.float32)
    with pytest.raises(ConversionError) as info:
        convert_paddle_state_dict(state, 'ck.pdparams')
    assert str(info.value) == ('ck.pdparams: not a PaddleClas GhostNet checkpoint of the expected structure: 1 '
                               'missing tensors (_ghostbottleneck_3_se_2_offset), 1 unexpected (extra_weights)')


def test_a_paddle_pickle_under_another_name_is_recognised_by_its_keys(oracles, tmp_path):
    oracle = oracles['ghostnet_130']
    renamed = tmp_path / 'ghostnet_130_weights.bin'
    shutil.copy(oracle.structured, renamed)
    model = timm.create_model('ghostnet_130', pretrained=True, pretrained_cfg_overlay=dict(file=str(renamed)))
    assert _max_diff(model, oracle) <= TOLERANCE


# ------------------------------------------------------------------------------------------------ convert + push
# timm's own local-dir: loader reads safetensors since timm 1.0.26 (before, it torch.loads every file, safetensors
# too): plain timm of an older release loads the folder's weights file instead
_PLAIN_TIMM = r'''
import json, sys, numpy as np, torch, timm
folder, oracle, local_dir = sys.argv[1:4]
if local_dir == '1':
    model = timm.create_model('local-dir:' + folder, pretrained=True).eval()
else:
    model = timm.create_model('ghostnet_050', pretrained=True, pretrained_cfg_overlay=dict(
        file=folder + '/model.safetensors')).eval()
with torch.no_grad():
    y = model(torch.from_numpy(np.load(oracle + '/input.npy')))
print(json.dumps(dict(diff=(y - torch.from_numpy(np.load(oracle + '/logits.npy'))).abs().max().item(),
                      module=type(model).__module__,
                      imported=sorted(m for m in sys.modules if m.split('.')[0] == 'timm_ghost'))))
'''


def test_convert_writes_a_hub_folder_that_plain_timm_loads_and_push_publishes(oracles, tmp_path, capsys):
    from hub_server import HubServer, hub_env, run_client

    oracle = oracles['ghostnet_050']
    src = tmp_path / FILES['ghostnet_050']  # named like PaddleClas's release: its figures go into the card
    shutil.copy(oracle.names, src)
    out = tmp_path / 'ghostnet_050.paddle_in1k'
    assert cli.main(['convert', str(src), str(out), '--model', 'ghostnet_050']) == 0
    assert 'verified: loaded back with local-dir:' in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    config = json.loads((out / 'config.json').read_text())
    cfg = config['pretrained_cfg']
    assert config['architecture'] == 'ghostnet_050' and config['num_classes'] == 1000
    assert (cfg['tag'], cfg['interpolation'], cfg['crop_pct'], cfg['license'], cfg['origin_url']) == (
        'paddle_in1k', 'bilinear', 0.875, 'apache-2.0', 'https://github.com/PaddlePaddle/PaddleClas')
    assert (cfg['mean'], cfg['std']) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    card = (out / 'README.md').read_text()
    assert card.startswith('---\n') and '\nlicense: apache-2.0\n' in card
    assert ('- **Accuracy (reported by PaddleClas, not measured here):**\n  - top-1: 66.8\n  - top-5: 86.9\n'
            in card)
    assert 'https://paddle-imagenet-models-name.bj.bcebos.com/dygraph/GhostNet_x0_5_pretrained.pdparams' in card

    env = {k: v for k, v in os.environ.items() if not k.startswith('HF_')}
    local_dir = '1' if timm_at_least('1.0.26') else '0'
    proc = subprocess.run([sys.executable, '-c', _PLAIN_TIMM, str(out), str(oracle.folder), local_dir],
                          capture_output=True, text=True, env=dict(env, HF_HUB_OFFLINE='1', OMP_NUM_THREADS='1'),
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plain = json.loads(proc.stdout.strip().splitlines()[-1])
    assert plain['module'] == 'timm.models.ghostnet' and plain['imported'] == []  # timm's built-in, alone
    assert plain['diff'] <= TOLERANCE

    with HubServer() as hub:
        run = run_client([{'id': 'token', 'env': {'HF_TOKEN': 'hf_loopback'}},
                          {'id': 'push', 'cli': ['push', str(out), 'org/ghostnet_050.paddle_in1k']}],
                         hub_env(hub.endpoint, tmp_path / 'hf_home'))
        assert run['push']['ok'], run.raw_stderr[-2000:]
        served = hub.files('org/ghostnet_050.paddle_in1k', 'main')
        assert {n: served[n] for n in ('model.safetensors', 'config.json', 'README.md')} == {
            n: (out / n).read_bytes() for n in ('model.safetensors', 'config.json', 'README.md')}


def test_convert_of_other_paddle_weights_claims_no_accuracy(oracles, tmp_path):
    out = tmp_path / 'out'
    assert cli.main(['convert', str(oracles['ghostnet_100'].structured), str(out), '--model', 'ghostnet_100']) == 0
    cfg = json.loads((out / 'config.json').read_text())['pretrained_cfg']
    assert (cfg.get('tag'), cfg['interpolation'], cfg['crop_pct']) == (None, 'bilinear', 0.875)
    card = (out / 'README.md').read_text()
    assert 'PaddleClas GhostNet checkpoint (structured.pdparams), converted exactly to timm\'s layout; its accuracy ' \
           'is not recorded here' in card
    assert 'reported by PaddleClas' not in card


def test_convert_of_another_width_names_model_and_tensors(oracles, tmp_path, capsys):
    out = tmp_path / 'out'
    assert cli.main(['convert', str(oracles['ghostnet_130'].names), str(out), '--model', 'ghostnet_050']) == 1
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and err.startswith('timm-ghost convert: error: checkpoint does not fit ghostnet_050')
    assert 'ghostnet_050: 428 tensors differ in shape, e.g. bn1.weight: checkpoint (20,) vs model (8,); ' in err
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ the URL route
_CLIENT = r"""
import json, sys, numpy as np, torch, timm, timm_ghost
from timm_ghost.paddle import paddle_cache_dir
name, url, folder = sys.argv[1:4]
out = {}
try:
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(url=url)).eval()
    with torch.no_grad():
        y = model(torch.from_numpy(np.load(folder + '/input.npy')))
    out.update(ok=True, diff=(y - torch.from_numpy(np.load(folder + '/logits.npy'))).abs().max().item(),
               url=model.pretrained_cfg.get('url'), file=model.pretrained_cfg.get('file'))
except Exception as e:
    out.update(ok=False, error=f'{type(e).__name__}: {e}')
out['cache'] = sorted(str(p.relative_to(paddle_cache_dir())) for p in paddle_cache_dir().rglob('*')
                      if p.is_file() and '.locks' not in p.parts)
print(json.dumps(out))
"""


def _client(name: str, url: str, oracle: Oracle, torch_home: Path, offline: bool) -> Dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(('HF_', 'TORCH_HOME'))}
    env.update(TORCH_HOME=str(torch_home), HF_HOME=str(torch_home / 'hf'), HF_HUB_ETAG_TIMEOUT='5',
               HF_HUB_DOWNLOAD_TIMEOUT='5', OMP_NUM_THREADS='1', HF_HUB_DISABLE_TELEMETRY='1')
    if offline:
        env['HF_HUB_OFFLINE'] = '1'
    proc = subprocess.run([sys.executable, '-c', _CLIENT, name, url, str(oracle.folder)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _entry_name(url: str) -> str:
    return f'{Path(url).stem}-{hashlib.sha256(url.encode()).hexdigest()[:16]}'


def test_url_downloads_converts_caches_once_then_loads_offline(oracles, server, tmp_path):
    oracle = oracles['ghostnet_050']
    filename = FILES['ghostnet_050']
    data = oracle.structured.read_bytes()
    server.files[filename] = data
    url = server.url(filename)

    first = _client('ghostnet_050', url, oracle, tmp_path, offline=False)
    assert first['ok'], first
    assert first['diff'] <= TOLERANCE
    assert first['url'] == url and first['file'] is None  # the model reports where its weights came from
    assert server.gets(filename) == 1
    entry = _entry_name(url)
    # the converted file and its record, nothing else (the raw pickle is not kept)
    assert first['cache'] == [f'{entry}/entry.json', f'{entry}/model.safetensors']
    record = json.loads((paddle_cache_dir(tmp_path / 'hub' / 'checkpoints') / entry / 'entry.json').read_text())
    stored = paddle_cache_dir(tmp_path / 'hub' / 'checkpoints') / entry / 'model.safetensors'
    assert record['source'] == url and record['converter'] == f'timm_ghost.paddle {CONVERTER_VERSION}'
    assert record['download'] == {'sha256': hashlib.sha256(data).hexdigest(), 'size': len(data)}
    assert record['file'] == {'name': 'model.safetensors', 'sha256': hashlib.sha256(stored.read_bytes()).hexdigest(),
                              'size': stored.stat().st_size}

    server.stop()  # offline: the cache alone
    again = _client('ghostnet_050', url, oracle, tmp_path, offline=True)
    assert again == first


def test_url_offline_without_cache_says_so(tmp_path, monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    url = 'http://127.0.0.1:9/GhostNet_x0_5_pretrained.pdparams'
    with pytest.raises(PretrainedWeightsError) as info:
        download_paddle_weights(url, cache_dir=tmp_path)
    cache = tmp_path / 'timm_ghost_paddle'
    assert str(info.value) == (
        f'ghostnet_050.paddle_in1k: {url} is not in the cache ({cache}), and HF_HUB_OFFLINE is set; load it once '
        f'online. Ways round it: download {url} where it can be reached and pass pretrained_cfg_overlay=dict('
        f"file='/path/to/GhostNet_x0_5_pretrained.pdparams'); or convert it there with `timm-ghost convert "
        f"GhostNet_x0_5_pretrained.pdparams OUT --model ghostnet_050` and load 'local-dir:OUT'; or pass cache_dir= "
        f'(or set TORCH_HOME) to a copy of a cache that holds it (this one: {cache})')
    assert _files_under(tmp_path) == []


def _write_entry(folder: Path, url: str, payload: bytes, **record) -> Path:
    folder.mkdir(parents=True)
    (folder / 'model.safetensors').write_bytes(payload)
    record = {'source': url, 'converter': f'timm_ghost.paddle {CONVERTER_VERSION}',
              'download': {'sha256': '0' * 64, 'size': 1},
              'file': {'name': 'model.safetensors', 'sha256': hashlib.sha256(payload).hexdigest(),
                       'size': len(payload)}, **record}
    (folder / 'entry.json').write_text(json.dumps(record))
    return folder / 'model.safetensors'


def test_cache_entries_count_only_for_their_url_converter_and_recorded_sha256(tmp_path):
    from safetensors.torch import save

    from timm_ghost.paddle import cached_paddle_weights

    url = 'http://127.0.0.1:9/GhostNet_x0_5_pretrained.pdparams'
    payload = save({'w': torch.arange(64, dtype=torch.float32)})
    folder = paddle_cache_dir(tmp_path) / _entry_name(url)
    for stale in (dict(converter='timm_ghost.paddle 1'), dict(source=url + '?v=2')):
        _write_entry(folder, url, payload, **stale)
        assert cached_paddle_weights(url, cache_dir=tmp_path) is None
        shutil.rmtree(folder)
    path = _write_entry(folder, url, payload)
    assert cached_paddle_weights(url, cache_dir=tmp_path) == path
    path.write_bytes(payload[:-1] + bytes([payload[-1] ^ 1]))  # edited, same size
    assert cached_paddle_weights(url, cache_dir=tmp_path) is None
    path.write_bytes(payload[:100])  # truncated
    assert cached_paddle_weights(url, cache_dir=tmp_path) is None


@pytest.mark.parametrize('damage', ['truncated', 'edited'])
def test_a_damaged_cache_entry_is_fetched_again_and_offline_refused(oracles, server, tmp_path, damage, monkeypatch):
    import huggingface_hub.constants
    from safetensors.torch import load_file

    oracle = oracles['ghostnet_050']
    filename = FILES['ghostnet_050']
    server.files[filename] = oracle.structured.read_bytes()
    url = server.url(filename)
    kwargs = dict(pretrained=True, pretrained_cfg_overlay=dict(url=url), cache_dir=tmp_path)
    timm.create_model('ghostnet_050', **kwargs)
    stored = paddle_cache_dir(tmp_path) / _entry_name(url) / 'model.safetensors'
    good = {k: v.clone() for k, v in load_file(stored).items()}  # not a view of the file damaged below
    size = stored.stat().st_size

    def damage_it() -> None:
        data = stored.read_bytes()
        stored.write_bytes(data[:len(data) // 2] if damage == 'truncated' else
                           data[:-8] + bytes(b ^ 0xFF for b in data[-8:]))

    damage_it()
    model = timm.create_model('ghostnet_050', **kwargs)  # detected, dropped, fetched and converted again
    assert server.gets(filename) == 2
    assert _max_diff(model, oracle) <= TOLERANCE
    again = load_file(stored)
    assert again.keys() == good.keys() and all(torch.equal(again[k], good[k]) for k in good)

    damage_it()
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    with pytest.raises(PretrainedWeightsError) as info:
        timm.create_model('ghostnet_050', **kwargs)
    assert str(info.value).startswith(
        f'ghostnet_050.paddle_in1k: its cached copy {stored.parent} '
        + (f'holds {size // 2} bytes where {size} were recorded' if damage == 'truncated' else 'has sha256 '))
    assert '(truncated or edited; removed it), and HF_HUB_OFFLINE is set; load it once online.' in str(info.value)
    assert not stored.parent.exists() and server.gets(filename) == 2


def test_four_processes_loading_at_once_download_and_convert_once(oracles, tmp_path):
    from hub_server import HubServer, hub_env, run_clients_together, state_digest

    oracle = oracles['ghostnet_100']
    filename = FILES['ghostnet_100']
    with HubServer() as hub:
        hub.commit('paddle/releases', {filename: oracle.structured.read_bytes()})
        hub.slow_seconds = 3.0  # the transfer lasts long enough for every process to arrive while it runs
        hub.fault('paddle/releases', 'slow')
        url = f'{hub.endpoint}/paddle/releases/resolve/main/{filename}'
        env = hub_env(hub.endpoint, tmp_path / 'home', timeout_s=10)
        runs = run_clients_together({'id': 'load', 'model': 'ghostnet_100.paddle_in1k',
                                     'kwargs': {'pretrained': True, 'pretrained_cfg_overlay': {'url': url}}}, env,
                                    tmp_path, timeout=180)
        loads = [run['load'] for run in runs]
        assert all(r['ok'] for r in loads), loads
        assert hub.downloads('paddle/releases', filename) == 1  # one download, so one conversion
    model = timm.create_model('ghostnet_100', pretrained=True, pretrained_cfg_overlay=dict(file=str(oracle.structured)))
    assert {r['digest'] for r in loads} == {state_digest(model.state_dict())}  # the same weights everywhere
    cache = paddle_cache_dir(tmp_path / 'home' / 'torch' / 'hub' / 'checkpoints')
    entry = _entry_name(url)
    assert _files_under(cache) == [f'{entry}/entry.json', f'{entry}/model.safetensors']


def test_url_cut_transfer_is_a_clear_error_and_leaves_no_cache_entry(server, tmp_path):
    filename = FILES['ghostnet_050']
    server.files[filename] = pickle.dumps({'conv1_weights': np.zeros((256, 1024), np.float32)}, protocol=4)
    server.truncate = True
    url = server.url(filename)
    with pytest.raises(PretrainedWeightsError) as info:
        timm.create_model('ghostnet_050', pretrained=True, pretrained_cfg_overlay=dict(url=url), cache_dir=tmp_path)
    assert str(info.value).startswith(f'ghostnet_050.paddle_in1k: could not download {url}: the transfer was cut '
                                      f'short (RemoteProtocolError: ')
    assert '; nothing was cached. Ways round it: ' in str(info.value)
    assert server.gets(filename) >= 1  # the cut transfer (newer huggingface_hub's http_get also tries to resume)
    assert _files_under(tmp_path) == []  # no entry


def test_url_missing_file_is_named(server, tmp_path):
    url = server.url('GhostNet_x9_9_pretrained.pdparams')
    with pytest.raises(PretrainedWeightsError) as info:
        download_paddle_weights(url, cache_dir=tmp_path)
    assert str(info.value).startswith(f'GhostNet_x9_9_pretrained.pdparams: could not download {url}: HTTP status 404 '
                                      f'(Not Found); nothing was cached. Ways round it: download {url} where')
    assert _files_under(tmp_path) == []


def test_url_serving_a_code_running_pickle_is_refused_and_nothing_runs(server, tmp_path):
    marker = tmp_path / 'ran'
    filename = FILES['ghostnet_050']
    server.files[filename] = _evil_pickle(marker)
    url = server.url(filename)
    cache = tmp_path / 'cache'
    with pytest.raises(PretrainedWeightsError, match=rf'^{url}: refused to unpickle: the pickle names the global '
                                                     rf'posix\.system,'):
        timm.create_model('ghostnet_050', pretrained=True, pretrained_cfg_overlay=dict(url=url), cache_dir=cache)
    assert not marker.exists()
    assert _files_under(cache) == []


def test_info_weights_reports_the_sha256_and_size_recorded_at_first_download(tmp_path, capsys):
    from safetensors.torch import save_file

    from timm_ghost import _cache
    from timm_ghost.paddle.cache import paddle_cache_entry

    release = PADDLECLAS_WEIGHTS['ghostnet_130.ssld_in1k']
    download = b'the bytes of the .pdparams as downloaded'
    entry = paddle_cache_entry(release.url, tmp_path)

    def make(folder: Path) -> Dict[str, object]:  # what the download route keeps: the converted file, the record
        save_file({'w': torch.ones(3)}, str(folder / 'model.safetensors'))
        return {'sha256': hashlib.sha256(download).hexdigest(), 'size': len(download)}

    assert _cache.fetch_entry(entry, make, release.tag, offline=False, offline_hint='') == entry.path
    assert cli.main(['info', '--weights', '--cache-dir', str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert (f'ghostnet_130.ssld_in1k: {release.url}\n  cached (sha256 recorded at first download): {entry.path}\n'
            f'  sha256 {hashlib.sha256(download).hexdigest()}, {len(download)} bytes\n') in out
    assert f'ghostnet_130.paddle_in1k: {PADDLECLAS_WEIGHTS["ghostnet_130.paddle_in1k"].url}\n  not cached\n' in out
    size = entry.path.stat().st_size
    entry.path.write_bytes(b'x')  # a damaged entry is reported as such
    assert cli.main(['info', '--weights', '--cache-dir', str(tmp_path)]) == 0
    assert (f'  cached (holds 1 bytes where {size} were recorded when it was written): {entry.path}\n'
            in capsys.readouterr().out)
