"""Folders this package writes (``timm-ghost convert``, which ``push`` uploads, and the demo's ``model/``, both through
``timm_ghost.publish.save_hub_folder``) load in Hugging Face transformers' TimmWrapper
(``AutoModelForImageClassification``, ``pipeline('image-classification')``) with our GhostNet inside, and still in
timm. docs/weights.md#loading-in-transformers."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip('transformers', reason="needs transformers: pip install 'timm-ghost[hf]'")

import timm  # noqa: E402
import torch  # noqa: E402
from helpers import HUB_MODEL_ARGS, randomize_  # noqa: E402
from hub_server import HubServer, hub_env  # noqa: E402
from PIL import Image  # noqa: E402

import timm_ghost_cli as cli  # noqa: E402
from timm_ghost._compat import timm_at_least  # noqa: E402
from timm_ghost.ghostnet import GhostNet  # noqa: E402
from timm_ghost.publish import HUB_FILES, save_hub_folder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LABELS = ['cat', 'dog', 'owl']
SIZE = 64  # the folders' input size: small images keep the pipeline fast


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
    """``demo``: a 3-class ghostnet_050 written as the demo writes its model folder (labels, 64 px, crop 1.0);
    ``convert``: ``timm-ghost convert`` of its model.safetensors (labels and input size taken from beside it)."""
    tmp = tmp_path_factory.mktemp('hf')
    model = randomize_(timm.create_model('ghostnet_050', num_classes=len(LABELS)), 31).eval()
    model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, SIZE, SIZE), crop_pct=1.0)
    save_hub_folder(model, tmp / 'demo', model_config=dict(label_names=LABELS))
    assert cli.main(['convert', str(tmp / 'demo' / 'model.safetensors'), str(tmp / 'convert'), '--model',
                     'ghostnet_050']) == 0
    yield {'demo': tmp / 'demo', 'convert': tmp / 'convert'}
    shutil.rmtree(tmp, ignore_errors=True)


def _image(seed: int = 0) -> Image.Image:
    pixels = torch.randint(0, 256, (80, 96, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


@pytest.mark.parametrize('kind', ['convert', 'demo'])
def test_auto_model_builds_our_ghostnet_with_timms_logits(folders, kind):
    from transformers import AutoModelForImageClassification

    folder = folders[kind]
    config = json.loads((folder / 'config.json').read_text())
    assert config['num_classes'] == 3 and config.get('model_args') == HUB_MODEL_ARGS
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    assert type(model.timm_model) is GhostNet  # timm_ghost's class, not timm.models.ghostnet.GhostNet
    assert model.config.id2label == dict(enumerate(LABELS)) and model.config.num_labels == 3
    reference = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()  # timm's loader still reads it
    assert type(reference) is GhostNet and reference.num_classes == 3
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, expected = model(pixel_values=x).logits, reference(x)
    assert expected.abs().max().item() > 0.1  # random weights that give distinct logits, not a constant
    diff = (logits - expected).abs().max().item()
    assert diff <= 1e-5, diff


def test_pipeline_scores_with_the_folders_labels_and_preprocessing(folders):
    from transformers import pipeline

    folder = folders['convert']
    classifier = pipeline('image-classification', model=str(folder))
    assert type(classifier.model.timm_model) is GhostNet
    image = _image()
    scores = {r['label']: r['score'] for r in classifier(image, top_k=None)}
    assert sorted(scores) == sorted(LABELS)  # the folder's names, not LABEL_0 ...
    # timm's own preprocessing of the same image (the folder's 64 px, crop 1.0) and model: the same probabilities
    reference = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(reference), is_training=False)
    with torch.no_grad():
        probs = reference(transform(image).unsqueeze(0)).softmax(-1)[0]
    diff = max(abs(scores[name] - probs[i].item()) for i, name in enumerate(LABELS))
    assert diff <= 1e-5, (scores, probs)


def test_from_the_hub_our_class_needs_import_timm_ghost_before_the_model_is_built(folders, tmp_path):
    """The converted folder's files (what ``push`` uploads) on the loopback Hub, loaded by repo id in a fresh process.
    transformers builds the model with ``timm.create_model(architecture)``: without ``import timm_ghost`` that is
    timm's built-in GhostNet (the same weights load into it); after the import, in the same process and after
    transformers was imported, it is ours, in the pipeline too, with the folder's labels."""
    folder = folders['convert']
    code = (
        'import sys\n'
        'from PIL import Image\n'
        'from transformers import AutoModelForImageClassification, pipeline\n'
        'load = lambda: type(AutoModelForImageClassification.from_pretrained(sys.argv[1]).timm_model)\n'
        'before = load()\n'
        'assert "timm_ghost" not in sys.modules\n'
        'import timm_ghost\n'
        'after = load()\n'
        'classifier = pipeline("image-classification", model=sys.argv[1])\n'
        'labels = sorted(r["label"] for r in classifier(Image.new("RGB", (64, 64)), top_k=None))\n'
        'inside = type(classifier.model.timm_model)\n'
        'print(*(f"{t.__module__}.{t.__name__}" for t in (before, after, inside)), *labels)\n')
    with HubServer() as hub:
        hub.commit('org/ghostnet_050.hf', {name: (folder / name).read_bytes() for name in HUB_FILES})
        res = subprocess.run([sys.executable, '-c', code, 'org/ghostnet_050.hf'], cwd=ROOT, capture_output=True,
                             text=True, timeout=180, env=hub_env(hub.endpoint, tmp_path / 'hf_home'))
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ['timm.models.ghostnet.GhostNet', 'timm_ghost.ghostnet.GhostNet',
                                  'timm_ghost.ghostnet.GhostNet', *sorted(LABELS)]


def test_timms_own_save_for_hf_folder_fails_and_the_working_form_loads(tmp_path):
    """transformers' bug (docs/weights.md#loading-in-transformers): timm 1.0.31's save_for_hf records num_classes in
    model_args and the TimmWrapper passes num_classes besides **model_args. Passing model_args without num_classes
    loads such a folder (the documented working form). When pytest.raises fails, transformers has fixed it: update
    the docs."""
    from timm.models import save_for_hf
    from transformers import AutoModelForImageClassification, pipeline

    model = randomize_(timm.create_model('ghostnet_050', num_classes=3), 32).eval()
    save_for_hf(model, tmp_path, model_config=dict(label_names=LABELS), safe_serialization=True)
    args = json.loads((tmp_path / 'config.json').read_text()).get('model_args')
    if timm_at_least('1.0.31'):
        assert args == {'num_classes': 3, 'in_chans': 3, 'global_pool': 'avg'}
        with pytest.raises(TypeError, match="got multiple values for keyword argument 'num_classes'"):
            AutoModelForImageClassification.from_pretrained(tmp_path)
        args.pop('num_classes')
    else:  # timm records model_args since 1.0.31: an older timm's folder has none, and loads as it is
        assert args is None
    extra = dict(model_args=args) if args else {}
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path, **extra).eval()
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        diff = (loaded(pixel_values=x).logits - model(x)).abs().max().item()
    assert type(loaded.timm_model) is GhostNet and diff <= 1e-5, diff
    classifier = pipeline('image-classification', model=str(tmp_path), model_kwargs=extra)
    assert sorted(r['label'] for r in classifier(_image(1), top_k=None)) == sorted(LABELS)
