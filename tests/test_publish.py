"""``timm-ghost convert`` (checkpoint -> Hub-ready folder, verified, atomic) and ``timm-ghost push`` (upload through
huggingface_hub, against the loopback Hub of tests/hub_server.py)."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
import timm
import torch
import yaml
from helpers import HUB_MODEL_ARGS, builtin_model, randomize_
from hub_server import HubServer, hub_env, run_client, state_digest
from safetensors.torch import load_file, save_file

import timm_ghost_cli as cli
from timm_ghost.errors import ConversionError
from timm_ghost.models_info import count_params
from timm_ghost.publish import HUB_FILES


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    """Convert runs forwards; one intra-op thread keeps them fast on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def source():
    """A randomised ghostnet_100 and its state dict."""
    model = randomize_(timm.create_model('ghostnet_100'), 21).eval()
    return model, model.state_dict()


def _authors_checkpoint(path, state_dict):
    """The authors' ghostnet_pytorch layout as saved from DataParallel with thop counters, wrapped in state_dict."""
    sd = {f'module.{k}': v for k, v in state_dict.items()}
    sd['module.conv_stem.total_ops'] = torch.zeros(1, dtype=torch.float64)
    sd['module.blocks.0.0.total_params'] = torch.zeros(1, dtype=torch.float64)
    torch.save({'state_dict': sd, 'epoch': 399}, path)
    return path


@pytest.fixture(scope='module')
def converted(tmp_path_factory, source):
    """``timm-ghost convert`` of an authors'-layout checkpoint; (exit code, folder, stdout)."""
    tmp = tmp_path_factory.mktemp('convert')
    src = _authors_checkpoint(tmp / 'ghostnet_1x.pth', source[1])
    out = tmp / 'ghostnet_100.test'
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = cli.main(['convert', str(src), str(out), '--model', 'ghostnet_100',
                         '--repo-id', 'org/ghostnet_100.test'])
    yield code, out, buf.getvalue()
    shutil.rmtree(tmp, ignore_errors=True)


def test_convert_writes_exactly_the_hub_files(converted, source):
    code, out, stdout = converted
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(HUB_FILES)
    assert [p.name for p in out.parent.iterdir() if p.name.startswith('.')] == []  # no leftovers beside it
    tensors = load_file(out / 'model.safetensors')
    assert not any('module.' in k or 'total_' in k for k in tensors)
    assert state_digest(tensors) == state_digest(source[1])
    assert 'max abs logit difference 0' in stdout


def test_converted_config_is_timms_format_and_loads_with_local_dir(converted, source):
    _, out, _ = converted
    config = json.loads((out / 'config.json').read_text())
    assert (config['architecture'], config['num_classes'], config['num_features']) == ('ghostnet_100', 1000, 960)
    # num_classes at the root only: transformers' TimmWrapper passes it besides **model_args (test_transformers.py)
    assert config.get('model_args') == HUB_MODEL_ARGS
    assert not {'hf_hub_id', 'file', 'url', 'tag'} & set(config['pretrained_cfg'])
    model = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(x), source[0](x))


def test_model_card_has_params_macs_accuracy_licence_citation(converted, source):
    _, out, stdout = converted
    card = (out / 'README.md').read_text()
    meta = yaml.safe_load(card.split('---\n')[1])
    assert meta['library_name'] == 'timm' and meta['license'] == 'apache-2.0' and 'ghostnet' in meta['tags']
    params = count_params(source[0])
    assert f'Params (M): {params / 1e6:.2f}' in card and f'{params / 1e6:.2f} M params' in stdout
    macs = stdout.split(' M MACs')[0].rsplit(', ', 1)[1]  # as measured by convert
    assert f'MACs (M): {macs} (at 224 x 224)' in card
    assert 130 < float(macs) < 150  # the paper: 141 M
    assert ('Reported in the paper for this architecture (ImageNet-1k, 224 px; not a measurement of these weights): '
            '5.2 M params, 141 M MACs, top-1 73.9, top-5 91.4') in card  # the paper's table, written out
    assert '@inproceedings{han2020ghostnet' in card
    assert "timm.create_model('hf-hub:org/ghostnet_100.test', pretrained=True)" in card
    assert "classifier = pipeline('image-classification', model='org/ghostnet_100.test')" in card  # transformers


