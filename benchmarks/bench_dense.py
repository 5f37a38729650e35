"""CPU speed of GhostNet inside a detector and a segmenter: the backbone with its FPN, and the whole model.

Rows, timed side by side in one run (interleaved rounds, A, B, C, A, B, C, ..., after a warm-up; batch 1;
``torch.set_num_threads(--threads)``, ONNX Runtime with as many intra-op threads), at each ``--sizes`` (square
images):

* backbone + FPN (torchvision's ``BackboneWithFPN``, 256 channels, the levels at strides 16 and 32 plus the pool
  level, as torchvision's ``fasterrcnn_mobilenet_v3_large_320_fpn``; BatchNorm frozen): timm-ghost ghostnet_100
  (``ghostnet_fpn_backbone``, end-of-resolution taps) eager, folded (``timm.utils.reparameterize_model``) and folded
  in ONNX Runtime; the folded one on the built-in's taps; timm's built-in ghostnet_100 (its taps); torchvision's
  ``mobilenet_backbone('mobilenet_v3_large', fpn=True)``;
* Faster R-CNN with each backbone (``fasterrcnn_mobilenet_v3_large_320_fpn``'s settings, images resized to the size);
* smp ``Unet`` on ``tu-ghostnet_100`` (end-of-resolution taps) eager, folded and folded in ONNX Runtime, on timm's
  built-in ghostnet_100, and on ``tu-mobilenetv3_large_100``.

MACs (FLOPs / 2, ``torch.utils.flop_counter``) are counted beside the times. Ratios are speeds relative to timm's
built-in ghostnet_100 in the same group and size. The result is ``results/dense.json`` and ``results/dense.png``;
``--docs docs/dense.md`` writes its table between the markers there.

    python benchmarks/bench_dense.py                     # full run (a few minutes on 2 cores)
    python benchmarks/bench_dense.py --short             # smoke run: every row, small sizes, short rounds
"""
from __future__ import annotations

import argparse
import copy
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from benchlib import (
    finish,
    gpu_section,
    interleaved_latencies,
    machine_info,
    now_iso,
    parse_int_list,
    save_figure_atomic,
    versions,
)

RESULTS = Path(__file__).resolve().parent / 'results'
DOCS_MARKERS = ('<!-- dense-table:start -->', '<!-- dense-table:end -->')
GROUPS = {'fpn': 'backbone + FPN', 'detector': 'Faster R-CNN', 'segmenter': 'smp Unet'}
ROWS = {  # key: label, in table order, per group
    'fpn': {
        'builtin': "timm built-in ghostnet_100 (its taps)",
        'eager': 'timm-ghost ghostnet_100 (eval)',
        'folded': 'timm-ghost folded (reparameterize_model)',
        'folded_default_taps': "timm-ghost folded, the built-in's taps",
        'onnxruntime': 'timm-ghost folded, ONNX Runtime',
        'mobilenetv3': "torchvision mobilenet_v3_large FPN backbone",
    },
    'detector': {
        'builtin': "timm built-in ghostnet_100 (its taps)",
        'eager': 'timm-ghost ghostnet_100 (eval)',
        'folded': 'timm-ghost folded (reparameterize_model)',
        'mobilenetv3': 'torchvision fasterrcnn_mobilenet_v3_large_320_fpn',
    },
    'segmenter': {
        'builtin': "timm built-in ghostnet_100 (its taps)",
        'eager': "timm-ghost ghostnet_100, feature_location='bottleneck'",
        'folded': 'timm-ghost folded (reparameterize_model)',
        'onnxruntime': 'timm-ghost folded, ONNX Runtime',
        'mobilenetv3': 'tu-mobilenetv3_large_100',
    },
}
RETURNED_LAYERS = [3, 4]  # strides 16 and 32, + the pool level: three maps, as the MobileNetV3 peer hands out


def _quiet_imports() -> None:
    logging.getLogger('torch.utils.cpp_extension').setLevel(logging.ERROR)
    import timm_ghost  # noqa: F401


def _builtin_features(**kwargs: Any) -> torch.nn.Module:
    """timm's built-in ghostnet_100 as a features_only model (its entrypoint, bypassing the registry we replace)."""
    from timm.models import ghostnet as timm_ghostnet
    return timm_ghostnet.ghostnet_100(features_only=True, **kwargs)


