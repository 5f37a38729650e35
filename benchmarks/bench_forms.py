"""What makes GhostNet's export slower than its MACs: alternative export forms of the same deploy model, side by side
in one run, against timm's legacy ONNX export of ``timm.utils.reparameterize_model(model)`` (the baseline).

Every form computes the eval model's function (checked per form: max |logit diff| <= 1e-4) from the same folded
weights; only the graph handed to the runtime differs:

* ``export``: timm-ghost's export form (``timm_ghost.export.export_form``): what ``export_model`` exports for
  OpenVINO and ExecuTorch, and did for ONNX Runtime before ``padded16``;
* ``padded16``: every feature map's channels padded with zero channels to a multiple of 16
  (``timm_ghost.export.form.pad_channels``, what ``export_model`` now exports for ONNX Runtime: its blocked NCHWc
  layout takes a depthwise conv only with a multiple of its block size, 16 with AVX-512, 8 with AVX2; the reorders
  around the convs it refuses were about 15 % of its batch-1 time);
* ``concat_once``: padded16, and the first Ghost module's halves concatenated once, so the strided depthwise conv,
  the SE gate (pool and 1x1 convs) and the projecting 1x1 conv run once per block instead of per half;
* ``concat_free``: no Concat at all: each cheap operation a depthwise conv with channel multiplier 2 over the primary
  output (an identity kernel for the first of each pair), the channel interleave absorbed into the next layer's
  weights.

Runtimes: ONNX Runtime with idle threads spinning (its default; ``load_export``'s) and with spinning off (what
``load_export`` did before), OpenVINO (f32 hint, each form through OpenVINO's own converter, the baseline read from
its ONNX file). ``--int8`` adds int8: ONNX Runtime's (the padded16 form quantized as ``export_model`` does, and with
the depthwise convs, then also the SE gate, kept in float through ``nodes_to_exclude``) and OpenVINO's (NNCF on the
export form as ``export_model`` does, and with the depthwise convs kept in float through ``ignored_scope``). Timing
interleaved per
(runtime, batch); ratios are baseline p50 / form p50. Writes ``results/forms.json`` and a chart.

    python benchmarks/bench_forms.py                 # ghostnet_100, 224 px, batch 1 and 32 (about 3 min)
    python benchmarks/bench_forms.py --int8          # + ONNX Runtime int8 variants
    python benchmarks/bench_forms.py --short         # smoke run: ghostnet_050, 64 px, batch 1
"""
from __future__ import annotations

import argparse
import collections
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from bench_export import _quiet, profile_onnxruntime
from benchlib import (
    finish,
    interleaved_latencies,
    machine_info,
    now_iso,
    parse_int_list,
    percentile,
    save_figure_atomic,
    versions,
)

from timm_ghost.export.form import (
    PAD_CHANNELS,
    conv1x1,
    frozen_conv,
    halves_layout,
    pad_channels,
    padded_layout,
    remap_conv,
    remap_depthwise,
)

RESULTS = Path(__file__).resolve().parent / 'results'
FORMS = ('export', 'padded16', 'concat_once', 'concat_free')


# ---- the forms tried and not kept (``padded16`` is timm_ghost.export.form.pad_channels) --------------------------

def _interleaved(n: int) -> torch.Tensor:
    return torch.stack([torch.arange(n), torch.arange(n) + n], 1).flatten()


def _joined(a: nn.Conv2d, b: nn.Conv2d) -> nn.Conv2d:
    """The depthwise convs ``a`` and ``b`` (the deploy block's halves) as one over ``[a's channels, b's channels]``."""
    c = a.in_channels + b.in_channels
    conv = nn.Conv2d(c, c, a.kernel_size, a.stride, a.padding, a.dilation, c)
    return frozen_conv(conv, torch.cat([a.weight, b.weight]).detach(), torch.cat([a.bias, b.bias]).detach())


