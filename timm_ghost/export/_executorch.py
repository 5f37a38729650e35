"""ExecuTorch ``.pte`` lowered to XNNPACK (the CPU backend ExecuTorch ships for phones and desktops), run with
ExecuTorch's own runtime; int8 by PT2E quantization with the XNNPACK quantizer (symmetric, per-channel weights)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, List, Optional

import numpy as np
import torch
import torch.nn as nn

NAME = 'executorch'
RUNTIME = 'executorch'
EXTRA = 'executorch'
PACKAGES = ('executorch',)
PRECISIONS = ('fp32', 'int8')
# the oldest torch ExecuTorch exports were verified on: executorch 1.5 calls torch APIs that torch 2.6 lacks
# (torch.utils._pytree.register_constant), and only torch 2.14 was tested with it
MIN_TORCH = (2, 14)
QUANT_METHOD = 'PT2E with the XNNPACK quantizer: symmetric int8, per-channel weights'
ARTIFACT = 'model.pte'


def version() -> str:
    from importlib.metadata import version as dist_version

    return dist_version('executorch')


# ExecuTorch 1.5 lowering the dynamic batch: traced at a batch below 16 the input's memory plan was bounded at 15
# images, and traced at exactly 16 an intermediate map was planned static (16, C, 1, 1); traced at 17 or more every
# batch up to the bound ran. So the program is traced at its bound, and the bound is at least 17.
MIN_BOUND = 17


def batch_bound(max_batch: int) -> int:
    """The largest batch an export asked for ``max_batch`` accepts."""
    return max(max_batch, MIN_BOUND)


def _export(model: nn.Module, example: torch.Tensor, max_batch: int) -> torch.export.ExportedProgram:
    bound = batch_bound(max_batch)
    batch = torch.export.Dim('batch', min=1, max=bound)
    example = example[:1].expand(bound, *example.shape[1:]).contiguous()
    return torch.export.export(model, (example,), dynamic_shapes=({0: batch},), strict=False)


def build(model: nn.Module, example: torch.Tensor, out: Path, work: Path, precision: str,
          calib: Optional[Iterable[torch.Tensor]], max_batch: int) -> List[str]:
    """Write ``out/model.pte`` (batch sizes 1 to ``batch_bound(max_batch)``). Returns the artifact names."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    if precision == 'int8':
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        prepared = prepare_pt2e(_export(model, example, max_batch).module(), quantizer)
        with torch.no_grad():
            for batch in calib:
                prepared(batch)
        model = convert_pt2e(prepared)
    program = _export(model, example, max_batch)
    lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
    (out / ARTIFACT).write_bytes(lowered.buffer)
    return [ARTIFACT]


_threads: Optional[int] = None


def set_threads(threads: int) -> None:
    """Size ExecuTorch's shared threadpool (XNNPACK's workers) to ``threads``, once per change."""
    global _threads
    if threads != _threads:
        from .._compat import executorch_reset_threadpool

        executorch_reset_threadpool()(threads)
        _threads = threads


def load(out: Path, precision: str, threads: Optional[int] = None, spin: bool = True,
         ) -> Callable[[np.ndarray], np.ndarray]:
    """A function running ``out/model.pte`` on an NCHW float32 array with ExecuTorch's runtime. ``spin`` is ONNX
    Runtime's setting; ExecuTorch's threadpool is shared by the process (:func:`set_threads`)."""
    from executorch.runtime import Runtime

    if threads:
        set_threads(threads)
    method = Runtime.get().load_program(out / ARTIFACT).load_method('forward')
    return lambda x: method.execute([torch.from_numpy(x)])[0].numpy()