def builtin_fpn_backbone() -> torch.nn.Module:
    """torchvision's BackboneWithFPN on timm's built-in ghostnet_100 (default taps), BatchNorm frozen."""
    from timm.layers import freeze_batch_norm_2d
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
    body = freeze_batch_norm_2d(_builtin_features(out_indices=tuple(range(max(RETURNED_LAYERS) + 1))))
    names = [info['module'].replace('.', '_') for info in body.feature_info.get_dicts()]
    return BackboneWithFPN(body, {names[k]: str(i) for i, k in enumerate(RETURNED_LAYERS)},
                           [body.feature_info.channels()[k] for k in RETURNED_LAYERS], 256,
                           extra_blocks=LastLevelMaxPool())


def default_taps_fpn_backbone() -> torch.nn.Module:
    """Ours with the built-in's taps (``feature_location=''``): the like-for-like comparison with the built-in."""
    import timm
    from timm.layers import freeze_batch_norm_2d
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
    body = freeze_batch_norm_2d(timm.create_model(
        'ghostnet_100', features_only=True, out_indices=tuple(range(max(RETURNED_LAYERS) + 1))))
    names = [info['module'].replace('.', '_') for info in body.feature_info.get_dicts()]
    return BackboneWithFPN(body, {names[k]: str(i) for i, k in enumerate(RETURNED_LAYERS)},
                           [body.feature_info.channels()[k] for k in RETURNED_LAYERS], 256,
                           extra_blocks=LastLevelMaxPool())


def fpn_backbones() -> Dict[str, torch.nn.Module]:
    from timm.utils import reparameterize_model
    from torchvision.models.detection.backbone_utils import mobilenet_backbone
    from torchvision.ops import FrozenBatchNorm2d

    from timm_ghost.detection import ghostnet_fpn_backbone
    ours = ghostnet_fpn_backbone('ghostnet_100', returned_layers=RETURNED_LAYERS).eval()
    return {
        'builtin': builtin_fpn_backbone().eval(),
        'eager': ours,
        'folded': reparameterize_model(ours),
        'folded_default_taps': reparameterize_model(default_taps_fpn_backbone().eval()),
        'mobilenetv3': mobilenet_backbone(backbone_name='mobilenet_v3_large', weights=None, fpn=True,
                                          trainable_layers=3, norm_layer=FrozenBatchNorm2d).eval(),
    }


def detectors(backbones: Dict[str, torch.nn.Module], size: int) -> Dict[str, torch.nn.Module]:
    """Faster R-CNN on each backbone with ``fasterrcnn_mobilenet_v3_large_320_fpn``'s settings at ``size`` px."""
    from torchvision.models.detection import FasterRCNN, fasterrcnn_mobilenet_v3_large_320_fpn
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    settings = dict(min_size=size, max_size=size, rpn_pre_nms_top_n_test=150, rpn_post_nms_top_n_test=150,
                    rpn_score_thresh=0.05)
    out = {}
    for key in ('builtin', 'eager', 'folded'):
        torch.manual_seed(0)
        anchors = AnchorGenerator(((32, 64, 128, 256, 512),) * 3, ((0.5, 1.0, 2.0),) * 3)
        out[key] = FasterRCNN(copy.deepcopy(backbones[key]), num_classes=91, rpn_anchor_generator=anchors,
                              **settings).eval()
    torch.manual_seed(0)
    out['mobilenetv3'] = fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, **settings).eval()
    # the same RPN and box-head weights in every detector
    heads = {k: v for k, v in out['eager'].state_dict().items() if k.startswith(('rpn.', 'roi_heads.'))}
    for key in ('builtin', 'folded', 'mobilenetv3'):
        out[key].load_state_dict(heads, strict=False)
    return out


def segmenters() -> Dict[str, torch.nn.Module]:
    import segmentation_models_pytorch as smp
    from timm.utils import reparameterize_model

    torch.manual_seed(0)
    ours = smp.Unet('tu-ghostnet_100', encoder_weights=None, feature_location='bottleneck', classes=21).eval()
    builtin = smp.Unet('tu-ghostnet_100', encoder_weights=None, classes=21)
    builtin.encoder.model = _builtin_features(out_indices=(0, 1, 2, 3, 4))  # the same taps, timm's own blocks
    return {
        'builtin': builtin.eval(),
        'eager': ours,
        'folded': reparameterize_model(ours),
        'mobilenetv3': smp.Unet('tu-mobilenetv3_large_100', encoder_weights=None, classes=21).eval(),
    }