def _times_two(cheap: nn.Conv2d) -> nn.Conv2d:
    """Depthwise conv with channel multiplier 2: output ``2i`` is input ``i`` (identity kernel), ``2i + 1`` the cheap
    operation of input ``i``."""
    c, k = cheap.in_channels, cheap.kernel_size
    weight = torch.zeros(2 * c, 1, *k)
    weight[0::2, 0, k[0] // 2, k[1] // 2] = 1
    weight[1::2] = cheap.weight.detach()
    bias = torch.zeros(2 * c)
    if cheap.bias is not None:
        bias[1::2] = cheap.bias.detach()
    return frozen_conv(nn.Conv2d(c, 2 * c, k, cheap.stride, cheap.padding, cheap.dilation, c), weight, bias)


class _Block(nn.Module):
    """A deploy Ghost bottleneck in ``concat_once`` or ``concat_free`` form, input laid out as ``lin``."""

    def __init__(self, d: nn.Module, form: str, lin: torch.Tensor, lout: torch.Tensor) -> None:
        super().__init__()
        c1, c2 = d.split1, d.split2
        self.form = form
        if form == 'concat_free':
            lg, lc = _interleaved(c1), torch.arange(c2)
            self.p1 = remap_conv(d.primary1, lin, torch.arange(c1))
            self.g1, self.g2 = _times_two(d.cheap1), _times_two(d.cheap2)
        else:
            la, lc = padded_layout(c1, PAD_CHANNELS), padded_layout(c2, PAD_CHANNELS)
            lg = halves_layout(c1, PAD_CHANNELS)
            self.p1 = remap_conv(d.primary1, lin, la)
            self.ch1, self.ch2 = remap_depthwise(d.cheap1, la), remap_depthwise(d.cheap2, lc)
        self.dw = remap_depthwise(_joined(d.dw_primary, d.dw_cheap), lg) if d.dw_primary is not None else None
        self.se = d.se_reduce is not None
        if self.se:
            r = d.se_reduce.out_features
            lr = padded_layout(r, PAD_CHANNELS) if form == 'concat_once' else torch.arange(r)
            self.r = remap_conv(conv1x1(d.se_reduce.weight, d.se_reduce.bias), lg, lr)
            self.e = remap_conv(conv1x1(d.se_expand.weight, d.se_expand.bias), lr, lg)
        p2 = conv1x1(torch.cat([d.primary2_a.weight, d.primary2_b.weight], 1)[:, :, 0, 0], d.primary2_a.bias)
        self.p2 = remap_conv(p2, lg, lc)
        self.sdw = self.spw = None
        if d.shortcut_dw is not None:
            self.sdw, self.spw = remap_depthwise(d.shortcut_dw, lin), remap_conv(d.shortcut_pw, lin, lout)
        elif not torch.equal(lin, lout):
            raise ValueError('an identity shortcut needs the same layout in and out')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.form == 'concat_free':
            g = F.relu(self.g1(F.relu(self.p1(x))))
        else:
            a = F.relu(self.p1(x))
            g = torch.cat([a, F.relu(self.ch1(a))], 1)
        if self.dw is not None:
            g = self.dw(g)
        if self.se:
            g = g * F.hardsigmoid(self.e(F.relu(self.r(g.mean((2, 3), keepdim=True)))))
        c = self.p2(g)
        y = self.g2(c) if self.form == 'concat_free' else torch.cat([c, self.ch2(c)], 1)
        return y + (self.spw(self.sdw(x)) if self.spw is not None else x)


@torch.no_grad()
def alternative_form(deploy: nn.Module, form: str) -> nn.Module:
    """The deploy GhostNet ``deploy`` (``reparameterize_model`` output) in ``form`` (see the module docstring)."""
    from timm_ghost.deploy import GhostBottleneckDeploy

    if form == 'padded16':
        return pad_channels(deploy, PAD_CHANNELS)
    m = copy.deepcopy(deploy).eval()
    blocks = [b for stage in m.blocks for b in stage if isinstance(b, GhostBottleneckDeploy)]

    def out_layout(b: nn.Module) -> torch.Tensor:
        return _interleaved(b.split2) if form == 'concat_free' else halves_layout(b.split2, PAD_CHANNELS)

    # the stem writes the first block's layout when that block adds its input back unchanged
    lx = out_layout(blocks[0]) if blocks[0].shortcut_dw is None else torch.arange(m.conv_stem.out_channels)
    m.conv_stem = remap_conv(m.conv_stem, torch.arange(m.conv_stem.in_channels), lx)
    m.bn1 = nn.Identity()
    for stage in m.blocks:
        for i, block in enumerate(stage):
            if isinstance(block, GhostBottleneckDeploy):
                stage[i] = _Block(block, form, lx, out_layout(block))
                lx = out_layout(block)
            else:  # the final 1x1 conv + ReLU
                stage[i] = nn.Sequential(remap_conv(block.conv, lx, torch.arange(block.conv.out_channels)), nn.ReLU())
                lx = torch.arange(block.conv.out_channels)
    return m


# ---- building and timing ---------------------------------------------------------------------------------------

def _onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    from timm_ghost.export import _onnxruntime

    _onnxruntime._export_fp32(model, example, path)


def _ort(path: Path, threads: int, spin: bool) -> Any:
    import onnxruntime as ort

    from timm_ghost.export._onnxruntime import session_options

    return ort.InferenceSession(str(path), session_options(threads, spin), providers=['CPUExecutionProvider'])


def _ort_nodes(path: Path) -> Dict[str, int]:
    """Node count per operator type of the graph ONNX Runtime runs (after its optimisations)."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(path.with_suffix('.opt.onnx'))
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
    graph = onnx.load(options.optimized_model_filepath).graph
    counts = collections.Counter(node.op_type for node in graph.node)
    return {'total': len(graph.node), **dict(counts.most_common())}


def _ov(model_or_path: Any, batch: int, size: int, threads: int) -> Any:
    import openvino as ov

    from timm_ghost.export._openvino import compile_config

    core = ov.Core()
    model = core.read_model(str(model_or_path)) if isinstance(model_or_path, Path) else model_or_path.clone()
    model.reshape([batch, 3, size, size])
    return core.compile_model(model, 'CPU', compile_config('fp32', threads)).create_infer_request()


def _excluded(path: Path) -> Dict[str, List[str]]:
    """Names of the depthwise convs, and of the SE gate's nodes, of the ONNX graph at ``path``."""
    import onnx

    graph = onnx.load(str(path)).graph
    dw = [n.name for n in graph.node if n.op_type == 'Conv' and any(a.name == 'group' and a.i > 1 for a in n.attribute)]
    se = [n.name for n in graph.node if n.op_type in ('ReduceMean', 'HardSigmoid', 'Mul')]
    return {'depthwise': dw, 'se': se}


def run(args: argparse.Namespace, work: Path, log: Callable[[str], None]) -> Dict[str, Any]:
    import openvino as ov
    import timm
    from timm.utils import reparameterize_model
    from timm.utils.onnx import onnx_export

    from timm_ghost.export import export_form
    from timm_ghost.export._onnxruntime import quantize
    from timm_ghost.testing import randomize_

    model = randomize_(timm.create_model(args.model), seed=0).eval()
    deploy = reparameterize_model(copy.deepcopy(model))
    size = args.img_size
    example = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(example)
    forms: Dict[str, nn.Module] = {'export': export_form(model)}
    forms.update({name: alternative_form(deploy, name) for name in FORMS[1:]})
    paths: Dict[str, Path] = {'baseline': work / 'baseline.onnx'}
    onnx_export(deploy, str(paths['baseline']), example_input=example[:1], input_names=['input'],
                output_names=['logits'], check=False)
    exactness: Dict[str, float] = {}
    ov_models: Dict[str, Any] = {'baseline': paths['baseline']}
    for name, form in forms.items():
        with torch.no_grad():
            exactness[name] = float((form(example) - reference).abs().max())
        if not exactness[name] <= 1e-4:
            raise RuntimeError(f'form {name}: max |logit diff| {exactness[name]:.3g} > 1e-4')
        paths[name] = work / f'{name}.onnx'
        _onnx(form, example, paths[name])
        batch_dim = torch.export.Dim('batch', min=1, max=4096)
        program = torch.export.export(form, (example,), dynamic_shapes=({0: batch_dim},))
        ov_models[name] = ov.convert_model(program)
        log(f'built {name} (max |logit diff| {exactness[name]:.2g})')
    nodes = {name: _ort_nodes(path) for name, path in paths.items()}

    int8: Dict[str, Path] = {}
    int8_errors: Dict[str, str] = {}
    ov_int8: Dict[str, Any] = {}
    if args.int8:
        import nncf
        from onnxruntime.quantization import QuantFormat, QuantType

        calib = [np.random.default_rng(i).standard_normal((8, 3, size, size)).astype(np.float32) for i in range(4)]
        # the SE gates' hard sigmoids folded into their expand convs: what ONNX Runtime's int8 exports quantize
        for name, pad in (('gated16', PAD_CHANNELS), ('gated', None)):
            form = export_form(model, pad=pad, fold_gates=True)
            with torch.no_grad():
                exactness[name] = float((form(example) - reference).abs().max())
            if not exactness[name] <= 1e-4:
                raise RuntimeError(f'form {name}: max |logit diff| {exactness[name]:.3g} > 1e-4')
            paths[name] = work / f'{name}.onnx'
            _onnx(form, example, paths[name])
        names = _excluded(paths['gated16'])
        variants = {  # key: (fp32 form, quantize() keywords)
            'int8_qdq_old': ('padded16', {'pools': False}),  # the export before: gates and means left in float
            'int8': ('gated16', {}),  # shipped: export_model's ONNX Runtime int8
            'int8_qoperator': ('gated16', {'quant_format': QuantFormat.QOperator}),  # QLinear* ops, NHWC path
            'int8_u8u8': ('gated16', {'weight_type': QuantType.QUInt8}),
            'int8_per_tensor': ('gated16', {'per_channel': False}),
            'int8_reduce_range': ('gated16', {'reduce_range': True}),
            'int8_unpadded': ('gated', {}),
            'int8_float_dw': ('gated16', {'exclude': names['depthwise']}),
        }
        for key, (base, settings) in variants.items():
            int8[key] = work / f'{key}.onnx'
            try:
                quantize(paths[base], int8[key], work, [torch.from_numpy(c) for c in calib], **settings)
                _ort(int8[key], args.threads, True)
            except Exception as e:  # a setting ONNX Runtime refuses is a row saying so, not the end of the run
                int8_errors[key] = f'{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ""}'
                del int8[key]
                log(f'{key}: failed ({int8_errors[key]})')
                continue
            log(f'quantized {key} for ONNX Runtime (from {base})')
        nodes.update({key: _ort_nodes(path) for key, path in int8.items()})
        data = nncf.Dataset([image[None] for batch in calib for image in batch])
        for key, ignored in (('int8', None), ('int8_float_dw', nncf.IgnoredScope(types=['GroupConvolution']))):
            kwargs = {'ignored_scope': ignored} if ignored is not None else {}
            ov_int8[key] = nncf.quantize(ov_models['export'], data, subset_size=32, **kwargs)
            log(f'quantized {key} for OpenVINO (NNCF{", depthwise convs ignored" if ignored else ""})')

    results: List[Dict[str, Any]] = []
    for batch in args.batch_sizes:
        x = np.random.default_rng(1).standard_normal((batch, 3, size, size)).astype(np.float32)
        fns: Dict[str, Callable[[], Any]] = {}
        rows: Dict[str, Dict[str, Any]] = {}
        for name, path in paths.items():
            if name.startswith('gated'):
                continue  # fp32 sources of the int8 rows (the same function as padded16 / export)
            for spin in (True, False):
                session = _ort(path, args.threads, spin)
                key = f'onnxruntime{"" if spin else " (no spinning)"} | {name}'
                fns[key] = lambda s=session, x=x: s.run(None, {'input': x})
                rows[key] = {'runtime': 'onnxruntime' if spin else 'onnxruntime_nospin', 'form': name}
            request = _ov(ov_models[name], batch, size, args.threads)
            fns[f'openvino | {name}'] = lambda r=request, x=x: r.infer([x])
            rows[f'openvino | {name}'] = {'runtime': 'openvino', 'form': name}
        for name, error in int8_errors.items():
            results.append({'runtime': 'onnxruntime', 'form': name, 'batch': batch, 'error': error})
        for name, path in int8.items():
            session = _ort(path, args.threads, True)
            fns[f'onnxruntime | {name}'] = lambda s=session, x=x: s.run(None, {'input': x})
            rows[f'onnxruntime | {name}'] = {'runtime': 'onnxruntime', 'form': name}
        for name, ov_model in ov_int8.items():
            request = _ov(ov_model, batch, size, args.threads)
            fns[f'openvino | {name}'] = lambda r=request, x=x: r.infer([x])
            rows[f'openvino | {name}'] = {'runtime': 'openvino', 'form': name}
        log(f'timing batch {batch}: {len(fns)} rows, interleaved')
        latencies = interleaved_latencies(fns, args.rounds, args.round_s, args.warmup)
        for key, times in latencies.items():
            p50 = statistics.median(times)
            results.append({**rows[key], 'batch': batch, 'p50_ms': round(p50 * 1e3, 4),
                            'p20_ms': round(percentile(times, 20) * 1e3, 4), 'images_per_s': round(batch / p50, 1),
                            'calls': len(times)})
    _ratios(results)
    profiles = {}
    if args.profile:
        x1 = np.random.default_rng(1).standard_normal((1, 3, size, size)).astype(np.float32)
        for name in ('baseline', 'export', 'concat_once'):
            folder = work / f'profile_{name}'
            folder.mkdir()
            (folder / 'model.onnx').symlink_to(paths[name])
            profiles[f'onnxruntime_fp32_{name}'] = profile_onnxruntime(folder, x1, args.threads)
    return {'exactness': exactness, 'ort_nodes': nodes, 'results': results, 'profiles': profiles}


def _ratios(results: List[Dict[str, Any]]) -> None:
    """Each row's speed against the baseline in the same runtime and batch; int8 rows also against the fp32 form
    the runtime's exports ship (ONNX Runtime: padded16, OpenVINO: export)."""
    p50 = {(r['runtime'], r['form'], r['batch']): r['p50_ms'] for r in results if 'error' not in r}
    shipped = {'onnxruntime': 'padded16', 'openvino': 'export'}
    for r in results:
        if 'error' in r:
            continue
        base = p50.get((r['runtime'], 'baseline', r['batch']))
        r['vs_baseline'] = round(base / r['p50_ms'], 3) if base else None
        if r['form'].startswith('int8'):
            r['vs_shipped_fp32'] = round(p50[(r['runtime'], shipped[r['runtime']], r['batch'])] / r['p50_ms'], 3)
        nospin = p50.get(('onnxruntime_nospin', 'baseline', r['batch']))
        if r['runtime'] == 'onnxruntime' and nospin:
            r['vs_baseline_no_spinning'] = round(nospin / r['p50_ms'], 3)


def plot(data: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    batches = data['settings']['batch_sizes']
    fig, axes = plt.subplots(1, len(batches), figsize=(6.5 * len(batches), 4.2), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        rows = [r for r in data['results'] if r['batch'] == batch]
        runtimes = list(dict.fromkeys(r['runtime'] for r in rows))
        forms = list(dict.fromkeys(r['form'] for r in rows))
        width = 0.8 / len(runtimes)
        for i, runtime in enumerate(runtimes):
            speed = {r['form']: r.get('images_per_s', 0) for r in rows if r['runtime'] == runtime}
            ax.bar([j + i * width for j in range(len(forms))], [speed.get(f, 0) for f in forms], width, label=runtime)
        ax.set_xticks([j + width * (len(runtimes) - 1) / 2 for j in range(len(forms))], forms, rotation=30,
                      ha='right')
        ax.set_ylabel('images/s')
        ax.set_title(f'{data["settings"]["model"]}, batch {batch}, {data["settings"]["threads"]} threads')
        ax.legend(fontsize=8)
    save_figure_atomic(fig, path)
    plt.close(fig)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--model', default='ghostnet_100', choices=['ghostnet_050', 'ghostnet_100', 'ghostnet_130'])
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--batch-sizes', default='1,32')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--rounds', type=int, default=7)
    p.add_argument('--round-s', type=float, default=0.3)
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--int8', action='store_true', help='add ONNX Runtime int8 rows (three quantized variants)')
    p.add_argument('--profile', action='store_true', help="ONNX Runtime's per-node-type times at batch 1")
    p.add_argument('--short', action='store_true', help='smoke run: ghostnet_050, 64 px, batch 1, 2 rounds')
    p.add_argument('--out', type=Path, default=RESULTS / 'forms.json')
    args = p.parse_args(argv)
    args.batch_sizes = parse_int_list(args.batch_sizes, '--batch-sizes')
    if args.img_size < 32 or args.img_size % 32:
        p.error(f'--img-size: expected a multiple of 32 (at least 32), got {args.img_size}')
    if args.short:
        args.model, args.img_size, args.batch_sizes, args.rounds, args.round_s, args.warmup = (
            'ghostnet_050', 64, [1], 2, 0.05, 1)
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    _quiet()
    start = time.time()

    def log(msg: str) -> None:
        print(f'[{time.time() - start:6.1f}s] {msg}', flush=True)

    data: Dict[str, Any] = {
        'kind': 'forms', 'schema': 1, 'created': now_iso(), 'short': args.short,
        'machine': machine_info(args.threads), 'versions': versions(),
        'settings': {'model': args.model, 'img_size': args.img_size, 'batch_sizes': args.batch_sizes,
                     'threads': args.threads, 'rounds': args.rounds, 'round_s': args.round_s,
                     'weights': 'random (timm_ghost.testing.randomize_, seed 0)',
                     'baseline': "timm.utils.onnx.onnx_export (legacy exporter) of reparameterize_model(model)",
                     'statistic': 'median per-call wall time over interleaved rounds; vs_baseline = baseline p50 / '
                                  'row p50, same runtime and batch'},
    }
    with tempfile.TemporaryDirectory(prefix='bench-forms-') as work:
        data.update(run(args, Path(work), log))
    for r in data['results']:
        extra = f'  (vs the baseline without spinning {r["vs_baseline_no_spinning"]:.2f}x)' if r.get(
            'vs_baseline_no_spinning') else ''
        print(f'b{r["batch"]:<3d} {r["runtime"]:19s} {r["form"]:17s} {r["images_per_s"]:8.1f} img/s  '
              f'{r["vs_baseline"]:.2f}x the baseline{extra}')
    return finish(data, args.out, start, plot)


if __name__ == '__main__':
    sys.exit(main())
