"""ONNX with a dynamic batch (``torch.onnx.export(dynamo=True)``), run with ONNX Runtime; int8 by ONNX Runtime's own
static quantizer (QDQ format, per-channel weights) on a form that quantizes whole: the SE gates' hard sigmoids folded
into their convs and their spatial means written as GlobalAveragePool, so that no float island is left between int8
nodes (``benchmarks/bench_forms.py --int8`` measures this form against the quantizer's other settings)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from .form import PAD_CHANNELS as FORM_PAD_CHANNELS
from .form import int8_weights_saturate

NAME = 'onnx'
RUNTIME = 'onnxruntime'
EXTRA = 'onnx'
PACKAGES = ('onnx', 'onnxscript', 'onnxruntime')
PRECISIONS = ('fp32', 'int8')
QUANT_METHOD = ('onnxruntime.quantization.quantize_static: QDQ, MinMax, uint8 activations, int8 per-channel weights '
                '(7-bit, reduce_range, on x86 CPUs without VNNI); SE gates folded into their convs, spatial means as '
                'GlobalAveragePool')
ARTIFACT = 'model.onnx'
# a GhostNet classifier's feature maps padded to multiples of this many channels (timm_ghost.export.form says why)
PAD_CHANNELS = FORM_PAD_CHANNELS


def form_options(precision: str) -> dict:
    """``export_form`` keywords of this runtime's exports: padded feature maps, and for int8 the SE gates' hard
    sigmoids folded into their expand convs (a hard sigmoid has no int8 kernel in ONNX Runtime; a Clip after a
    QLinearConv fuses into it)."""
    return {'pad': PAD_CHANNELS, 'fold_gates': precision == 'int8'}


def version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _export_fp32(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    batch = torch.export.Dim('batch', min=1, max=4096)
    program = torch.onnx.export(
        model, (example,), dynamo=True, input_names=['input'], output_names=['logits'],
        dynamic_shapes=({0: batch},), verbose=False)
    program.save(str(path))


class _Reader:
    """ONNX Runtime's ``CalibrationDataReader`` protocol over batches of NCHW tensors."""

    def __init__(self, batches: Iterable[torch.Tensor]) -> None:
        self._it = iter(batches)

    def get_next(self) -> Optional[dict]:
        batch = next(self._it, None)
        return None if batch is None else {'input': batch.numpy()}


def global_pools(src: Path, dst: Path) -> int:
    """Write ``src`` to ``dst`` with each spatial mean (``ReduceMean`` over axes 2 and 3 keeping dims, how
    ``torch.onnx`` writes ``x.mean((2, 3), keepdim=True)``) as a ``GlobalAveragePool``, the same function; returns how
    many. ONNX Runtime's quantizer has an int8 kernel for GlobalAveragePool (``QLinearGlobalAveragePool``) but none
    for ReduceMean, which stays float between a dequantize and a quantize (the SE gates' 15 pools in ghostnet_100)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == 'Constant' and node.attribute and node.attribute[0].name == 'value':
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    count = 0
    for node in model.graph.node:
        if node.op_type != 'ReduceMean':
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        axes = attrs.get('axes', constants.get(node.input[1]) if len(node.input) > 1 else None)
        if attrs.get('keepdims', 1) != 1 or axes is None or sorted(int(a) for a in np.ravel(axes)) not in ([2, 3],
                                                                                                       [-2, -1]):
            continue
        node.op_type = 'GlobalAveragePool'
        del node.input[1:]
        del node.attribute[:]
        count += 1
    onnx.save(model, str(dst))
    return count


def quantize(fp32: Path, out: Path, work: Path, calib: Iterable[torch.Tensor], exclude: Sequence[str] = (),
             pools: bool = True, **settings: Any) -> None:
    """Quantize the fp32 ONNX model ``fp32`` into ``out`` with ONNX Runtime's static quantizer (the settings of
    ``QUANT_METHOD``), calibrated on the NCHW batches ``calib``; ``exclude``: node names kept in float
    (``nodes_to_exclude``). ``work`` holds the pre-processed model. Spatial means become GlobalAveragePools first
    (:func:`global_pools`), so that they quantize too (``pools=False``: not). ``settings``: ``quantize_static``
    arguments in place of ``QUANT_METHOD``'s (``benchmarks/bench_forms.py`` measures the alternatives).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pools_path, prep = work / f'pools_{out.stem}.onnx', work / f'prep_{out.stem}.onnx'
    if pools:
        global_pools(fp32, pools_path)
    quant_pre_process(str(pools_path if pools else fp32), str(prep), skip_symbolic_shape=True)
    options = dict(quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                   weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                   reduce_range=int8_weights_saturate())
    quantize_static(str(prep), str(out), _Reader(calib), nodes_to_exclude=list(exclude), **{**options, **settings})


def build(model: nn.Module, example: torch.Tensor, out: Path, work: Path, precision: str,
          calib: Optional[Iterable[torch.Tensor]], max_batch: int) -> List[str]:
    """Write ``out/model.onnx``; ``work`` holds intermediate files. Returns the artifact names."""
    if precision == 'fp32':
        _export_fp32(model, example, out / ARTIFACT)
        return [ARTIFACT]
    _export_fp32(model, example, work / 'fp32.onnx')
    quantize(work / 'fp32.onnx', out / ARTIFACT, work, calib)
    return [ARTIFACT]


def session_options(threads: Optional[int] = None, spin: bool = True) -> Any:
    """The ``onnxruntime.SessionOptions`` an export runs with: ``threads`` intra-op threads (one inter-op thread), and
    ``spin``: whether idle intra-op threads spin between nodes (ONNX Runtime's default) instead of sleeping.

    Spinning is what makes a small network fast at batch 1: ghostnet_100 runs about 290 nodes per image, and with
    spinning off every node wakes the sleeping worker threads again (``benchmarks/bench_forms.py`` measures both).
    ``spin=False`` gives the cores back between nodes and runs, for a process sharing its CPU with other work."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry('session.intra_op.allow_spinning', '1' if spin else '0')
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


def load(out: Path, precision: str, threads: Optional[int] = None, spin: bool = True,
         ) -> Callable[[np.ndarray], np.ndarray]:
    """A function running ``out/model.onnx`` on an NCHW float32 array with ONNX Runtime's CPU provider
    (:func:`session_options`)."""
    import onnxruntime as ort

    session = ort.InferenceSession(
        str(out / ARTIFACT), session_options(threads, spin), providers=['CPUExecutionProvider'])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]