def onnxruntime_fn(model: torch.nn.Module, size: int, threads: int, workdir: Path,
                   name: str) -> Callable[[torch.Tensor], Any]:
    """``model`` exported to ONNX at ``(1, 3, size, size)`` and run by ONNX Runtime (no spinning threads)."""
    import onnxruntime as ort

    path = workdir / f'{name}_{size}.onnx'
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(model, (torch.randn(1, 3, size, size),), str(path), input_names=['x'], dynamo=True,
                          verbose=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry('session.intra_op.allow_spinning', '0')
    sess = ort.InferenceSession(str(path), opts, providers=['CPUExecutionProvider'])
    return lambda x: sess.run(None, {'x': x.numpy()})


def macs(model: torch.nn.Module, x: Any) -> int:
    """Multiply-accumulates of one forward of ``x`` (FLOPs / 2; autograd on so the folded blocks run standard ops)."""
    from torch.utils.flop_counter import FlopCounterMode
    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


def _call(model: torch.nn.Module, x: Any) -> Callable[[], Any]:
    def run() -> Any:
        with torch.inference_mode():
            return model(x)
    return run


def measure_size(size: int, args: argparse.Namespace, workdir: Path,
                 log: Callable[[str], None]) -> Dict[str, Dict[str, Dict[str, Any]]]:
    """Every row of every group at ``size`` px, timed in one interleaved run."""
    x = torch.randn(1, 3, size, size)
    images = [torch.rand(3, size, size)]
    backbones = fpn_backbones()
    models = {'fpn': backbones, 'detector': detectors(backbones, size), 'segmenter': segmenters()}
    inputs = {'fpn': x, 'detector': images, 'segmenter': x}
    fns: Dict[str, Callable[[], Any]] = {}
    rows: Dict[str, Dict[str, Dict[str, Any]]] = {g: {} for g in GROUPS}
    for group, group_models in models.items():
        for key, model in group_models.items():
            rows[group][key] = {'label': ROWS[group][key], 'macs': macs(model, inputs[group])}
            fns[f'{group}/{key}'] = _call(model, inputs[group])
    for group in ('fpn', 'segmenter'):
        log(f'{size} px: exporting the folded {GROUPS[group]} to ONNX ...')
        run = onnxruntime_fn(models[group]['folded'], size, args.threads, workdir, group)
        rows[group]['onnxruntime'] = {'label': ROWS[group]['onnxruntime'], 'macs': rows[group]['folded']['macs']}
        fns[f'{group}/onnxruntime'] = (lambda r: lambda: r(x))(run)
    log(f'{size} px: timing {len(fns)} rows in {args.rounds} interleaved rounds ...')
    times = interleaved_latencies(fns, rounds=args.rounds, round_s=args.round_s)
    for name, values in times.items():
        group, key = name.split('/')
        rows[group][key].update(median_ms=statistics.median(values) * 1e3, calls=len(values))
    for group in GROUPS:
        base = rows[group]['builtin']['median_ms']
        for row in rows[group].values():
            row['speed_vs_builtin'] = base / row['median_ms']
    # the same heads on every GhostNet detector: the folded one must find what the eager one finds
    with torch.inference_mode():
        a, b = models['detector']['eager'](images)[0], models['detector']['folded'](images)[0]
    rows['detector']['folded']['detections'] = int(len(b['boxes']))
    rows['detector']['eager']['detections'] = int(len(a['boxes']))
    return {group: {k: rows[group][k] for k in ROWS[group]} for group in GROUPS}


def render_table(data: Dict[str, Any]) -> str:
    """The Markdown table of a ``dense.json``: per group and row, median ms, speed vs the built-in and GMACs, one
    column pair per size."""
    sizes = [str(s) for s in data['sizes']]
    m = data['machine']
    v = data['versions']
    load = f', 1-min load average {m["loadavg_at_start"][0]:g} -> {m["loadavg_at_end"][0]:g}' \
        if 'loadavg_at_end' in m else ''
    short = ' **(short smoke run: not a measurement)**' if data.get('short') else ''
    lines = [f'{m["cpu_model"]}, {data["threads"]} threads, fp32, batch 1, {data["date"][:10]}{load}; torch '
             f'{v["torch"]}, torchvision {v["torchvision"]}, timm {v["timm"]}, segmentation_models_pytorch '
             f'{v["segmentation_models_pytorch"]}, onnxruntime {v["onnxruntime"]}{short}. Medians of interleaved '
             f'rounds; speed relative to timm\'s built-in ghostnet_100 in the same group, measured side by side in '
             f'the same run; GMACs (FLOPs / 2) from torch.utils.flop_counter:', '']
    head = '| model | backbone | ' + ' | '.join(f'{s} px: ms | speed | GMACs' for s in sizes) + ' |'
    lines += [head, '|---|---|' + '---:|---:|---:|' * len(sizes)]
    for group, label in GROUPS.items():
        for key, row_label in ROWS[group].items():
            cells = []
            for s in sizes:
                row = data['results'][s][group][key]
                cells.append(f'{row["median_ms"]:.1f} | {row["speed_vs_builtin"]:.2f}x | {row["macs"] / 1e9:.2f}')
            lines.append(f'| {label} | {row_label} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def plot(data: Dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    sizes = [str(s) for s in data['sizes']]
    fig, axes = plt.subplots(1, len(GROUPS), figsize=(6 * len(GROUPS), 4.5))
    for ax, (group, label) in zip(axes, GROUPS.items()):
        keys = list(ROWS[group])
        width = 0.8 / len(sizes)
        for i, s in enumerate(sizes):
            values = [data['results'][s][group][k]['median_ms'] for k in keys]
            ax.barh([j + i * width for j in range(len(keys))], values, height=width, label=f'{s} px')
        ax.set_yticks([j + width * (len(sizes) - 1) / 2 for j in range(len(keys))])
        ax.set_yticklabels([ROWS[group][k] for k in keys], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel('median latency, batch 1 (ms)')
        ax.set_title(label)
        ax.legend()
    fig.suptitle(f'{data["machine"]["cpu_model"]}, {data["threads"]} threads')
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--sizes', default='320,512', help='image sides in px, comma-separated (default 320,512)')
    p.add_argument('--threads', type=int, default=2, help='torch and ONNX Runtime threads (default 2)')
    p.add_argument('--rounds', type=int, default=7, help='interleaved rounds (default 7)')
    p.add_argument('--round-s', type=float, default=0.6, help='seconds per row per round (default 0.6)')
    p.add_argument('--out', type=Path, default=RESULTS / 'dense.json', help='JSON path (PNG beside it)')
    p.add_argument('--docs', type=Path, default=None, help="write the table between the dense-table markers of "
                                                            "this Markdown file (docs/dense.md)")
    p.add_argument('--render', type=Path, default=None, help='only render the table of this JSON and exit')
    p.add_argument('--short', action='store_true', help='smoke run: 64 px, 1 round of 0.05 s')
    args = p.parse_args(argv)
    args.sizes = parse_int_list(args.sizes, '--sizes')
    if args.threads < 1:
        p.error(f'--threads must be >= 1, got {args.threads}')
    if args.short:
        args.sizes, args.rounds, args.round_s = [64], 1, 0.05
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    import json

    if args.render is not None:
        text = render_table(json.loads(args.render.read_text()))
        _write_docs(args.docs, text) if args.docs else print(text)
        return 0
    _quiet_imports()
    torch.set_num_threads(args.threads)
    start = time.time()
    data: Dict[str, Any] = {
        'kind': 'dense', 'date': now_iso(), 'threads': args.threads, 'sizes': args.sizes, 'batch': 1,
        'rounds': args.rounds, 'round_s': args.round_s, 'returned_layers': RETURNED_LAYERS, 'short': args.short,
        'machine': machine_info(args.threads), 'versions': versions(), 'gpu': gpu_section(), 'results': {},
    }
    import segmentation_models_pytorch as smp
    import torchvision
    data['versions'].update(torchvision=torchvision.__version__, segmentation_models_pytorch=smp.__version__)
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            data['results'][str(size)] = measure_size(size, args, Path(tmp), log=print)
    code = finish(data, args.out, start, plot)
    print(render_table(data))
    if args.docs:
        _write_docs(args.docs, render_table(data))
    return code


def _write_docs(path: Path, text: str) -> None:
    from report import write_between_markers
    write_between_markers(path, text, DOCS_MARKERS)
    print(f'wrote the table into {path}')


if __name__ == '__main__':
    sys.exit(main())