def test_convert_timm_checkpoint_with_other_classes_and_measured_accuracy(tmp_path):
    reference = randomize_(builtin_model('ghostnet_050', num_classes=7), 22).eval()  # timm's own implementation
    save_file(reference.state_dict(), tmp_path / 'timm.safetensors')
    out = tmp_path / 'out'
    assert cli.main(['convert', str(tmp_path / 'timm.safetensors'), str(out), '--model', 'ghostnet_050',
                     '--top1', '61.5', '--dataset', 'imagenette', '--tag', 'imagenette']) == 0
    config = json.loads((out / 'config.json').read_text())
    assert (config['num_classes'], config['pretrained_cfg']['tag']) == (7, 'imagenette')
    card = (out / 'README.md').read_text()
    assert 'top-1: 61.5' in card and 'dataset: imagenette' in card and '- imagenette' in card
    model = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (model(x) - reference(x)).abs().max().item() < 1e-5


def test_converted_metadata_describes_these_weights_not_the_default_tag(tmp_path):
    """ghostnet_050's default tag is PaddleClas's ImageNet release (66.8 % top-1): none of it may describe a 10-class
    file of unknown origin; what the user says about the weights is what the folder says."""
    src = tmp_path / 'w.safetensors'
    save_file(randomize_(timm.create_model('ghostnet_050', num_classes=10), 25).state_dict(), src)
    assert cli.main(['convert', str(src), str(tmp_path / 'plain'), '--model', 'ghostnet_050']) == 0
    cfg = json.loads((tmp_path / 'plain' / 'config.json').read_text())['pretrained_cfg']
    assert cfg['description'] == ('w.safetensors, converted with timm-ghost convert; how these weights were trained is '
                                  'not recorded')
    assert cfg['notes'] == [] and 'tag' not in cfg and 'origin_url' not in cfg and cfg['license'] == 'apache-2.0'
    for name in ('config.json', 'README.md'):
        text = (tmp_path / 'plain' / name).read_text()
        assert 'PaddleClas' not in text and '66.8' not in text and 'paddle_in1k' not in text, name
    assert f'- **Weights:** {cfg["description"]}' in (tmp_path / 'plain' / 'README.md').read_text()

    assert cli.main(['convert', str(tmp_path / 'w.safetensors'), str(tmp_path / 'told'), '--model', 'ghostnet_050',
                     '--description', 'timm train.py, 30 epochs, SGD', '--dataset', 'digits', '--top1', '97.5',
                     '--top5', '99.9', '--tag', 'digits', '--license', 'mit']) == 0
    cfg = json.loads((tmp_path / 'told' / 'config.json').read_text())['pretrained_cfg']
    assert (cfg['description'], cfg['tag'], cfg['license']) == ('timm train.py, 30 epochs, SGD', 'digits', 'mit')
    assert cfg['notes'] == ['top-1 97.5, top-5 99.9 on digits (given to timm-ghost convert)']


