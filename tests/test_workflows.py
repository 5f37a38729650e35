"""The commands: ``data`` (digits ImageFolder), ``recipe``, ``predict``, ``info`` and ``demo`` (reduced and full)."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import timm
import torch
import yaml
from helpers import HUB_MODEL_ARGS
from PIL import Image
from safetensors.torch import save_file

from timm_ghost import WIDTHS
from timm_ghost.data import write_digits_imagefolder
from timm_ghost.predict import load_model, predict_topk
from timm_ghost.recipes import recipe_command, recipe_path
from timm_ghost.testing import randomize_
from timm_ghost_cli import main

sklearn_datasets = pytest.importorskip('sklearn.datasets', reason='the digits data set ships with scikit-learn')


def _files(root: Path) -> list:
    return sorted(str(p.relative_to(root)) for p in root.rglob('*.png'))


# ------------------------------------------------------------------------------------------------ data
@pytest.fixture(scope='module')
def digits8(tmp_path_factory) -> Iterator[Path]:
    """The digits at their native 8x8, written once for the module."""
    out = tmp_path_factory.mktemp('digits') / 'digits8'
    write_digits_imagefolder(out, img_size=8)
    yield out
    shutil.rmtree(out)  # 1,797 files


def test_digits_folder_layout_and_counts(digits8):
    train, val = _files(digits8 / 'train'), _files(digits8 / 'validation')
    assert (len(train), len(val)) == (1437, 360)
    assert sorted(p.name for p in (digits8 / 'train').iterdir()) == [str(c) for c in range(10)]
    assert sorted(p.name for p in (digits8 / 'validation').iterdir()) == [str(c) for c in range(10)]
    # stratified: every class keeps its share (178..183 images per class, 20 % of them validation, +-1)
    for c in range(10):
        n_val = len(list((digits8 / 'validation' / str(c)).iterdir()))
        n_all = n_val + len(list((digits8 / 'train' / str(c)).iterdir()))
        assert abs(n_val - 0.2 * n_all) <= 1, (c, n_val, n_all)
    # no image in both splits: the file name is the sample index in load_digits()
    assert not {Path(p).name for p in train} & {Path(p).name for p in val}


def test_digits_pixels_trace_back_to_scikit_learn(digits8):
    digits = sklearn_datasets.load_digits()
    for rel in _files(digits8 / 'validation')[:50]:
        label, name = Path(rel).parts
        idx = int(Path(name).stem)
        img = np.asarray(Image.open(digits8 / 'validation' / rel))
        assert img.shape == (8, 8) and img.dtype == np.uint8
        assert int(label) == digits.target[idx]
        np.testing.assert_array_equal(img, np.rint(digits.images[idx] * 255 / 16).astype(np.uint8))


def test_digits_split_is_deterministic_and_seeded(tmp_path, digits8):
    write_digits_imagefolder(tmp_path / 'same', img_size=8, seed=0)
    write_digits_imagefolder(tmp_path / 'other', img_size=8, seed=1)
    assert _files(tmp_path / 'same') == _files(digits8)
    assert _files(tmp_path / 'other') != _files(digits8)
    assert len(_files(tmp_path / 'other' / 'validation')) == 360


def test_digits_size_option(tmp_path):
    folder = write_digits_imagefolder(tmp_path / 'd', img_size=24)
    img = Image.open(next((tmp_path / 'd' / 'train' / '7').iterdir()))
    assert img.size == (24, 24) and img.mode == 'L'
    assert folder.counts == {'train': 1437, 'validation': 360} and folder.num_classes == 10


def test_digits_refuses_non_empty_folder_unless_forced(tmp_path):
    out = tmp_path / 'd'
    out.mkdir()
    (out / 'keep.txt').write_text('mine')
    with pytest.raises(FileExistsError, match='not empty.*--force'):
        write_digits_imagefolder(out, img_size=8)
    assert [p.name for p in out.iterdir()] == ['keep.txt']
    write_digits_imagefolder(out, img_size=8, force=True)
    assert sorted(p.name for p in out.iterdir()) == ['train', 'validation']


def test_digits_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []

    def failing_save(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 100:
            raise OSError('disk full')
        return original(self, *args, **kwargs)

    original = Image.Image.save
    monkeypatch.setattr(Image.Image, 'save', failing_save)
    with pytest.raises(OSError, match='disk full'):
        write_digits_imagefolder(tmp_path / 'd', img_size=8)
    assert len(calls) == 101
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a partial temporary one


@pytest.mark.parametrize('kwargs, match', [
    (dict(img_size=4), 'img_size must be an integer >= 8'),
    (dict(val_fraction=1.0), r'val_fraction must be in \(0, 1\)'),
])
def test_digits_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        write_digits_imagefolder(tmp_path / 'd', **kwargs)
    assert not (tmp_path / 'd').exists()


def test_cli_data(tmp_path, capsys):
    assert main(['data', 'digits', str(tmp_path / 'd'), '--size', '8']) == 0
    assert 'wrote 1437 train / 360 validation images (10 classes, 8x8 px)' in capsys.readouterr().out
    assert main(['data', 'digits', str(tmp_path / 'd'), '--size', '8']) == 1
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and err.startswith('timm-ghost data: error: ') and '--force' in err


# ------------------------------------------------------------------------------------------------ recipes
@pytest.mark.parametrize('name', list(WIDTHS))
def test_recipe_is_the_papers_imagenet_setup(name):
    cfg = yaml.safe_load(recipe_path(name).read_text())
    assert cfg['model'] == name and cfg['num_classes'] == 1000 and cfg['img_size'] == 224
    assert 'timm_ghost' in cfg['device_modules']
    # SGD momentum 0.9, lr 0.4 at a global batch of 1024 (8 x 128), scaled linearly for other batch sizes
    assert (cfg['opt'], cfg['momentum']) == ('sgd', 0.9)
    assert (cfg['lr_base'], cfg['lr_base_size'], cfg['lr_base_scale']) == (0.4, 1024, 'linear')
    assert 'lr' not in cfg and cfg['batch_size'] * 8 == 1024
    assert cfg['weight_decay'] == pytest.approx(4e-5)
    # 5 warm-up epochs, cosine, 400 epochs; dropout 0.2, label smoothing 0.1
    assert (cfg['sched'], cfg['epochs'], cfg['warmup_epochs']) == ('cosine', 400, 5)
    assert (cfg['drop'], cfg['smoothing']) == (0.2, 0.1)
    # RRC 0.08-1, flip, colour jitter 0.4; eval 224 / 256 bicubic
    assert cfg['scale'] == [0.08, 1.0] and cfg['hflip'] == 0.5 and cfg['color_jitter'] == 0.4
    assert (cfg['interpolation'], cfg['crop_pct']) == ('bicubic', 0.875)
    # the recipe's eval settings are those of the authors' weights (ghostnet_100.in1k); the PaddleClas weights of the
    # other tags were evaluated with bilinear resizing and keep that in their own cfg
    pretrained_cfg = timm.create_model('ghostnet_100.in1k').pretrained_cfg
    assert (pretrained_cfg['interpolation'], pretrained_cfg['crop_pct']) == ('bicubic', 0.875)


def test_recipes_differ_only_in_the_model():
    texts = {name: recipe_path(name).read_text().replace(name, 'MODEL') for name in WIDTHS}
    widths = {name: f'{w}x' for name, w in WIDTHS.items()}
    assert len({t.replace(widths[n], 'W') for n, t in texts.items()}) == 1


def test_cli_recipe(capsys):
    assert main(['recipe', 'ghostnet_100', '--data-dir', '/data/imagenet']) == 0
    path, command = capsys.readouterr().out.strip().splitlines()
    assert Path(path) == recipe_path('ghostnet_100') and Path(path).is_file()
    assert command == (f'torchrun --nproc_per_node=8 train.py -c {path} --device-modules timm_ghost '
                       f'--data-dir /data/imagenet')
    assert recipe_command('ghostnet_050', nproc=1).startswith('python train.py -c ')


def test_cli_recipe_unknown_model(capsys):
    with pytest.raises(SystemExit) as e:
        main(['recipe', 'ghostnet_200'])
    assert e.value.code == 2 and "invalid choice: 'ghostnet_200'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ predict
@pytest.fixture(scope='module')
def image_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp('img') / 'cat.png'
    gen = np.random.default_rng(0)
    Image.fromarray(gen.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope='module')
def random_weights(tmp_path_factory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp('w') / 'ghostnet_100_random.safetensors'
    model = randomize_(timm.create_model('ghostnet_100'), seed=3)
    save_file(model.state_dict(), path)
    yield path
    shutil.rmtree(path.parent, ignore_errors=True)


def _expected_top5(name: str, weights: Path, image: Path):
    from timm.data import create_transform, resolve_data_config
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(weights))).eval()
    x = create_transform(**resolve_data_config(model=model))(Image.open(image).convert('RGB')).unsqueeze(0)
    with torch.no_grad():
        return model(x).softmax(-1)[0].topk(5)


def test_predict_top5_with_imagenet_names(capsys, image_file, random_weights):
    from timm.data import ImageNetInfo
    assert main(['predict', str(image_file), '--weights', str(random_weights)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0] == f'ghostnet_100 ({random_weights}, 224x224 px) on {image_file}:'
    assert len(out) == 6
    expected = _expected_top5('ghostnet_100', random_weights, image_file)
    info = ImageNetInfo()
    for line, p, i in zip(out[1:], expected.values, expected.indices):
        synset, description = info.index_to_label_name(int(i)), info.index_to_description(int(i))
        assert line.endswith(f'{synset}  {description}'), line
        assert f'{100 * float(p):6.2f} %' in line


def test_predict_compiled_over_several_images(capsys, image_file, random_weights):
    """``--compile``: the inference model (folded, inductor) gives the eval model's top 5 for each image, and says
    what it compiled."""
    assert main(['predict', str(image_file), str(image_file), '--weights', str(random_weights), '--top-k', '2',
                 '--compile']) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2 * 3 + 1 and out[0] == out[3] == (
        f'ghostnet_100 ({random_weights}, 224x224 px) on {image_file}:')
    expected = _expected_top5('ghostnet_100', random_weights, image_file)
    for line, p in zip(out[1:3], expected.values):
        assert f'{100 * float(p):6.2f} %' in line
    assert out[1:3] == out[4:6]
    assert re.fullmatch(r'inference model: backend: inductor; compiled 1x3x224x224 in [\d.]+ s', out[-1]), out[-1]


def test_predict_topk_numbers(image_file, random_weights):
    model, _ = load_model('ghostnet_100', str(random_weights))
    rows = predict_topk(model, str(image_file), k=3)
    expected = _expected_top5('ghostnet_100', random_weights, image_file)
    assert [r['index'] for r in rows] == expected.indices[:3].tolist()
    assert max(abs(r['prob'] - float(p)) for r, p in zip(rows, expected.values)) < 1e-6
    assert rows[0]['prob'] >= rows[1]['prob'] >= rows[2]['prob']


def test_predict_without_reachable_weights_says_how_to_get_them(capsys, image_file, tmp_path, monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(tmp_path / 'empty-cache'))
    assert main(['predict', str(image_file)]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert captured.out == '' and err.count('\n') == 0
    assert err.startswith('timm-ghost predict: error: no weights for ghostnet_100: ')
    assert 'HF_HUB_OFFLINE' in err and '--weights' in err and str(tmp_path / 'empty-cache') in err
    assert 'timm/ghostnet_100' in err


def test_predict_variant_offline_without_cached_weights(capsys, image_file, tmp_path, monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'empty-torch-home'))  # PaddleClas weights are cached there
    assert main(['predict', str(image_file), '--model', 'ghostnet_050']) == 1
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and err.startswith('timm-ghost predict: error: no weights for ghostnet_050: ')
    assert 'GhostNet_x0_5_pretrained.pdparams is not in the cache' in err and 'HF_HUB_OFFLINE' in err
    # the way to get them names the PaddleClas download and its cache, not the Hub
    folder = tmp_path / 'empty-torch-home' / 'hub' / 'checkpoints' / 'timm_ghost_paddle'
    assert 'load it once with a network connection (from https://' in err and f'cached in {folder}' in err
    assert 'Hugging Face Hub' not in err and '--weights' in err


def test_predict_bad_inputs(capsys, image_file, random_weights, tmp_path):
    assert main(['predict', str(tmp_path / 'nope.png'), '--weights', str(random_weights)]) == 1
    assert capsys.readouterr().err.strip() == f'timm-ghost predict: error: IMAGE {tmp_path / "nope.png"}: no such file'
    # a folder is not an image
    assert main(['predict', str(tmp_path), '--weights', str(random_weights)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f'timm-ghost predict: error: IMAGE {tmp_path} is a folder; give image files'
    assert main(['predict', str(image_file), '--weights', str(tmp_path / 'nope.safetensors')]) == 1
    assert 'no such file or folder' in capsys.readouterr().err
    not_image = tmp_path / 'notes.png'
    not_image.write_text('hello')
    assert main(['predict', str(not_image), '--weights', str(random_weights)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and 'not an image file' in err
    # weights of another width: one line naming the mismatch
    assert main(['predict', str(image_file), '--model', 'ghostnet_130', '--weights', str(random_weights)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and 'does not fit ghostnet_130' in err


def test_predict_hub_folder_uses_its_label_names(capsys, tmp_path, image_file):
    from timm.models import save_for_hf
    model = randomize_(timm.create_model('ghostnet_050', num_classes=3), seed=1)
    save_for_hf(model, tmp_path / 'hub', model_config=dict(label_names=['cat', 'dog', 'owl']), safe_serialization=True)
    assert main(['predict', str(image_file), '--weights', str(tmp_path / 'hub'), '--model', 'ghostnet_100']) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith('ghostnet_050 (local-dir:') and len(out) == 4  # top-5 capped at 3 classes
    assert sorted(line.split()[-1] for line in out[1:]) == ['cat', 'dog', 'owl']


def _saved_folder(root: Path, num_classes: int = 3, img_size: int = 32) -> Path:
    """A Hub-ready folder (timm's save_for_hf) of a ghostnet_050 with its own head, input size and label names."""
    from timm.models import save_for_hf
    model = randomize_(timm.create_model('ghostnet_050', num_classes=num_classes), seed=1)
    labels = ['cat', 'dog', 'owl', 'elk', 'yak'][:num_classes]
    cfg = dict(model.pretrained_cfg, input_size=(3, img_size, img_size), crop_pct=1.0)
    model.pretrained_cfg = cfg
    save_for_hf(model, root, model_config=dict(label_names=labels), safe_serialization=True)
    return root


def test_predict_weights_file_brings_its_head_and_input_size(capsys, tmp_path, image_file):
    """The file inside a saved folder (as `timm-ghost demo` writes it): its 3-class head and 32 px from config.json,
    the same numbers as loading the whole folder."""
    folder = _saved_folder(tmp_path / 'hub')
    by_file, _ = load_model('ghostnet_100', str(folder / 'model.safetensors'))
    by_folder, _ = load_model('ghostnet_100', str(folder))
    assert by_file.num_classes == 3 and tuple(by_file.pretrained_cfg['input_size']) == (3, 32, 32)
    assert by_file.pretrained_cfg['architecture'] == 'ghostnet_050'
    rows_file, rows_folder = predict_topk(by_file, str(image_file)), predict_topk(by_folder, str(image_file))
    assert [r['label'] for r in rows_file] == [r['label'] for r in rows_folder]
    assert max(abs(a['prob'] - b['prob']) for a, b in zip(rows_file, rows_folder)) == 0.0
    assert main(['predict', str(image_file), '--weights', str(folder / 'model.safetensors')]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0] == f'ghostnet_050 ({folder / "model.safetensors"}, 32x32 px) on {image_file}:' and len(out) == 4


def test_predict_bare_file_takes_the_head_from_its_tensors(tmp_path, image_file):
    model = randomize_(timm.create_model('ghostnet_050', num_classes=10), seed=2).eval()
    save_file(model.state_dict(), tmp_path / 'w.safetensors')
    torch.save(model.state_dict(), tmp_path / 'w.pth')
    for name in ('w.safetensors', 'w.pth'):
        loaded, _ = load_model('ghostnet_050', str(tmp_path / name))
        assert loaded.num_classes == 10
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            assert (loaded(x) - model(x)).abs().max().item() == 0.0  # the trained head, not a fresh random one


def test_predict_bare_file_reports_no_default_tag_provenance(tmp_path):
    model = randomize_(timm.create_model('ghostnet_050', num_classes=10), seed=2)
    save_file(model.state_dict(), tmp_path / 'w.safetensors')
    loaded, _ = load_model('ghostnet_050', str(tmp_path / 'w.safetensors'))
    cfg = loaded.pretrained_cfg
    assert cfg['file'] == str(tmp_path / 'w.safetensors') and cfg['num_classes'] == 10
    assert [cfg.get(k) for k in ('tag', 'description', 'notes', 'origin_url', 'license')] == [None] * 5
    assert timm.create_model('ghostnet_050').pretrained_cfg['tag'] == 'paddle_in1k'  # what it would otherwise say


def _train_py_checkpoint(path: Path, img_size: int, **args) -> torch.nn.Module:
    """A checkpoint as timm's train.py saves it (args Namespace, state_dict and state_dict_ema), 10 classes."""
    import argparse
    model = randomize_(timm.create_model('ghostnet_050', num_classes=10), seed=4).eval()
    train_args = dict(model='ghostnet_050', img_size=img_size, input_size=None, crop_pct=None, mean=None, std=None,
                      interpolation='', num_classes=10, lr=0.1)
    train_args.update(args)
    torch.save({'epoch': 9, 'arch': 'ghostnet_050', 'state_dict': model.state_dict(),
                'state_dict_ema': model.state_dict(), 'args': argparse.Namespace(**train_args)}, path)
    return model


def test_predict_train_py_checkpoint_runs_at_its_training_size(capsys, tmp_path, image_file):
    trained = _train_py_checkpoint(tmp_path / 'model_best.pth.tar', img_size=32, crop_pct=1.0)
    if not hasattr(torch.serialization, 'safe_globals'):  # torch < 2.5: weights_only cannot admit train.py's Namespace
        assert main(['predict', str(image_file), '--weights', str(tmp_path / 'model_best.pth.tar')]) == 1
        assert 'a torch checkpoint that holds Python objects besides tensors' in capsys.readouterr().err
        return
    # --model says ghostnet_100 (the default): the checkpoint's args name the architecture it was trained as
    model, _ = load_model('ghostnet_100', str(tmp_path / 'model_best.pth.tar'))
    cfg = model.pretrained_cfg
    assert cfg['architecture'] == 'ghostnet_050' and model.num_classes == 10
    assert tuple(cfg['input_size']) == (3, 32, 32) and cfg['crop_pct'] == 1.0
    assert cfg['interpolation'] == timm.create_model('ghostnet_050').pretrained_cfg['interpolation']  # not given
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert (model(x) - trained(x)).abs().max().item() == 0.0
    assert main(['predict', str(image_file), '--weights', str(tmp_path / 'model_best.pth.tar')]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f'ghostnet_050 ({tmp_path / "model_best.pth.tar"}, 32x32 px) on {image_file}:'


def test_predict_img_size_option(capsys, image_file, random_weights):
    from timm.data import create_transform, resolve_data_config
    assert main(['predict', str(image_file), '--weights', str(random_weights), '--img-size', '48']) == 0
    assert capsys.readouterr().out.splitlines()[0] == f'ghostnet_100 ({random_weights}, 48x48 px) on {image_file}:'
    model, _ = load_model('ghostnet_100', str(random_weights))
    rows = predict_topk(model, str(image_file), k=5, img_size=96)
    config = resolve_data_config({'input_size': (3, 96, 96)}, model=model)
    x = create_transform(**config)(Image.open(image_file).convert('RGB')).unsqueeze(0)
    assert x.shape == (1, 3, 96, 96)
    with torch.no_grad():
        expected = model(x).softmax(-1)[0].topk(5)
    assert [r['index'] for r in rows] == expected.indices.tolist()
    assert main(['predict', str(image_file), '--weights', str(random_weights), '--img-size', '8']) == 1
    assert capsys.readouterr().err == ('timm-ghost predict: error: img_size (--img-size) must be >= 16 (GhostNet '
                                       'downsamples by 32), got 8\n')


def test_predict_headless_weights_are_refused(capsys, tmp_path, image_file):
    model = timm.create_model('ghostnet_050', num_classes=0)
    save_file(model.state_dict(), tmp_path / 'features.safetensors')
    assert main(['predict', str(image_file), '--model', 'ghostnet_050', '--weights',
                 str(tmp_path / 'features.safetensors')]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and 'has no classifier (classifier.weight)' in err


def test_predict_model_and_tag_errors(capsys, image_file, random_weights):
    assert main(['predict', str(image_file), '--model', 'ghostnet_200']) == 1
    assert "--model must be one of ghostnet_050, ghostnet_100, ghostnet_130 or an hf-hub: / local-dir: name, got " \
           "'ghostnet_200'" in capsys.readouterr().err
    assert main(['predict', str(image_file), '--tag', 'nope']) == 1
    assert "--tag 'nope': ghostnet_100 has pretrained tags ghostnet_100.in1k" in capsys.readouterr().err
    assert main(['predict', str(image_file), '--tag', 'in1k', '--weights', str(random_weights)]) == 1
    assert 'cannot be combined with --weights' in capsys.readouterr().err


def test_predict_local_dir_model_name(capsys, tmp_path, image_file):
    folder = _saved_folder(tmp_path / 'hub', num_classes=5)
    assert main(['predict', str(image_file), '--model', f'local-dir:{folder}', '--top-k', '2']) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0] == f'ghostnet_050 (local-dir:{folder}, 32x32 px) on {image_file}:' and len(out) == 3


# ------------------------------------------------------------------------------------------------ info
def test_cli_info_table(capsys):
    from timm_ghost.models_info import count_macs, count_params
    assert main(['info']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == 'model width params (M) MACs (M) paper top-1 pretrained tags'.split()
    rows = {line.split()[0]: line.split() for line in lines[2:5]}
    assert list(rows) == list(WIDTHS)
    for name, width in WIDTHS.items():
        model = timm.create_model(name)
        cells = rows[name]
        assert float(cells[1]) == width
        assert cells[2] == f'{count_params(model) / 1e6:.2f}' and cells[3] == f'{count_macs(model) / 1e6:.1f}'
        tags = timm.list_pretrained(f'{name}.*')
        assert ' '.join(cells[5:]) == (', '.join(tags) or 'none')
    assert rows['ghostnet_100'][2] == '5.18' and rows['ghostnet_100'][3] == '141.2'


# ------------------------------------------------------------------------------------------------ cli errors
def test_cli_library_errors_are_one_line_and_bugs_keep_their_traceback(capsys, image_file, monkeypatch):
    import timm_ghost.predict as predict
    from timm_ghost.errors import PretrainedWeightsError

    def unavailable(*args, **kwargs):
        raise PretrainedWeightsError('no weights for ghostnet_100: the cache is empty\nsecond line')

    monkeypatch.setattr(predict, 'load_model', unavailable)
    assert main(['predict', str(image_file)]) == 1
    assert capsys.readouterr().err == ('timm-ghost predict: error: no weights for ghostnet_100: the cache is empty '
                                       'second line\n')

    def bug(*args, **kwargs):
        raise RuntimeError('index out of range in a helper')

    monkeypatch.setattr(predict, 'load_model', bug)
    with pytest.raises(RuntimeError, match='index out of range in a helper'):
        main(['predict', str(image_file)])


# ------------------------------------------------------------------------------------------------ help
@pytest.mark.parametrize('command', ['demo', 'data', 'recipe', 'predict', 'info'])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, '--help'])
    assert e.value.code == 0
    assert f'usage: timm-ghost {command}' in capsys.readouterr().out


_IMPORTS_AFTER = '''
import sys
from timm_ghost_cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
heavy = sorted(m for m in ('torch', 'timm', 'timm_ghost', 'numpy') if m in sys.modules)
print('heavy:', ','.join(heavy), 'code:', code)
'''


@pytest.mark.parametrize('argv, code', [(['--help'], 0), ([], 2), (['-h'], 0), (['nosuch'], 2)])
def test_top_level_help_imports_no_torch(argv, code):
    """`timm-ghost --help` (and no command, or an unknown one) answers from the entry point's own declarations:
    torch, timm and the timm_ghost package are never imported (they take seconds)."""
    import subprocess
    import sys
    res = subprocess.run([sys.executable, '-c', _IMPORTS_AFTER, *argv], capture_output=True, text=True, timeout=60)
    assert res.stdout.splitlines()[-1] == f'heavy:  code: {code}', res.stdout + res.stderr
    if argv[:1] == ['nosuch']:
        assert "timm-ghost: error: argument COMMAND: invalid choice: 'nosuch'" in res.stderr
    else:
        assert res.stdout.startswith('usage: timm-ghost [-h] COMMAND ...') and 'export' in res.stdout


def test_entry_point_is_the_light_one_and_lists_every_command_as_registered():
    import re

    import timm_ghost_cli
    from timm_ghost_cli import build_parser
    pyproject = (Path(__file__).resolve().parents[1] / 'pyproject.toml').read_text()
    scripts = pyproject.split('[project.scripts]\n', 1)[1].split('\n[', 1)[0]
    assert re.findall(r'^timm-ghost = "(.*?)"', scripts, re.M) == ['timm_ghost_cli:main']
    # the light table names each command with the help its module's register_cli gives: the same --help either way
    assert timm_ghost_cli.light_parser().format_help() == build_parser().format_help()


# ------------------------------------------------------------------------------------------------ demo
def test_demo_reduced(tmp_path, capsys):
    """The whole demo at 16 px for two epochs: files, reload, fusion, the table, and that it learns (chance: 10 %)."""
    out = tmp_path / 'demo'
    assert main(['demo', '--out', str(out), '--epochs', '2', '--img-size', '16', '--no-progress']) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ['data', 'model', 'results.json']
    assert sorted(p.name for p in (out / 'model').iterdir()) == ['config.json', 'model.safetensors']
    assert not list(tmp_path.glob('.demo.*'))  # no temporary folder left beside it
    r = json.loads((out / 'results.json').read_text())
    assert (r['num_train'], r['num_val'], r['num_classes']) == (1437, 360, 10)
    assert len(r['history']) == 2 and r['config']['img_size'] == 16
    assert r['val_top1'] >= 50.0, r['history']  # two epochs at 16 px reach 75 % (seeded, one thread); chance is 10 %
    assert r['reloaded_top1'] == r['val_top1']  # reload reproduces the logits exactly (checked inside too)
    assert r['same_argmax'] == 360 and r['max_abs_logit_diff'] < 1e-3
    assert r['fused_top1'] == r['val_top1']
    assert r['fused_params'] < r['params']
    config = json.loads((out / 'model' / 'config.json').read_text())
    assert config['architecture'] == 'ghostnet_050' and config['num_classes'] == 10
    assert config['label_names'] == [str(i) for i in range(10)]
    assert config.get('model_args') == HUB_MODEL_ARGS  # no num_classes: transformers loads it
    assert config['pretrained_cfg']['input_size'] == [3, 16, 16]
    # the folder describes these weights: what trained them, on what, with which result; nothing of ghostnet_050's
    # default tag (PaddleClas's ImageNet release, its 66.8 % top-1)
    cfg = config['pretrained_cfg']
    assert 'tag' not in cfg and 'origin_url' not in cfg and 'license' not in cfg
    assert cfg['description'] == ("trained from scratch by timm-ghost demo on scikit-learn's handwritten digits (1437 "
                                  'training images, 10 classes, 16 px): 2 epochs, sgd lr 0.2, cosine schedule, label '
                                  'smoothing 0.1, drop path 0.05, seed 0')
    assert cfg['notes'] == [f'validation top-1 {r["val_top1"]:.2f} % on the 360 held-out digits (measured by the demo)']
    text = (out / 'model' / 'config.json').read_text()
    assert 'PaddleClas' not in text and 'ImageNet' not in text and '66.8' not in text
    for row in ('val top-1, trained', 'val top-1, reloaded (local-dir:)', 'val top-1, BN-fused', 'fused vs unfused',
                'CPU latency, batch 64', 'Hub-ready folder'):
        assert f'| {row}' in printed
    assert '360/360 same top-1' in printed
    # the saved folder is what timm loads
    model = timm.create_model(f'local-dir:{out / "model"}', pretrained=True)
    assert type(model).__module__ == 'timm_ghost.ghostnet' and model.num_classes == 10
    # a second run refuses the folder, naming --force
    assert main(['demo', '--out', str(out), '--epochs', '1', '--img-size', '16', '--no-progress']) == 1
    assert '--force' in capsys.readouterr().err


def test_demo_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    import timm_ghost.demo as demo

    def boom(*args, **kwargs):
        raise RuntimeError('training diverged')

    monkeypatch.setattr(demo, 'train_classifier', boom)
    with pytest.raises(RuntimeError, match='training diverged'):
        demo.run_demo(tmp_path / 'demo', demo.DemoConfig(img_size=16, epochs=1), progress=False, log=lambda s: None)
    assert list(tmp_path.iterdir()) == []


def test_demo_bad_options(capsys, tmp_path):
    assert main(['demo', '--out', str(tmp_path / 'x'), '--img-size', '8']) == 1
    err = capsys.readouterr().err.strip()
    assert err == 'timm-ghost demo: error: img_size must be >= 16 (GhostNet downsamples by 32), got 8'
    assert not (tmp_path / 'x').exists()


@pytest.mark.slow
def test_demo_full_reaches_95_percent(full_demo):
    """The README's main job with its defaults (a few minutes on two cores): ``timm-ghost demo --out OUT
    --no-progress``, run once for the slow tests (tests/conftest.py's ``full_demo``)."""
    r = json.loads((full_demo / 'results.json').read_text())
    assert r['val_top1'] >= 95.0, r['history']
    assert r['fused_top1'] >= 95.0 and r['same_argmax'] == r['num_val']
