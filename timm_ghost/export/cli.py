"""``timm-ghost export MODEL OUT --format onnx|openvino|executorch|auto [--precision fp32|bf16|int8|auto]``."""
from __future__ import annotations

import argparse
from typing import Any

from .api import AUTO, FORMATS, PRECISIONS

_EPILOG = """runtime packages (optional extras, not installed with timm-ghost):
  onnx        ONNX + ONNX Runtime       pip install "timm-ghost[onnx]"        (onnx, onnxscript, onnxruntime)
  openvino    OpenVINO IR + NNCF        pip install "timm-ghost[openvino]"    (openvino, nncf)
  executorch  ExecuTorch .pte, XNNPACK  pip install "timm-ghost[executorch]"  (executorch)
  all three:                            pip install "timm-ghost[export]"

precisions: fp32 (every format; logits verified within 1e-4 of the eval-mode model at batch 1 and 3),
bf16 (openvino on CPUs with native bf16; within 5% of the largest logit), int8 (every format; needs --calib,
static post-training quantization with the runtime's own tool, top-1 agreement with fp32 checked on held-out
images of --calib, at least 32 of them). An int8 export is also timed against fp32 on this CPU at batch 1 and
--max-batch: the speeds go into export.json, and one warning line says so where int8 is the slower.

--format auto (every installed runtime) and / or --precision auto (fp32 and int8, bf16 where the CPU has it; needs
--calib): every candidate built and verified, timed here at batch 1 and --batch, the fastest at --batch kept in OUT
and the table of all printed and recorded in export.json.

OUT gets the artifact and export.json (preprocessing, labels, runtime, verification). Quiet by default: the result
and its numbers only (--verbose for the steps and the runtimes' output)."""


def _cmd_export(args: Any) -> int:
    from .._io import check_output_dir
    from ..predict import load_model
    from .api import auto_table, export_model, require_runtime

    if args.format != AUTO:
        require_runtime(args.format)  # before loading weights: a missing extra is the first thing to say
    if args.precision == AUTO and args.calib is None:
        raise ValueError('--precision auto needs --calib DIR: it compares fp32 with int8, which calibrates on those '
                         'images')
    check_output_dir(args.out, args.force)
    model, source = load_model(args.model, args.weights, args.tag)
    result = export_model(
        model, args.out, args.format, args.precision, calib=args.calib, calib_size=args.calib_size,
        min_agreement=args.min_agreement, img_size=args.img_size, fold=not args.no_fold,
        max_batch=args.max_batch, batch=args.batch, speed_check=not args.no_speed_check, force=args.force,
        model_name=args.model, weights_source=source, verbose=args.verbose, progress=True,
        log=print if args.verbose else lambda msg: None)
    meta = result.metadata
    if 'auto' in meta:
        print(f'fastest verified export on this CPU at batch {meta["auto"]["batch"]}: {meta["auto"]["chosen"]}')
        print(auto_table(meta))
    if not args.verbose:
        print(f'wrote {result.out}: {", ".join(result.files)}')
    if 'speed' in meta:
        sp = meta['speed']
        print(f'{meta["format"]} int8 vs fp32 on this CPU: ' + ', '.join(
            f'batch {b}: {sp["images_per_s"]["int8"][b]:.0f} vs {sp["images_per_s"]["fp32"][b]:.0f} images/s '
            f'({r:.2f}x)' for b, r in sp['int8_vs_fp32'].items()))
    v = meta['verification']
    if 'max_abs_diff' in v:
        print('max |logit diff| vs eval-mode PyTorch: ' + ', '.join(
            f'batch {b}: {d:.2e}' for b, d in v['max_abs_diff'].items()) + (
            f' (tolerance {v["tolerance"]:.2g})' if 'tolerance' in v else ''))
    if v.get('heldout_top1_agreement') is not None:
        print(f'top-1 agreement with fp32 on {v["heldout_images"]} held-out images: '
              f'{100 * v["heldout_top1_agreement"]:.1f} %')
    return 0


def register_cli(sub: Any) -> None:
    """Add ``timm-ghost export``."""
    p = sub.add_parser(
        'export', help='export to ONNX Runtime, OpenVINO or ExecuTorch (fp32, bf16, int8), verified',
        description='Export the BN-folded deploy model to a runtime, check the artifact against the eval-mode '
                    'PyTorch model with that runtime, and only then write it into OUT.',
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('model', metavar='MODEL',
                   help='ghostnet_050 / ghostnet_100 / ghostnet_130 (with --tag or --weights), or hf-hub:ID / '
                        'local-dir:PATH')
    p.add_argument('out', metavar='OUT', help='output folder (new or empty; see --force)')
    p.add_argument('--format', required=True, choices=FORMATS + (AUTO,),
                   help='target runtime (auto: the fastest verified one installed, timed here)')
    p.add_argument('--precision', default='fp32', choices=PRECISIONS + (AUTO,),
                   help='default fp32 (auto: the fastest verified one, timed here; needs --calib)')
    p.add_argument('--tag', default=None, help='pretrained tag of MODEL (e.g. in1k)')
    p.add_argument('--weights', '--checkpoint', dest='weights', default=None, metavar='PATH',
                   help='local weights: a .safetensors / .pth file, or a folder with model.safetensors + config.json')
    p.add_argument('--calib', default=None, metavar='DIR',
                   help='ImageFolder of calibration images (needed for int8; for fp32 / bf16 it adds a held-out '
                        'top-1 agreement check)')
    p.add_argument('--calib-size', type=int, default=256, metavar='N', help='calibration images (default 256)')
    p.add_argument('--min-agreement', type=float, default=0.9,
                   help='int8: least top-1 agreement with fp32 on held-out images (default 0.9)')
    p.add_argument('--img-size', type=int, default=None, help="input size (default: the model's pretrained cfg)")
    p.add_argument('--max-batch', type=int, default=32, help='executorch: largest batch size (default 32; at least 17)')
    p.add_argument('--batch', type=int, default=1, metavar='N',
                   help='auto: the batch size the fastest is chosen at (default 1; batch 1 is timed too)')
    p.add_argument('--no-speed-check', action='store_true',
                   help='int8: skip timing it against fp32 on this CPU (an fp32 build and a few seconds)')
    p.add_argument('--no-fold', action='store_true', help='export the eval model as it is, not the deploy form')
    p.add_argument('--force', action='store_true', help='replace a non-empty OUT')
    p.add_argument('--verbose', action='store_true',
                   help="show each step and the exporters' and runtimes' own output (progress bars, logs, warnings)")
    p.set_defaults(func=_cmd_export)