def test_convert_keeps_the_input_size_and_labels_of_a_config_beside_the_file(tmp_path):
    """A file in a folder timm's save_for_hf wrote (as the demo does): its size, preprocessing and labels stay; its
    description does not (convert says what it knows)."""
    from timm.models import save_for_hf
    model = randomize_(timm.create_model('ghostnet_050', num_classes=3), 26).eval()
    model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, 32, 32), crop_pct=1.0)
    save_for_hf(model, tmp_path / 'trained', model_config=dict(label_names=['cat', 'dog', 'owl']),
                safe_serialization=True)
    assert cli.main(['convert', str(tmp_path / 'trained' / 'model.safetensors'), str(tmp_path / 'out'), '--model',
                     'ghostnet_050']) == 0
    config = json.loads((tmp_path / 'out' / 'config.json').read_text())
    assert config['label_names'] == ['cat', 'dog', 'owl']
    assert config['pretrained_cfg']['input_size'] == [3, 32, 32] and config['pretrained_cfg']['crop_pct'] == 1.0
    assert 'PaddleClas' not in json.dumps(config)
    assert 'MACs (M): ' in (card := (tmp_path / 'out' / 'README.md').read_text()) and '(at 32 x 32)' in card


def test_convert_timm_training_checkpoint_takes_ema_unless_told(tmp_path, source):
    other = randomize_(timm.create_model('ghostnet_100'), 24).state_dict()
    torch.save({'epoch': 3, 'arch': 'ghostnet_100', 'state_dict': other, 'state_dict_ema': source[1],
                'args': argparse.Namespace(lr=0.4)}, tmp_path / 'checkpoint-3.pth.tar')  # as timm's train.py saves
    src = str(tmp_path / 'checkpoint-3.pth.tar')
    assert cli.main(['convert', src, str(tmp_path / 'ema'), '--model', 'ghostnet_100']) == 0
    assert cli.main(['convert', src, str(tmp_path / 'raw'), '--model', 'ghostnet_100', '--no-ema']) == 0
    assert state_digest(load_file(tmp_path / 'ema' / 'model.safetensors')) == state_digest(source[1])
    assert state_digest(load_file(tmp_path / 'raw' / 'model.safetensors')) == state_digest(other)


def test_failed_convert_leaves_nothing(tmp_path):
    wide = randomize_(timm.create_model('ghostnet_130'), 23)
    torch.save(wide.state_dict(), tmp_path / 'g130.pth')
    code = cli.main(['convert', str(tmp_path / 'g130.pth'), str(tmp_path / 'out'), '--model', 'ghostnet_100'])
    assert code == 1
    (tmp_path / 'junk.pth').write_bytes(b'not a checkpoint')
    assert cli.main(['convert', str(tmp_path / 'junk.pth'), str(tmp_path / 'out'), '--model', 'ghostnet_100']) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ['g130.pth', 'junk.pth']


def test_convert_errors_are_one_clear_line(tmp_path, capsys):
    wide = randomize_(timm.create_model('ghostnet_130'), 23)
    torch.save(wide.state_dict(), tmp_path / 'g130.pth')
    cli.main(['convert', str(tmp_path / 'g130.pth'), str(tmp_path / 'out'), '--model', 'ghostnet_100'])
    err = capsys.readouterr().err
    assert err.startswith('timm-ghost convert: error: checkpoint does not fit ghostnet_100')
    assert 'bn1.weight: checkpoint (20,) vs model (16,)' in err
    (tmp_path / 'junk.pth').write_bytes(b'not a checkpoint')
    cli.main(['convert', str(tmp_path / 'junk.pth'), str(tmp_path / 'out'), '--model', 'ghostnet_100'])
    assert f'src {tmp_path / "junk.pth"}: not a readable checkpoint' in capsys.readouterr().err


def test_failed_verification_leaves_no_folder(tmp_path, source, monkeypatch):
    import timm_ghost.publish as publish
    monkeypatch.setattr(publish, '_VERIFY_TOLERANCE', -1.0)  # every comparison fails
    torch.save(source[1], tmp_path / 'src.pth')
    with pytest.raises(ConversionError, match='verification failed'):
        publish.convert_checkpoint(tmp_path / 'src.pth', tmp_path / 'out', 'ghostnet_100')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['src.pth']


