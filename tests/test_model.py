"""GhostNet v1 in timm's registry: registration, architecture, weight compatibility with timm's built-in."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from helpers import MODEL_NAMES, builtin_model, randomize_
from safetensors.torch import save_file

import timm_ghost
from timm_ghost.models_info import count_macs, count_params

X64 = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
# The paper's ImageNet table (Han et al., CVPR 2020; 224 px, single crop): params (M), MACs (M), top-1, top-5. Written
# out here, not read from PAPER_RESULTS, so that a typo there fails instead of being carried into every check.
PAPER_TABLE = {
    'ghostnet_050': (2.6, 42, 66.2, 86.6),
    'ghostnet_100': (5.2, 141, 73.9, 91.4),
    'ghostnet_130': (7.3, 226, 75.7, 92.7),
}


def test_import_registers_our_class_for_each_width():
    for name in MODEL_NAMES:
        model = timm.create_model(name)
        assert type(model) is timm_ghost.GhostNet
        assert model.width == timm_ghost.WIDTHS[name]
        assert timm.models.model_entrypoint(name).__module__ == 'timm_ghost.ghostnet'


def test_registry_queries_answer_as_for_the_builtins():
    assert timm.list_models('ghostnet_*') == ['ghostnet_050', 'ghostnet_100', 'ghostnet_130']
    assert set(MODEL_NAMES) <= set(timm.list_models(module='ghostnet'))
    assert {'ghostnetv2_100', 'ghostnetv3_100'} <= set(timm.list_models(module='ghostnet'))  # timm's others stay
    assert timm.list_pretrained('ghostnet_*') == [
        'ghostnet_050.paddle_in1k', 'ghostnet_100.in1k', 'ghostnet_100.paddle_in1k', 'ghostnet_130.paddle_in1k',
        'ghostnet_130.ssld_in1k']
    assert 'ghostnet_100.in1k' in timm.list_pretrained()
    assert timm.get_pretrained_cfg('ghostnet_100').hf_hub_id == 'timm/ghostnet_100.in1k'
    assert timm.get_pretrained_cfg('ghostnet_050').tag == 'paddle_in1k'
    assert timm.get_pretrained_cfg('ghostnet_130').tag == 'paddle_in1k'
    assert all(timm.is_model_pretrained(name) for name in MODEL_NAMES)


def test_import_is_silent_and_idempotent():
    code = (
        'import importlib, timm, timm_ghost, timm_ghost.ghostnet as g\n'
        'importlib.reload(g)\n'
        'import timm_ghost\n'
        'm = timm.create_model("ghostnet_100")\n'
        'assert type(m).__module__ == "timm_ghost.ghostnet", type(m)\n'
        'assert timm.list_models("ghostnet_*") == ["ghostnet_050", "ghostnet_100", "ghostnet_130"]\n'
        'print("ok")\n'
    )
    res = subprocess.run([sys.executable, '-W', 'error', '-c', code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == 'ok'
    assert 'Overwriting' not in res.stderr


def test_architecture_is_the_papers_table():
    rows = [(b.kernel_size, b.exp_chs, b.out_chs, b.se_ratio > 0, b.stride)
            for stage in timm_ghost.GHOSTNET_STAGES for b in stage]
    assert rows == [
        (3, 16, 16, False, 1), (3, 48, 24, False, 2), (3, 72, 24, False, 1), (5, 72, 40, True, 2),
        (5, 120, 40, True, 1), (3, 240, 80, False, 2), (3, 200, 80, False, 1), (3, 184, 80, False, 1),
        (3, 184, 80, False, 1), (3, 480, 112, True, 1), (3, 672, 112, True, 1), (5, 672, 160, True, 2),
        (5, 960, 160, False, 1), (5, 960, 160, True, 1), (5, 960, 160, False, 1), (5, 960, 160, True, 1),
    ]
    model = timm.create_model('ghostnet_100')
    assert model.conv_stem.out_channels == 16 and model.num_features == 960 and model.head_hidden_size == 1280
    se = model.blocks[3][0].se
    assert (se.conv_reduce.in_channels, se.conv_reduce.out_channels) == (72, 20)  # make_divisible(72 / 4, 4)
    assert isinstance(se.gate, torch.nn.Hardsigmoid)


def test_paper_results_are_the_papers_table():
    assert {name: tuple(vars(r).values()) for name, r in timm_ghost.PAPER_RESULTS.items()} == PAPER_TABLE
    assert [list(vars(r)) for r in timm_ghost.PAPER_RESULTS.values()] == [['params_m', 'macs_m', 'top1', 'top5']] * 3


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_params_and_macs_within_2_percent_of_paper(name):
    model = timm.create_model(name)
    paper_params, paper_macs, _, _ = PAPER_TABLE[name]
    params, macs = count_params(model) / 1e6, count_macs(model, 224) / 1e6
    assert abs(params - paper_params) / paper_params < 0.02, params
    assert abs(macs - paper_macs) / paper_macs < 0.02, macs


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_builtin_weights_load_through_timms_pretrained_path(name, tmp_path):
    builtin = randomize_(builtin_model(name), seed=1).eval()
    path = tmp_path / 'model.safetensors'
    save_file(builtin.state_dict(), str(path))
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    assert type(model) is timm_ghost.GhostNet
    assert list(model.state_dict()) == list(builtin.state_dict())
    with torch.no_grad():
        assert (model(X64) - builtin(X64)).abs().max().item() <= 1e-5
    assert model.pretrained_cfg['file'] == str(path)


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_our_checkpoints_load_into_plain_timm(name, tmp_path):
    ours = randomize_(timm.create_model(name), seed=2).eval()
    path = tmp_path / 'ours.pth'
    torch.save(ours.state_dict(), path)
    builtin = builtin_model(name).eval()
    result = builtin.load_state_dict(torch.load(path, weights_only=True), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    with torch.no_grad():
        assert (ours(X64) - builtin(X64)).abs().max().item() <= 1e-5


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_original_authors_checkpoint_layout_loads(name, tmp_path):
    # huawei-noah ghostnet_pytorch: timm's key names, saved from DataParallel with thop's profiling buffers
    reference = randomize_(builtin_model(name), seed=3).eval()
    sd = {f'module.{k}': v for k, v in reference.state_dict().items()}
    sd.update({'module.total_ops': torch.zeros(1, dtype=torch.float64), 'module.total_params': torch.zeros(1)})
    sd['module.blocks.0.0.total_ops'] = torch.zeros(1, dtype=torch.float64)
    path = tmp_path / 'ghostnet_1x.pth'
    torch.save({'state_dict': sd, 'epoch': 400}, path)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    with torch.no_grad():
        assert (model(X64) - reference(X64)).abs().max().item() <= 1e-5


def _import_graph() -> dict:
    """Every module of ``timm_ghost`` and ``timm_ghost_cli`` (the CLI, the demos, the export and paddle packages
    included) and every name it imports anywhere in its code (functions too), relative imports resolved. A package
    reached only for its submodules (``from . import ghostnet``) is not counted: importing a submodule always imports
    its parents."""
    root = Path(timm_ghost.__file__).parent.parent
    files = {}
    for pkg in ('timm_ghost', 'timm_ghost_cli'):
        for path in sorted((root / pkg).rglob('*.py')):
            parts = list(path.relative_to(root).with_suffix('').parts)
            files['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = path
    graph = {}
    for name, path in files.items():
        package = name.split('.') if path.name == '__init__.py' else name.split('.')[:-1]
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package[:len(package) - node.level + 1] if node.level else []
                parent = '.'.join(base + ([node.module] if node.module else []))
                full = {f'{parent}.{alias.name}' for alias in node.names}
                names.update(full & set(files) if full <= set(files) else full | {parent})
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == 'torch':
                if node.attr == 'ops':  # torch.ops.<namespace>: private operator namespaces
                    names.add('torch.ops')
        graph[name] = names - {name}
    return graph


def test_every_module_imports_one_way():
    """No import circle anywhere: the CLI, the demos and the export code depend downward only."""
    import graphlib

    graph = _import_graph()
    assert {'timm_ghost.cli', 'timm_ghost_cli', 'timm_ghost.demo', 'timm_ghost.demo_cli', 'timm_ghost.dense_demo',
            'timm_ghost.detect_demo', 'timm_ghost.segment_demo', 'timm_ghost.scenes', 'timm_ghost.export.api',
            'timm_ghost.paddle.reader'} <= set(graph) and len(graph) >= 40
    ours = {m: {n for n in names if n in graph} for m, names in graph.items()}
    try:
        order = list(graphlib.TopologicalSorter(ours).static_order())
    except graphlib.CycleError as e:
        pytest.fail(f'import circle: {" -> ".join(e.args[1])}')
    assert set(order) == set(graph)
    # the entry point reaches the package only through cli.run; the library never reaches the entry point
    assert ours['timm_ghost_cli'] == {'timm_ghost.cli'} and ours['timm_ghost.cli'] == {'timm_ghost.errors'}
    assert not any('timm_ghost_cli' in names for m, names in ours.items() if m != 'timm_ghost_cli')
    # the demos know nothing of their command line; the scenes nothing of the trainers
    assert not any('timm_ghost.demo_cli' in names for names in ours.values())
    assert ours['timm_ghost.scenes'] <= {'timm_ghost._io', 'timm_ghost.data'}
    assert 'timm_ghost.dense_demo' not in ours['timm_ghost.demo']
    for module, names in graph.items():  # another package's private names: only through _compat
        private = sorted(n for n in names if module != 'timm_ghost._compat' and (n == 'torch.ops' or (
            not n.startswith(('timm_ghost', '__future__')) and any(part.startswith('_') for part in n.split('.')))))
        assert not private, f'{module} reaches private names outside _compat: {private}'


def test_layers_depend_one_way_and_private_names_go_through_compat():
    graph = _import_graph()
    modules = ('arch', 'releases', 'errors', '_io', '_http', '_cache', 'fold', 'blocks', 'deploy', 'ghostnet', 'hub',
               'hub_download', 'paddle', 'paddle.reader', 'paddle.mapping', 'paddle.cache', 'paddle.card')
    imports = {m: {n for n in graph[f'timm_ghost.{m}'] if n in graph or not n.startswith('timm_ghost')}
               for m in modules}
    ours = {m: {n.removeprefix('timm_ghost.') for n in names if n.startswith('timm_ghost.')}
            for m, names in imports.items()}
    # the model: blocks -> fold, deploy -> blocks, ghostnet -> weights; never back
    assert ours['fold'].isdisjoint({'blocks', 'deploy', 'ghostnet'})
    assert ours['blocks'].isdisjoint({'deploy', 'ghostnet'}) and 'fold' in ours['blocks']
    assert {'blocks', 'fold', '_compat'} <= ours['deploy'] and 'ghostnet' not in ours['deploy']
    assert 'deploy' not in ours['ghostnet']
    # the data both sides read are leaves: the architecture table and the released weights
    assert ours['arch'] == set() and ours['releases'] == set()
    assert {'arch', 'releases', 'hub'} <= ours['ghostnet']
    # the weight sources know nothing of the model: hub -> hub_download / paddle -> its jobs -> arch, releases
    weights = ('hub', 'hub_download', '_http', '_cache', 'paddle', 'paddle.reader', 'paddle.mapping', 'paddle.cache',
               'paddle.card')
    for module in weights:
        assert ours[module].isdisjoint({'ghostnet', 'blocks', 'deploy', 'fold'}), (module, ours[module])
    assert {'hub_download', 'paddle', '_cache'} <= ours['hub']
    for module in ('hub_download', '_http', '_cache', 'paddle', 'paddle.reader', 'paddle.mapping', 'paddle.cache',
                   'paddle.card'):
        assert 'hub' not in ours[module], module
    assert ours['paddle.reader'] == {'errors'}  # the unpickler stands alone
    assert ours['paddle.mapping'] == {'arch', 'errors', 'paddle.reader'}
    assert ours['paddle.card'] == {'releases'}
    assert {'_cache', '_http', 'paddle.mapping'} <= ours['paddle.cache']
    assert '_cache' not in ours['_http'] and 'paddle' not in ours['_cache']
    for module, names in imports.items():  # another package's private names: only through _compat
        private = sorted(n for n in names if n == 'torch.ops' or (not n.startswith(('timm_ghost', '__future__'))
                                                                 and any(p.startswith('_') for p in n.split('.'))))
        assert not private, f'timm_ghost/{module}.py reaches private names outside _compat: {private}'
