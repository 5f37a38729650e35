"""Pretrained weights from the Hugging Face Hub, proven against a Hub server on loopback (tests/hub_server.py).

huggingface_hub reads HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE / timeouts at import, so every networked load runs in
a client process (``hub_server.run_client``), several loads per process; each result is asserted on its own.
Client processes use 2 s metadata / download timeouts (``TIMEOUT``).

Failures that take time (a stalled Hub, a stalled transfer) are asserted against the failure latency the README
promises: ``2 * HF_HUB_ETAG_TIMEOUT + 1`` s for a Hub that does not answer, and ``HF_HUB_DOWNLOAD_TIMEOUT`` per read
with huggingface_hub's resume attempts for a transfer that stops. Their clients run beside the module's main one.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import urllib.parse
from pathlib import Path

import pytest
import timm
import torch
from helpers import randomize_
from hub_server import (
    HubServer,
    Tripwire,
    closed_port_endpoint,
    finish_client,
    hub_env,
    run_client,
    run_clients_together,
    start_client,
    state_digest,
)
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

import timm_ghost
from timm_ghost.hub import PretrainedWeightsError

TIMEOUT = 2  # HF_HUB_ETAG_TIMEOUT and HF_HUB_DOWNLOAD_TIMEOUT of the client processes, seconds
# the README's promise for a Hub that does not answer and no cached copy, checked on the client's fetch_seconds (the
# weights' resolution alone, not the model construction around it, which a loaded 2-core machine can slow at will)
PROBE_BOUND = 2 * TIMEOUT + 1
RESUMES = 5  # huggingface_hub's resume attempts after a read timeout, 1 s apart (file_download.http_get)
TRANSFER_BOUND = (1 + RESUMES) * (TIMEOUT + 1)  # after a transfer stops: each attempt waits out the read timeout


def _weights(name: str, seed: int, **kwargs) -> bytes:
    """safetensors bytes of a randomised ``name`` (our model; timm's layout)."""
    return save_safetensors(randomize_(timm.create_model(name, **kwargs), seed).state_dict())


def _digest(data: bytes) -> str:
    return state_digest(load_safetensors(data))


def _overlay(hub_id: str, **extra) -> dict:
    return {'pretrained': True, 'pretrained_cfg_overlay': dict(hf_hub_id=hub_id, **extra)}


def _cache_folder(hf_home: Path, repo_id: str) -> Path:
    return hf_home / 'hub' / ('models--' + repo_id.replace('/', '--'))


class World:
    """The module's Hub (one server, one client cache) and what the first client saw."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.home = tmp, tmp / 'hf_home'
        self.hub = HubServer().start()
        hub = self.hub
        self.default = _weights('ghostnet_100', 1)
        hub.commit('timm/ghostnet_100.in1k', {'model.safetensors': self.default, 'README.md': b'# ghostnet_100\n'})
        self.v1, self.v2 = _weights('ghostnet_100', 2), _weights('ghostnet_100', 3)
        self.v1_oid = hub.commit('org/pinned', {'model.safetensors': self.v1}, message='v1')
        hub.tag('org/pinned', 'v1')
        hub.commit('org/pinned', {'model.safetensors': self.v2}, message='v2')
        # a repo laid out by timm's save_for_hf: config.json says ghostnet_050 with 10 classes
        model = randomize_(timm.create_model('ghostnet_050', num_classes=10), 4)
        timm.models.save_for_hf(model, tmp / 'cfg', safe_serialization=True)
        self.cfg_weights = (tmp / 'cfg' / 'model.safetensors').read_bytes()
        hub.commit('org/cfg', {'config.json': (tmp / 'cfg' / 'config.json').read_bytes(),
                               'model.safetensors': self.cfg_weights})
        torch.save(timm.create_model('ghostnet_100').state_dict(), tmp / 'pytorch_model.bin')
        hub.commit('org/pickle-only', {'pytorch_model.bin': (tmp / 'pytorch_model.bin').read_bytes()})
        hub.commit('org/no-weights', {'README.md': b'# nothing here\n'})
        hub.commit('org/g130', {'model.safetensors': _weights('ghostnet_130', 5)})
        hub.commit('org/url', {'model.safetensors': self.v2})
        hub.commit('org/url-other', {'model.safetensors': self.v1})
        self.url = f'{hub.endpoint}/org/url/resolve/main/model.safetensors'
        self.url_other = f'{hub.endpoint}/org/url-other/resolve/main/model.safetensors'  # the same file name
        self.url_kwargs = {'pretrained': True, 'pretrained_cfg_overlay': dict(hf_hub_id=None, url=self.url)}
        self.url_key = hashlib.sha256(self.url.encode()).hexdigest()[:16]
        for repo, fault in [('org/corrupt', 'corrupt'), ('org/err500', '500'), ('org/stall', 'stall'),
                            ('org/trunc', 'truncate')]:
            hub.commit(repo, {'model.safetensors': self.default})
            hub.fault(repo, fault)
        for repo, fault in [('org/once', '503-once'), ('org/once-cut', 'truncate-once')]:
            hub.commit(repo, {'model.safetensors': self.v1})
            hub.fault(repo, fault)
        self.paddle_name = 'GhostNet_x0_5_pretrained.pdparams'  # failures only: never converted
        self.paddle_urls = {
            'refused': f'{closed_port_endpoint()}/{self.paddle_name}',
            'dns': f'http://nonexistent.invalid/{self.paddle_name}',
            'stall': f'{hub.endpoint}/org/stall/resolve/main/{self.paddle_name}',
            '404': f'{hub.endpoint}/org/no-weights/resolve/main/{self.paddle_name}',
            '500': f'{hub.endpoint}/org/err500/resolve/main/{self.paddle_name}',
        }
        hub.commit('org/stall-body', {'model.safetensors': bytes(1 << 16)})  # never read: the transfer stops first
        hub.fault('org/stall-body', 'stall-body')
        for repo in ('org/gated', 'org/private'):
            hub.commit(repo, {'model.safetensors': self.v1})
            hub.restrict(repo, gated=repo == 'org/gated', private=repo == 'org/private')
        # a Hub that accepts connections and never answers anything, seen by huggingface_hub's defaults (telemetry
        # on: its agent registry is fetched from the Hub first, with a 3 s timeout of its own), and a stalled transfer
        self.stalled = HubServer().start()
        self.stalled.fault('*', 'stall')
        stalled_client = start_client(
            [{'id': 'stall-all', 'model': 'ghostnet_100', 'kwargs': _overlay('org/any')}],
            hub_env(self.stalled.endpoint, tmp / 'stalled_home', timeout_s=TIMEOUT, HF_HUB_DISABLE_TELEMETRY='0'))
        body_client = start_client(
            [{'id': 'stall-body', 'model': 'ghostnet_100', 'kwargs': _overlay('org/stall-body')}], self.env())
        self.run = run_client([
            {'id': 'default', 'model': 'ghostnet_100', 'kwargs': {'pretrained': True}},
            {'id': 'default-again', 'model': 'ghostnet_100', 'kwargs': {'pretrained': True}},
            {'id': 'pinned-tag', 'model': 'ghostnet_100', 'kwargs': _overlay('org/pinned@v1')},
            {'id': 'pinned-main', 'model': 'ghostnet_100', 'kwargs': _overlay('org/pinned')},
            {'id': 'pinned-commit', 'model': 'ghostnet_100', 'kwargs': _overlay(f'org/pinned@{self.v1_oid}')},
            {'id': 'hf-hub', 'model': 'hf-hub:org/cfg', 'kwargs': {'pretrained': True}},
            {'id': 'pickle-only', 'model': 'ghostnet_100', 'kwargs': _overlay('org/pickle-only')},
            {'id': 'pickle-file', 'model': 'ghostnet_100',
             'kwargs': _overlay('org/pickle-only', hf_hub_filename='pytorch_model.bin')},
            {'id': 'missing-repo', 'model': 'ghostnet_100', 'kwargs': _overlay('org/missing')},
            {'id': 'missing-file', 'model': 'ghostnet_100', 'kwargs': _overlay('org/no-weights')},
            {'id': 'missing-revision', 'model': 'ghostnet_100', 'kwargs': _overlay('org/pinned@v9')},
            {'id': 'wrong-arch', 'model': 'ghostnet_100', 'kwargs': _overlay('org/g130')},
            {'id': 'corrupt', 'model': 'ghostnet_100', 'kwargs': _overlay('org/corrupt')},
            {'id': 'status-500', 'model': 'ghostnet_100', 'kwargs': _overlay('org/err500')},
            {'id': 'stall', 'model': 'ghostnet_100', 'kwargs': _overlay('org/stall')},
            {'id': 'truncated', 'model': 'ghostnet_100', 'kwargs': _overlay('org/trunc')},
            {'id': 'url', 'model': 'ghostnet_100', 'kwargs': self.url_kwargs},
            {'id': 'url-again', 'model': 'ghostnet_100', 'kwargs': self.url_kwargs},
            {'id': 'url-other', 'model': 'ghostnet_100',
             'kwargs': {'pretrained': True, 'pretrained_cfg_overlay': dict(hf_hub_id=None, url=self.url_other)}},
            {'id': 'once-503', 'model': 'ghostnet_100', 'kwargs': _overlay('org/once')},
            {'id': 'once-cut', 'model': 'ghostnet_100', 'kwargs': _overlay('org/once-cut')},
            {'id': 'gated', 'model': 'ghostnet_100', 'kwargs': _overlay('org/gated')},
            {'id': 'private', 'model': 'ghostnet_100', 'kwargs': _overlay('org/private')},
            *[{'id': f'paddle-{cause}', 'model': 'ghostnet_050',
               'kwargs': {'pretrained': True, 'pretrained_cfg_overlay': dict(url=url)}}
              for cause, url in self.paddle_urls.items()],
            {'id': 'url-dns', 'model': 'ghostnet_100', 'kwargs': {'pretrained': True, 'pretrained_cfg_overlay': dict(
                hf_hub_id=None, url='http://nonexistent.invalid/org/model.safetensors')}},
            {'id': 'token', 'env': {'HF_TOKEN': 'hf_loopback'}},  # from here on, requests carry a token
            {'id': 'gated-token', 'model': 'ghostnet_100', 'kwargs': _overlay('org/gated')},
            {'id': 'private-token', 'model': 'ghostnet_100', 'kwargs': _overlay('org/private')},
        ], self.env(TQDM_POSITION='-1'), timeout=150)  # TQDM_POSITION=-1: bars on although stderr is a pipe
        self.stalled_run = finish_client(stalled_client, timeout=60)
        self.body_run = finish_client(body_client, timeout=90)

    def env(self, **extra) -> dict:
        return hub_env(self.hub.endpoint, self.home, timeout_s=TIMEOUT, **extra)


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    w = World(tmp_path_factory.mktemp('hub'))
    yield w
    w.hub.stop()
    w.stalled.stop()


_WITHOUT_HUB_PRIVATES = """
import timm.models._builder, timm.models._hub, huggingface_hub.file_download
del timm.models._builder._resolve_pretrained_source, huggingface_hub.file_download.http_get
del timm.models._hub.generate_readme, timm.models._hub.hf_split, timm.models._hub.get_cache_dir
import timm, timm_ghost
print(type(timm.create_model('ghostnet_100')).__name__)
try:
    timm.create_model('ghostnet_100', pretrained=True)
except ImportError as e:
    print(e)
"""


def test_import_and_model_need_no_private_hub_name():
    """A timm / huggingface_hub release without the private names the Hub features use still imports timm_ghost and
    builds models; only loading weights then fails, naming what is missing."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, '-c', _WITHOUT_HUB_PRIVATES], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    built, error = out.stdout.splitlines()
    assert built == 'GhostNet'
    assert error.startswith('timm-ghost needs timm.models._builder._resolve_pretrained_source (which weight source '
                            f'timm would load a pretrained_cfg from; in timm since 0.6), which timm {timm.__version__}')


def test_default_cfg_points_at_timm_hub_repo():
    cfg = timm.models.get_pretrained_cfg('ghostnet_100')  # the default tag
    # filename None: model.safetensors
    assert (cfg.tag, cfg.hf_hub_id, cfg.hf_hub_filename) == ('in1k', 'timm/ghostnet_100.in1k', None)
    assert timm.list_pretrained('ghostnet_100*')[0] == 'ghostnet_100.in1k'


def test_a_cfg_without_weights_names_the_tags_that_have_them():
    tags = timm.list_pretrained('ghostnet_100.*')
    with pytest.raises(PretrainedWeightsError) as e:
        timm.create_model('ghostnet_100', pretrained=True, pretrained_cfg=dict(architecture='ghostnet_100'))
    assert str(e.value).startswith(f'ghostnet_100 has no pretrained weights. Pretrained tags of ghostnet_100: '
                                   f'{", ".join(tags)}. Use pretrained=False')


def test_first_use_downloads_once_and_loads_the_served_tensors(world):
    first, again = world.run['default'], world.run['default-again']
    assert first['ok'], first
    assert first['digest'] == again['digest'] == _digest(world.default)
    assert first['hf_hub_id'] == 'timm/ghostnet_100.in1k'  # the model reports where its weights came from
    assert world.hub.downloads('timm/ghostnet_100.in1k', 'model.safetensors') == 1
    blobs = list((_cache_folder(world.home, 'timm/ghostnet_100.in1k') / 'blobs').iterdir())
    assert [b.stat().st_size for b in blobs] == [len(world.default)]


def test_first_download_shows_the_progress_bar(world):
    assert 'model.safetensors: 100%' in world.run.stderr.get('default', '')
    assert '%|' not in world.run.stderr.get('default-again', '')  # the cached copy: no transfer, no bar


def test_revision_pinning_selects_the_pinned_file(world):
    v1, v2 = _digest(world.v1), _digest(world.v2)
    assert v1 != v2
    assert world.run['pinned-tag']['digest'] == v1
    assert world.run['pinned-commit']['digest'] == v1
    assert world.run['pinned-main']['digest'] == v2
    assert world.run['pinned-tag']['hf_hub_id'] == 'org/pinned@v1'
    assert world.hub.seen(contains=f'/resolve/{world.v1_oid}/') == []  # a cached commit needs no request


def test_safetensors_url_downloads_once_into_torch_hub(world):
    assert world.run['url']['digest'] == world.run['url-again']['digest'] == _digest(world.v2)
    assert world.hub.downloads('org/url', 'model.safetensors') == 1
    checkpoints = world.home / 'torch' / 'hub' / 'checkpoints'  # TORCH_HOME of the client
    cached = sorted(checkpoints.glob('timm_ghost/*/model.safetensors'))
    assert sorted(p.read_bytes() for p in cached) == sorted([world.v1, world.v2])
    # no partial download left (lock files aside)
    assert [p.name for p in checkpoints.rglob('*') if p.name.startswith('.') and '.locks' not in p.parts] == []
    records = [json.loads((p.parent / 'entry.json').read_text()) for p in cached]
    assert sorted((r['download']['sha256'], r['download']['size']) for r in records) == sorted(
        (hashlib.sha256(w).hexdigest(), len(w)) for w in (world.v1, world.v2))


def test_urls_ending_in_the_same_file_name_load_their_own_weights(world):
    assert world.run['url-other']['digest'] == _digest(world.v1) != world.run['url']['digest']


def test_pretrained_cfg_reports_the_url_not_the_cache_path(world):
    r = world.run['url']
    assert r['url'] == world.url
    assert r['file'] is None and r['hf_hub_id'] is None


def test_hf_hub_prefix_builds_from_the_repos_config(world):
    r = world.run['hf-hub']
    assert r['ok'], r
    assert (r['architecture'], r['num_classes']) == ('ghostnet_050', 10)
    assert r['digest'] == _digest(world.cfg_weights)


def test_remote_pickles_are_refused_and_never_fetched(world):
    r = world.run['pickle-only']
    assert r['error_type'] == 'PretrainedWeightsError'
    assert 'only pickle weights (pytorch_model.bin)' in r['error'] and 'never loaded' in r['error']
    r = world.run['pickle-file']
    assert r['error_type'] == 'PretrainedWeightsError'
    assert 'loaded only from safetensors' in r['error'] and 'pytorch_model.bin' in r['error']
    assert world.hub.downloads('org/pickle-only', 'pytorch_model.bin') == 0


@pytest.mark.parametrize('case, words', [
    ('missing-repo', ['org/missing', 'not found', 'model.safetensors']),
    ('missing-file', ['model.safetensors', 'not found', 'org/no-weights']),
    ('missing-revision', ["'v9'", 'not found', 'org/pinned', 'model.safetensors']),
])
def test_missing_repository_file_or_revision_is_named(world, case, words):
    r = world.run[case]
    assert r['error_type'] == 'PretrainedWeightsError'
    for word in words:
        assert word in r['error']
    assert r['fetch_seconds'] <= PROBE_BOUND  # a definite answer: no retries


def test_weights_of_another_width_name_the_mismatching_shapes(world):
    r = world.run['wrong-arch']
    assert r['error_type'] == 'PretrainedWeightsError'
    assert 'does not fit ghostnet_100' in r['error']
    assert 'conv_stem.weight' not in r['error']  # left to timm's in_chans adaptation
    assert 'differ in shape, e.g. bn1.weight: checkpoint (20,) vs model (16,)' in r['error']  # 16 * 1.3 -> 20


def test_content_not_matching_the_advertised_sha256_is_rejected(world):
    r = world.run['corrupt']
    assert r['error_type'] == 'PretrainedWeightsError'
    assert 'org/corrupt/model.safetensors' in r['error'] and 'sha256' in r['error']
    folder = _cache_folder(world.home, 'org/corrupt')
    assert list((folder / 'blobs').glob('*')) == []  # removed: the next try downloads again
    assert list((folder / 'snapshots').glob('*/model.safetensors')) == []


def test_server_errors_fail_clearly_within_the_timeouts(world):
    r = world.run['status-500']
    assert r['error_type'] == 'PretrainedWeightsError'
    assert r['error'].startswith(f'ghostnet_100.in1k: could not reach Hub repository org/err500 (file '
                                 f'model.safetensors) at {world.hub.endpoint} after 2 tries: HTTP status 500 (Internal '
                                 f'Server Error). No cached copy. Ways round it: download model.safetensors of '
                                 f'org/err500 where the Hub can be reached (`hf download org/err500 '
                                 f"model.safetensors`) and pass pretrained_cfg_overlay=dict(file='/path/to/"
                                 f"model.safetensors'); or pass "
                                 f'cache_dir= (or set HF_HOME) to a copy of a Hub cache that holds it')
    assert 'HF_HUB_ETAG_TIMEOUT' not in r['error']  # no timeout advice for an error status
    assert r['fetch_seconds'] <= PROBE_BOUND
    r = world.run['stall']
    assert r['error_type'] == 'PretrainedWeightsError'
    assert r['error'].startswith(f'ghostnet_100.in1k: could not reach Hub repository org/stall (file '
                                 f'model.safetensors) at {world.hub.endpoint} after 2 tries: timed out: no answer '
                                 f'within HF_HUB_ETAG_TIMEOUT={TIMEOUT} s. No cached copy. Ways round it: ')
    assert r['error'].endswith(f'; or, for a slow Hub, raise HF_HUB_ETAG_TIMEOUT (now {TIMEOUT} s)')
    assert 2 * TIMEOUT <= r['fetch_seconds'] <= PROBE_BOUND  # it waited for both tries, no longer than promised


def _hub_asks_for_agent_registry() -> bool:
    """Whether the installed huggingface_hub fetches its agent registry from the Hub before its first request."""
    import huggingface_hub
    return any('agent-harnesses' in p.read_text(errors='ignore')
               for p in Path(huggingface_hub.__file__).parent.rglob('*.py'))


def test_a_hub_that_never_answers_fails_within_the_promised_bound(world):
    r = world.stalled_run['stall-all']
    assert r['error_type'] == 'PretrainedWeightsError'
    assert 'org/any' in r['error'] and f'no answer within HF_HUB_ETAG_TIMEOUT={TIMEOUT} s' in r['error']
    assert 'No cached copy' in r['error']
    assert 2 * TIMEOUT <= r['fetch_seconds'] <= PROBE_BOUND
    # newer huggingface_hub makes a request of its own first, which stalled too: the bound holds in wall-clock time
    # regardless
    assert len(world.stalled.seen('GET', '/api/agent-harnesses')) >= (1 if _hub_asks_for_agent_registry() else 0)
    assert 1 <= len(world.stalled.seen('HEAD', '/org/any/resolve/main/model.safetensors')) <= 2


def test_a_transfer_that_stops_midway_fails_within_the_download_timeouts(world):
    r = world.body_run['stall-body']
    assert r['error_type'] == 'PretrainedWeightsError'
    assert r['error'].startswith('ghostnet_100.in1k: the transfer of model.safetensors from Hub repository '
                                 f'org/stall-body stopped: no data within HF_HUB_DOWNLOAD_TIMEOUT={TIMEOUT} s')
    gets = world.hub.seen('GET', '/cdn/org/stall-body/')
    assert len(gets) == 1 + RESUMES  # each attempt got half the file, then silence
    stalled_for = r['end'] - gets[0].start  # from the request that stopped midway to the error
    assert (1 + RESUMES) * TIMEOUT <= stalled_for <= TRANSFER_BOUND
    folder = _cache_folder(world.home, 'org/stall-body')
    assert list((folder / 'blobs').glob('*')) == []  # nothing half-written: no partial blob, no .incomplete
    assert list((folder / 'snapshots').glob('*/model.safetensors')) == []


def test_a_failure_that_heals_is_retried_and_the_load_succeeds(world):
    first_503 = world.run['once-503']
    assert first_503['ok'] and first_503['digest'] == _digest(world.v1), first_503
    heads = [r.status for r in world.hub.seen('HEAD', '/org/once/resolve/')]
    assert heads[:2] == [503, 302]  # the probe's first try got 503, its second the file's metadata
    assert world.hub.downloads('org/once', 'model.safetensors') == 1

    cut = world.run['once-cut']
    assert cut['ok'] and cut['digest'] == _digest(world.v1), cut
    assert world.hub.downloads('org/once-cut', 'model.safetensors') == 2  # cut in the middle, then tried again


@pytest.mark.parametrize('repo, words', [
    ('org/gated', ['Hub repository org/gated is gated', 'no token was sent', '`hf auth login`', 'HF_TOKEN',
                   'accepting its terms']),
    ('org/private', ['Hub repository org/private not found', 'or private (HTTP 401', 'no token was sent',
                     '`hf auth login`', 'HF_TOKEN']),
])
def test_gated_or_private_repository_says_how_to_authenticate(world, repo, words):
    case = repo.split('/')[1]
    r = world.run[case]
    assert r['error_type'] == 'PretrainedWeightsError'
    for word in words:
        assert word in r['error']
    assert r['fetch_seconds'] <= PROBE_BOUND  # a definite answer: no retries
    with_token = world.run[f'{case}-token']  # the same load once HF_TOKEN is set
    assert with_token['ok'] and with_token['digest'] == _digest(world.v1), with_token
    assert world.hub.downloads(repo, 'model.safetensors') == 1


def test_refused_connections_fail_clearly_and_fall_back_to_the_cache(world):
    closed = closed_port_endpoint()
    run = run_client([
        {'id': 'cached', 'model': 'ghostnet_100', 'kwargs': {'pretrained': True}},
        {'id': 'cold', 'model': 'ghostnet_100', 'kwargs': _overlay('org/cold')},
    ], hub_env(closed, world.home, timeout_s=TIMEOUT))
    assert run['cached']['digest'] == _digest(world.default)
    assert 'not reachable' in run.stderr['cached'] and 'using the cached timm/ghostnet_100.in1k' in run.stderr['cached']
    cold = run['cold']
    assert cold['error_type'] == 'PretrainedWeightsError'
    port = closed.rsplit(':', 1)[1]
    assert cold['error'].startswith(f'ghostnet_100.in1k: could not reach Hub repository org/cold (file '
                                    f'model.safetensors) at {closed} after 2 tries: connection refused by '
                                    f'127.0.0.1:{port}: nothing listens there. No cached copy. Ways round it: '
                                    f'download model.safetensors of org/cold ')
    assert 'HF_HUB_ETAG_TIMEOUT' not in cold['error']
    assert cold['fetch_seconds'] <= PROBE_BOUND


def test_cut_transfer_errors_leaves_no_cache_entry_and_retry_succeeds(world):
    r = world.run['truncated']
    assert r['error_type'] == 'PretrainedWeightsError'
    assert 'org/trunc' in r['error'] and 'model.safetensors' in r['error']
    folder = _cache_folder(world.home, 'org/trunc')
    assert list((folder / 'blobs').glob('*')) == []  # no partial blob, no .incomplete left
    assert list((folder / 'snapshots').glob('*/model.safetensors')) == []
    before = world.hub.downloads('org/trunc', 'model.safetensors')
    assert before >= 2  # the first cut transfer and huggingface_hub's resume attempts

    world.hub.fault('org/trunc', None)  # the server recovers
    run = run_client([{'id': 'retry', 'model': 'ghostnet_100', 'kwargs': _overlay('org/trunc')}], world.env())
    assert run['retry']['digest'] == _digest(world.default)
    assert world.hub.downloads('org/trunc', 'model.safetensors') == before + 1


_PADDLE_CAUSES = {
    'refused': 'connection refused by 127.0.0.1:{port}: nothing listens there (after 2 tries)',
    'dns': 'no DNS: name resolution failed for nonexistent.invalid ([Errno -2] Name or service not known)',
    'stall': f'timed out: no answer within HF_HUB_ETAG_TIMEOUT={TIMEOUT} s (after 2 tries)',
    '404': 'HTTP status 404 (Not Found)',
    '500': 'HTTP status 500 (Internal Server Error) (after 2 tries)',
}


@pytest.mark.parametrize('cause', list(_PADDLE_CAUSES))
def test_a_paddleclas_download_failure_names_tag_source_cause_and_ways_round(world, cause):
    r = world.run[f'paddle-{cause}']
    url, name = world.paddle_urls[cause], world.paddle_name
    words = _PADDLE_CAUSES[cause].format(port=urllib.parse.urlsplit(url).port)
    if cause == 'dns':  # the resolver's own words differ between C libraries; ours come first
        words = words.split(' ([Errno')[0]
    assert r['error_type'] == 'PretrainedWeightsError'
    assert r['error'].startswith(f'ghostnet_050.paddle_in1k: could not download {url}: {words}')
    assert r['error'].endswith(
        f"; nothing was cached. Ways round it: download {url} where it can be reached and pass "
        f"pretrained_cfg_overlay=dict(file='/path/to/{name}'); or convert it there with `timm-ghost convert {name} OUT "
        f"--model ghostnet_050` and load 'local-dir:OUT'; or pass cache_dir= (or set TORCH_HOME) to a copy of a cache "
        f"that holds it (this one: {world.home / 'torch' / 'hub' / 'checkpoints' / 'timm_ghost_paddle'})")
    assert 'raise HF_HUB' not in r['error']  # not a Hub: no Hub-timeout advice
    assert r['fetch_seconds'] <= PROBE_BOUND


def test_a_safetensors_url_that_does_not_resolve_says_so_and_the_way_round(world):
    r = world.run['url-dns']
    url = 'http://nonexistent.invalid/org/model.safetensors'
    assert r['error'].startswith(f'ghostnet_100.in1k: could not download {url}: no DNS: name resolution failed for '
                                 f'nonexistent.invalid')
    assert "pass pretrained_cfg_overlay=dict(file='/path/to/model.safetensors'); or pass cache_dir= (or set " \
           "TORCH_HOME) to a copy of a cache that holds it" in r['error']
    assert 'HF_HUB_ETAG_TIMEOUT' not in r['error'] and '2 tries' not in r['error']  # a name is looked up once


def test_a_hub_whose_name_does_not_resolve_says_no_dns_without_timeout_advice(tmp_path):
    endpoint = 'http://nonexistent.invalid'
    run = run_client([{'id': 'load', 'model': 'ghostnet_100', 'kwargs': {'pretrained': True}}],
                     hub_env(endpoint, tmp_path / 'hf_home', timeout_s=TIMEOUT))
    r = run['load']
    assert r['error'].startswith(
        f'ghostnet_100.in1k: could not reach Hub repository timm/ghostnet_100.in1k (file model.safetensors) at '
        f'{endpoint}: no DNS: name resolution failed for nonexistent.invalid')
    assert r['error'].endswith(
        f"No cached copy. Ways round it: download model.safetensors of timm/ghostnet_100.in1k where the Hub can be "
        f"reached (`hf download timm/ghostnet_100.in1k model.safetensors`) and pass pretrained_cfg_overlay=dict("
        f"file='/path/to/model.safetensors'); or pass cache_dir= (or set HF_HOME) to a copy of a Hub cache that holds "
        f"it (this one: {tmp_path / 'hf_home' / 'hub'})")
    assert 'HF_HUB_ETAG_TIMEOUT' not in r['error']


def test_cache_dir_holds_every_source_as_timm_uses_it(world, tmp_path):
    cache = tmp_path / 'cache'
    run = run_client([
        {'id': 'hub', 'model': 'ghostnet_100', 'kwargs': {'pretrained': True, 'cache_dir': str(cache)}},
        {'id': 'url', 'model': 'ghostnet_100', 'kwargs': {**world.url_kwargs, 'cache_dir': str(cache)}},
    ], hub_env(world.hub.endpoint, tmp_path / 'home', timeout_s=TIMEOUT))
    assert run['hub']['digest'] == _digest(world.default) and run['url']['digest'] == _digest(world.v2)
    # the Hub cache layout for Hub repositories, the folder in place of torch hub's checkpoints/ for URLs
    assert [p.name for p in (cache / 'models--timm--ghostnet_100.in1k' / 'snapshots').glob('*/*')] == [
        'model.safetensors']
    assert (cache / 'timm_ghost' / world.url_key / 'model.safetensors').read_bytes() == world.v2
    assert not (tmp_path / 'home').exists() or not any(p.is_file() for p in (tmp_path / 'home').rglob('*'))


def _url_env(hub: HubServer, home: Path, **extra) -> dict:
    return hub_env(hub.endpoint, home, timeout_s=TIMEOUT, **extra)


def test_four_processes_loading_a_safetensors_url_at_once_fetch_it_once(tmp_path):
    weights = _weights('ghostnet_100', 8)
    with HubServer() as hub:
        hub.commit('org/shared', {'model.safetensors': weights})
        hub.slow_seconds = 3.0  # the transfer lasts long enough for every process to arrive while it runs
        hub.fault('org/shared', 'slow')
        url = f'{hub.endpoint}/org/shared/resolve/main/model.safetensors'
        load = {'id': 'load', 'model': 'ghostnet_100',
                'kwargs': {'pretrained': True, 'pretrained_cfg_overlay': dict(hf_hub_id=None, url=url)}}
        runs = run_clients_together(load, _url_env(hub, tmp_path / 'home'), tmp_path)
        assert {run['load'].get('digest') for run in runs} == {_digest(weights)}, [run['load'] for run in runs]
        assert hub.downloads('org/shared', 'model.safetensors') == 1
    root = tmp_path / 'home' / 'torch' / 'hub' / 'checkpoints' / 'timm_ghost'
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    assert sorted(str(p.relative_to(root)) for p in root.rglob('*') if p.is_file() and '.locks' not in p.parts) == [
        f'{key}/entry.json', f'{key}/model.safetensors']


def test_a_damaged_url_cache_entry_is_fetched_again_never_loaded(tmp_path):
    weights = _weights('ghostnet_100', 9)
    with HubServer() as hub:
        hub.commit('org/damage', {'model.safetensors': weights})
        url = f'{hub.endpoint}/org/damage/resolve/main/model.safetensors'
        load = {'model': 'ghostnet_100',
                'kwargs': {'pretrained': True, 'pretrained_cfg_overlay': dict(hf_hub_id=None, url=url)}}
        stored = tmp_path / 'home' / 'torch' / 'hub' / 'checkpoints' / 'timm_ghost' / hashlib.sha256(
            url.encode()).hexdigest()[:16] / 'model.safetensors'
        online = run_client([
            {'id': 'first', **load},
            {'id': 'truncate', 'damage': str(stored), 'how': 'truncate'},
            {'id': 'after-truncate', **load},
            {'id': 'edit', 'damage': str(stored), 'how': 'edit'},
            {'id': 'after-edit', **load},
        ], _url_env(hub, tmp_path / 'home'))
        assert [online[i]['digest'] for i in ('first', 'after-truncate', 'after-edit')] == [_digest(weights)] * 3
        assert hub.downloads('org/damage', 'model.safetensors') == 3  # each damaged copy dropped and fetched again
        assert stored.read_bytes() == weights
        assert (f'the cached {stored} holds {len(weights) // 2} bytes where {len(weights)} were recorded when it was '
                f'written; fetching it again') in online.stderr['after-truncate']
        assert f'the cached {stored} has sha256 ' in online.stderr['after-edit']
    offline = run_client([
        {'id': 'truncate', 'damage': str(stored), 'how': 'truncate'},
        {'id': 'offline', **load},
    ], _url_env(hub, tmp_path / 'home', HF_HUB_OFFLINE='1'))
    r = offline['offline']
    assert r['error_type'] == 'PretrainedWeightsError'  # never loaded
    assert r['error'].startswith(
        f'ghostnet_100.in1k: its cached copy {stored.parent} holds {len(weights) // 2} bytes where {len(weights)} '
        f'were recorded when it was written (truncated or edited; removed it), and HF_HUB_OFFLINE is set; load it '
        f'once online. Ways round it: ')
    assert not stored.parent.exists()


@pytest.fixture
def writable_again(tmp_path):
    """``tmp_path``; whatever a test made read-only in it is made writable again afterwards, to be cleaned up."""
    yield tmp_path
    for path in [tmp_path, *tmp_path.rglob('*')]:
        if path.is_dir() and not path.is_symlink():
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


def test_a_read_only_cache_serves_what_it_holds_and_names_the_setting_for_the_rest(world, writable_again):
    home = writable_again / 'home'
    url_other = {'pretrained': True, 'pretrained_cfg_overlay': dict(hf_hub_id=None, url=world.url_other)}
    filled = run_client([
        {'id': 'hub', 'model': 'ghostnet_100', 'kwargs': {'pretrained': True}},
        {'id': 'url', 'model': 'ghostnet_100', 'kwargs': world.url_kwargs},
    ], world.env() | {'HF_HOME': str(home), 'TORCH_HOME': str(home / 'torch')})
    assert filled['hub']['ok'] and filled['url']['ok']
    for path in [home, *home.rglob('*')]:  # read-only for everyone
        if not path.is_symlink():
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    env = world.env() | {'HF_HOME': str(home), 'TORCH_HOME': str(home / 'torch')}
    online = run_client([
        {'id': 'hub', 'model': 'ghostnet_100', 'kwargs': {'pretrained': True}},
        {'id': 'url', 'model': 'ghostnet_100', 'kwargs': world.url_kwargs},
        {'id': 'hub-cold', 'model': 'ghostnet_100', 'kwargs': _overlay('org/pinned')},
        {'id': 'url-cold', 'model': 'ghostnet_100', 'kwargs': url_other},
    ], env, unprivileged=True)
    offline = run_client([
        {'id': 'hub', 'model': 'ghostnet_100', 'kwargs': {'pretrained': True}},
        {'id': 'url', 'model': 'ghostnet_100', 'kwargs': world.url_kwargs},
    ], env | {'HF_HUB_OFFLINE': '1'}, unprivileged=True)
    for run in (online, offline):
        assert run['hub']['digest'] == _digest(world.default), run['hub']
        assert run['url']['digest'] == _digest(world.v2), run['url']
    hub_cold, url_cold = online['hub-cold'], online['url-cold']
    assert hub_cold['error'].startswith(
        f'ghostnet_100.in1k: org/pinned/model.safetensors must be downloaded into the Hub cache {home / "hub"}, which '
        f'cannot be written (Permission denied: ')
    assert hub_cold['error'].endswith('Pass cache_dir= to timm.create_model, or set HF_HOME (or HF_HUB_CACHE), to a '
                                      'writable folder (a read-only cache serves weights it already holds)')
    root = home / 'torch' / 'hub' / 'checkpoints' / 'timm_ghost'
    assert url_cold['error'].startswith(
        f'ghostnet_100.in1k: {world.url_other} must be written into the weight cache {root}, which cannot be written '
        f'(Permission denied: ')
    assert url_cold['error'].endswith('Pass cache_dir= to timm.create_model, or set TORCH_HOME, to a writable folder '
                                      '(a read-only cache serves the weights it already holds)')
    assert 'retry' not in hub_cold['error'] + url_cold['error'] and 'try again' not in hub_cold['error']


def test_info_weights_reports_what_the_cache_holds_with_sha256_and_size(world):
    run = run_client([{'id': 'info', 'cli': ['info', '--weights']}], world.env(HF_HUB_OFFLINE='1'))
    out = run['info']['stdout']
    blob = hashlib.sha256(world.default).hexdigest()
    assert ('ghostnet_100.in1k: timm/ghostnet_100.in1k (model.safetensors)\n'
            '  cached (sha256 advertised by the Hub): ') in out
    assert f'  sha256 {blob}, {len(world.default)} bytes\n' in out
    assert 'ghostnet_050.paddle_in1k: https://paddle-imagenet-models-name.bj.bcebos.com/dygraph/' \
           'GhostNet_x0_5_pretrained.pdparams\n  not cached\n' in out
    assert 'recorded when it was first made, not pinned' in out


def test_offline_with_the_server_stopped_loads_the_cache_without_a_connection(world):
    world.hub.stop()  # last user of the module's server
    wires = [Tripwire(world.hub.port), Tripwire(world.hub.cdn_port)]
    try:
        run = run_client([
            {'id': 'default', 'model': 'ghostnet_100', 'kwargs': {'pretrained': True}},
            {'id': 'pinned-tag', 'model': 'ghostnet_100', 'kwargs': _overlay('org/pinned@v1')},
            {'id': 'hf-hub', 'model': 'hf-hub:org/cfg', 'kwargs': {'pretrained': True}},
            {'id': 'cold', 'model': 'ghostnet_100', 'kwargs': _overlay('org/cold')},
        ], world.env(HF_HUB_OFFLINE='1'))
    finally:
        for wire in wires:
            wire.close()
    assert run['default']['digest'] == _digest(world.default)
    assert run['pinned-tag']['digest'] == _digest(world.v1)
    assert run['hf-hub']['digest'] == _digest(world.cfg_weights)
    assert 'not in the cache' in run['cold']['error'] and 'HF_HUB_OFFLINE' in run['cold']['error']
    assert [w.connections for w in wires] == [0, 0]


def test_four_processes_loading_at_once_fetch_the_file_once(tmp_path):
    weights = _weights('ghostnet_100', 7)
    with HubServer() as hub:
        hub.commit('timm/ghostnet_100.in1k', {'model.safetensors': weights})
        hub.slow_seconds = 3.0  # the transfer lasts long enough for every process to arrive while it runs
        hub.fault('timm/ghostnet_100.in1k', 'slow')
        env = hub_env(hub.endpoint, tmp_path / 'hf_home', timeout_s=10)
        runs = run_clients_together({'id': 'load', 'model': 'ghostnet_100', 'kwargs': {'pretrained': True}}, env,
                                    tmp_path)
        digests = {run['load'].get('digest') for run in runs}
        assert digests == {_digest(weights)}, [run['load'] for run in runs]
        assert hub.downloads('timm/ghostnet_100.in1k', 'model.safetensors') == 1
        (get,) = hub.seen('GET', '/cdn/')
        heads = [r for r in hub.seen('HEAD', '/resolve/') if r.start < get.end]
        assert len(heads) >= 3  # more than the downloading process's own two: the others waited on the same fetch


# -- local sources (no network) ------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def local_weights(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('local')
    sd = randomize_(timm.create_model('ghostnet_100'), 11).state_dict()
    torch.save(sd, tmp / 'weights.pth')
    (tmp / 'weights.safetensors').write_bytes(save_safetensors(sd))
    return tmp, state_digest(sd)


@pytest.mark.parametrize('name', ['weights.safetensors', 'weights.pth'])
def test_local_file_overlay_and_checkpoint_path_load(local_weights, name):
    tmp, digest = local_weights
    model = timm.create_model('ghostnet_100', pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp / name)))
    assert state_digest(model.state_dict()) == digest
    assert model.pretrained_cfg['file'] == str(tmp / name)
    model = timm.create_model('ghostnet_100', checkpoint_path=str(tmp / name))
    assert state_digest(model.state_dict()) == digest