def test_convert_keeps_an_existing_folder_unless_overwrite(tmp_path, converted, capsys):
    _, out, _ = converted
    target = tmp_path / 'out'
    target.mkdir()
    (target / 'keep.txt').write_text('mine')
    src = _authors_checkpoint(tmp_path / 'src.pth', load_file(out / 'model.safetensors'))
    assert cli.main(['convert', str(src), str(target), '--model', 'ghostnet_100']) == 1
    assert capsys.readouterr().err == (f'timm-ghost convert: error: out {target} exists and is not empty '
                                       f'(pass --overwrite to replace it)\n')
    assert [p.name for p in target.iterdir()] == ['keep.txt']
    assert cli.main(['convert', str(src), str(target), '--model', 'ghostnet_100', '--overwrite']) == 0
    assert sorted(p.name for p in target.iterdir()) == sorted(HUB_FILES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out', 'src.pth']


def test_push_dry_run_validates_the_folder(converted, tmp_path, capsys):
    _, out, _ = converted
    assert cli.main(['push', str(out), 'org/ghostnet_100.test', '--dry-run']) == 0
    assert 'nothing sent' in capsys.readouterr().out
    bad = tmp_path / 'bad'
    shutil.copytree(out, bad)
    (bad / 'pytorch_model.bin').write_bytes(b'')
    assert cli.main(['push', str(bad), 'org/x', '--dry-run']) == 1
    assert 'holds pickle files (pytorch_model.bin)' in capsys.readouterr().err
    (bad / 'pytorch_model.bin').unlink()
    (bad / 'README.md').unlink()
    assert cli.main(['push', str(bad), 'org/x', '--dry-run']) == 1
    assert 'lacks README.md' in capsys.readouterr().err
    shutil.copy(out / 'README.md', bad / 'README.md')
    config = json.loads((bad / 'config.json').read_text())
    config['architecture'] = 'resnet50'
    (bad / 'config.json').write_text(json.dumps(config))
    assert cli.main(['push', str(bad), 'org/x', '--dry-run']) == 1
    assert "architecture must be one of ghostnet_050, ghostnet_100, ghostnet_130, got 'resnet50'" in \
        capsys.readouterr().err
    assert cli.main(['push', str(out), 'not a repo id', '--dry-run']) == 1
    assert "repo_id 'not a repo id' is not a Hub repository id" in capsys.readouterr().err



def test_push_refuses_num_classes_in_model_args(converted, tmp_path, capsys):
    """A folder timm's save_for_hf wrote as is (num_classes in model_args, which transformers cannot load) is refused
    with the key, the file and the fix; the fixed folder passes."""
    _, out, _ = converted
    old = tmp_path / 'old'
    shutil.copytree(out, old)
    config = json.loads((old / 'config.json').read_text())
    config.setdefault('model_args', {})['num_classes'] = config['num_classes']  # model_args: timm >= 1.0.31
    (old / 'config.json').write_text(json.dumps(config))
    assert cli.main(['push', str(old), 'org/x', '--dry-run']) == 1
    assert capsys.readouterr().err == (
        f"timm-ghost push: error: {old}/config.json: model_args holds num_classes, which transformers' TimmWrapper "
        f"passes itself (TypeError: got multiple values for keyword argument 'num_classes'); delete it from "
        f"model_args (the root num_classes stays) or write the folder again with `timm-ghost convert`\n")
    del config['model_args']['num_classes']
    (old / 'config.json').write_text(json.dumps(config))
    assert cli.main(['push', str(old), 'org/x', '--dry-run']) == 0


def test_every_folder_is_written_through_save_hub_folder():
    """One place writes config.json: no module but publish.py calls timm's save_for_hf, through _compat's shim of
    its newer arguments (the demo and convert go through publish.save_hub_folder)."""
    import timm_ghost
    root = Path(timm_ghost.__file__).parent
    callers = sorted(str(p.relative_to(root)) for p in root.rglob('*.py') if 'save_for_hf(' in p.read_text())
    assert callers == ['_compat.py', 'publish.py']
    assert (root / 'publish.py').read_text().count('save_for_hf(model') == 1
    assert (root / '_compat.py').read_text().count('timm_save_for_hf(model') == 2  # with and without data_config

def test_push_uploads_to_the_hub_and_loads_back(converted, source, tmp_path):
    _, out, _ = converted
    card_edit = tmp_path / 'edited'
    shutil.copytree(out, card_edit)
    with open(card_edit / 'README.md', 'a') as f:
        f.write('\nRevised card.\n')
    with HubServer() as hub:
        run = run_client([
            {'id': 'push-no-token', 'cli': ['push', str(out), 'org/ghostnet-test']},
            {'id': 'token', 'env': {'HF_TOKEN': 'hf_loopback'}},
            {'id': 'push', 'cli': ['push', str(out), 'org/ghostnet-test']},
            {'id': 'push-same', 'cli': ['push', str(out), 'org/ghostnet-test']},  # nothing changed: no new commit
            {'id': 'push-dev', 'cli': ['push', str(card_edit), 'org/ghostnet-test', '--revision', 'dev']},
            {'id': 'push-private', 'cli': ['push', str(out), 'org/ghostnet-private', '--private']},
            {'id': 'load', 'model': 'hf-hub:org/ghostnet-test', 'kwargs': {'pretrained': True}},
            {'id': 'load-dev', 'model': 'hf-hub:org/ghostnet-test@dev', 'kwargs': {'pretrained': True}},
        ], hub_env(hub.endpoint, tmp_path / 'hf_home'))
        # no token: one line before any request, not the Hub's 401 (nor a traceback)
        assert run['push-no-token']['code'] == 1
        assert run.stderr['push-no-token'] == ('timm-ghost push: error: push to org/ghostnet-test: no Hugging Face '
                                               'token; set HF_TOKEN or run `hf auth login` with a write token\n')
        for action in ('push', 'push-same', 'push-dev', 'push-private'):
            assert run[action]["ok"], (run[action], run.raw_stderr[-2000:])
        assert (hub.repos['org/ghostnet-test'].private, hub.repos['org/ghostnet-private'].private) == (False, True)
        assert f'uploaded: {hub.endpoint}/org/ghostnet-test/commit/' in run['push']['stdout']
        main, dev = hub.files('org/ghostnet-test', 'main'), hub.files('org/ghostnet-test', 'dev')
        assert {n: main[n] for n in HUB_FILES} == {n: (out / n).read_bytes() for n in HUB_FILES}
        assert dev['README.md'].endswith(b'Revised card.\n') and dev['model.safetensors'] == main['model.safetensors']
        assert len(hub.seen('PUT', '/cdn/upload/')) == 1  # the weights went up once, through the LFS batch API
        assert len(hub.seen('POST', '/api/models/org/ghostnet-test/commit/')) == 2
        # one per push with a token (push, push-same, push-dev: 409 exists, push-private); none without a token
        assert [r.status for r in hub.seen('POST', '/api/repos/create')] == [200, 409, 409, 200]
        assert run['load']['digest'] == run['load-dev']['digest'] == state_digest(source[1])


def test_push_without_network_is_one_line(converted, tmp_path):
    """A token but no Hub to reach (nothing listens at the endpoint): one line naming the cause, no traceback."""
    import socket
    with socket.socket() as sock:  # a port nothing listens on: bound, then closed
        sock.bind(('127.0.0.1', 0))
        endpoint = f'http://127.0.0.1:{sock.getsockname()[1]}'
    _, out, _ = converted
    run = run_client([{'id': 'push', 'cli': ['push', str(out), 'org/offline']}],
                     hub_env(endpoint, tmp_path / 'hf_home', HF_TOKEN='hf_loopback'))
    assert run['push']['code'] == 1
    assert run.stderr['push'] == (f'timm-ghost push: error: upload to org/offline failed: could not reach the Hub at '
                                  f'{endpoint} (ConnectionRefusedError: Connection refused); nothing was uploaded. '
                                  f'Check the connection and HF_ENDPOINT\n')
