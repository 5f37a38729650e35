"""``timm-ghost demo``: the command line of the three demos (classification in :mod:`timm_ghost.demo`, detection
in :mod:`timm_ghost.detect_demo`, segmentation in :mod:`timm_ghost.segment_demo`); the demos know nothing of it."""
from __future__ import annotations

from typing import Any

from .demo import DEFAULT_DEMO_DIR, DemoConfig, format_results, run_demo

__all__ = ['register_cli']


def _run_dense(args: Any) -> int:
    """``timm-ghost demo --task detect|segment``: the full run of the task with its documented settings; ``--out``,
    ``--force``, ``--seed``, ``--threads`` and ``--no-progress`` apply, the classification settings do not."""
    from .dense_demo import DEFAULT_DIRS, default_config, format_dense_results

    if args.task == 'detect':
        from .detect_demo import run_detect_demo as run
    else:
        from .segment_demo import run_segment_demo as run
    classify = DemoConfig()
    for flag, name in (('--epochs', 'epochs'), ('--img-size', 'img_size'), ('--batch-size', 'batch_size'),
                       ('--lr', 'lr'), ('--workers', 'workers')):
        if getattr(args, name) != getattr(classify, name):
            raise ValueError(f'{flag} sets the classify task; --task {args.task} runs its documented settings '
                             '(change them through timm_ghost.dense_demo.DenseDemoConfig)')
    cfg = default_config(args.task)
    cfg.scenes.seed = args.seed
    cfg.threads = args.threads
    out = DEFAULT_DIRS[args.task] if args.out == DEFAULT_DEMO_DIR else args.out
    result = run(out, cfg, force=args.force, progress=not args.no_progress)
    print()
    print(format_dense_results(result))
    return 0


def _cmd_demo(args: Any) -> int:
    if args.task != 'classify':
        return _run_dense(args)
    cfg = DemoConfig(epochs=args.epochs, img_size=args.img_size, batch_size=args.batch_size, lr=args.lr,
                     seed=args.seed, workers=args.workers, threads=args.threads)
    result = run_demo(args.out, cfg, force=args.force, progress=not args.no_progress)
    print()
    print(format_results(result))
    print(f"\nnext: timm.create_model('local-dir:{result.model_dir}', pretrained=True); "
          f'timm-ghost predict IMAGE --weights {result.model_dir}')
    return 0


def register_cli(sub: Any) -> None:
    """Add ``timm-ghost demo``."""
    d = DemoConfig()
    p = sub.add_parser(
        'demo', help='the whole loop offline on real data: train ghostnet_050 on digits, save, reload, fuse, time',
        description='Build a handwritten-digits ImageFolder, train ghostnet_050 on it with timm.data / timm.optim / '
                    'timm.scheduler / timm.task, save a Hub-ready folder (model.safetensors + config.json), reload it '
                    "through timm.create_model('local-dir:...'), fuse it for deploy and compare predictions and "
                    'speed. Writes OUT/data, OUT/model and OUT/results.json.')
    p.add_argument('--task', choices=('classify', 'detect', 'segment'), default='classify',
                   help='classify (default): this demo; detect / segment: Faster R-CNN / smp FPN on GhostNet, trained '
                        'on scenes of digits from these digits weights (docs/dense.md)')
    p.add_argument('--out', default=DEFAULT_DEMO_DIR, metavar='OUT',
                   help=f'output folder (default ./{DEFAULT_DEMO_DIR}); must be new or empty unless --force')
    p.add_argument('--force', action='store_true', help='replace a non-empty OUT (only once the run succeeded)')
    p.add_argument('--epochs', type=int, default=d.epochs, help=f'training epochs (default {d.epochs})')
    p.add_argument('--img-size', type=int, default=d.img_size, help=f'image side in pixels (default {d.img_size})')
    p.add_argument('--batch-size', type=int, default=d.batch_size, help=f'batch size (default {d.batch_size})')
    p.add_argument('--lr', type=float, default=d.lr, help=f'peak learning rate, SGD (default {d.lr})')
    p.add_argument('--seed', type=int, default=d.seed, help=f'seed of the split, init and order (default {d.seed})')
    p.add_argument('--workers', type=int, default=d.workers, help=f'data loader workers (default {d.workers})')
    p.add_argument('--threads', type=int, default=d.threads,
                   help=f"torch CPU threads (default {d.threads}: robust on a shared CPU; 0: torch's choice)")
    p.add_argument('--no-progress', action='store_true', help='one line per epoch instead of progress bars')
    p.set_defaults(func=_cmd_demo)
