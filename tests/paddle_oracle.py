"""PaddleClas's own GhostNet as the test oracle; run with the Paddle environment's interpreter (not torch's).

    $TIMM_GHOST_PADDLE_PYTHON tests/paddle_oracle.py --scale 0.5 --out DIR

Builds ``ppcls.arch.backbone.model_zoo.ghostnet.GhostNet(scale)`` from the installed ``paddleclas``, perturbs every
BatchNorm's affine parameters and the SE gate biases, fills the running statistics from real forward passes in train
mode, and writes to DIR:

- ``structured.pdparams``: ``paddle.save(model.state_dict())``, keyed ``conv1._conv.weight``, ...
- ``names.pdparams``: the same tensors keyed by Paddle's parameter names (``conv1_weights``, ...), the legacy form
- ``input.npy`` / ``logits.npy``: a fixed batch and Paddle's eval-mode logits for it
- ``meta.json``: versions, scale, logit statistics

One model per process: Paddle's parameter names are global to a process.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--scale', type=float, required=True, help='GhostNet width (0.5, 1.0, 1.3)')
    parser.add_argument('--out', required=True, help='folder to write into (created)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--batch', type=int, default=2, help='images in the evaluated batch')
    parser.add_argument('--size', type=int, default=224, help='image size of the evaluated batch')
    parser.add_argument('--stat-passes', type=int, default=4, help='train-mode passes that fill the BN statistics')
    args = parser.parse_args()

    import numpy as np
    import paddle
    from paddleclas.ppcls.arch.backbone.model_zoo.ghostnet import GhostNet, SEBlock

    paddle.set_device('cpu')
    paddle.seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = GhostNet(scale=args.scale)

    with paddle.no_grad():
        for layer in model.sublayers():
            if isinstance(layer, paddle.nn.BatchNorm):
                n = layer.weight.shape[0]
                layer.weight.set_value((1 + 0.25 * rng.standard_normal(n)).astype('float32'))
                layer.bias.set_value((0.1 * rng.standard_normal(n)).astype('float32'))
                layer._momentum = 0.5  # statistics mostly from the passes below, not from the (0, 1) init
            elif isinstance(layer, SEBlock):  # gates spread over clip's linear range and both saturations
                n = layer.excitation.bias.shape[0]
                layer.excitation.bias.set_value((0.5 + 0.5 * rng.standard_normal(n)).astype('float32'))
        model.train()
        for _ in range(args.stat_passes):
            model(paddle.to_tensor(rng.standard_normal((8, 3, 128, 128)).astype('float32')))
        model.eval()
        x = rng.standard_normal((args.batch, 3, args.size, args.size)).astype('float32')
        logits = model(paddle.to_tensor(x)).numpy()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    paddle.save(state, str(out / 'structured.pdparams'))
    paddle.save({v.name: v for v in state.values()}, str(out / 'names.pdparams'))
    np.save(out / 'input.npy', x)
    np.save(out / 'logits.npy', logits)
    meta = dict(paddle=paddle.__version__, scale=args.scale, seed=args.seed, keys=len(state),
                logits_std=float(logits.std()), logits_max_abs=float(np.abs(logits).max()),
                python=sys.version.split()[0], pid=os.getpid())
    (out / 'meta.json').write_text(json.dumps(meta, indent=1))
    print(json.dumps(meta))
    return 0


if __name__ == '__main__':
    sys.exit(main())