def test_local_dir_loads_a_saved_folder(tmp_path):
    model = randomize_(timm.create_model('ghostnet_130', num_classes=5), 12)
    timm.models.save_for_hf(model, str(tmp_path), safe_serialization=True)
    loaded = timm.create_model(f'local-dir:{tmp_path}', pretrained=True)
    assert isinstance(loaded, timm_ghost.GhostNet) and loaded.num_classes == 5
    assert state_digest(loaded.state_dict()) == state_digest(model.state_dict())


def test_local_pickles_load_weights_only(tmp_path):
    marker = tmp_path / 'code-ran'

    class Payload:
        def __reduce__(self):
            return os.makedirs, (str(marker),)

    sd = timm.create_model('ghostnet_100').state_dict()
    torch.save({'state_dict': sd, 'extra': Payload()}, tmp_path / 'evil.pth')
    with pytest.raises(Exception, match=r'weights_only=True blocked .* Unsupported globals: os\.makedirs'):
        timm.create_model('ghostnet_100', pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / 'evil.pth')))
    assert not marker.exists()


def test_pickle_urls_are_refused_before_any_download():
    with pytest.raises(PretrainedWeightsError, match=r'loaded only from \.safetensors'):
        timm.create_model('ghostnet_100', pretrained=True,
                          pretrained_cfg_overlay=dict(hf_hub_id=None, url='http://127.0.0.1:9/ghostnet_1x.pth'))
