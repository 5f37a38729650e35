"""OpenVINO IR (``model.xml`` + ``model.bin``) through OpenVINO's own converter (``openvino.convert_model`` on the
``torch.export`` program, batch dynamic); int8 by NNCF's post-training quantization.

OpenVINO's CPU plugin runs an fp32 model in bf16 on CPUs with AVX512-BF16 / AMX unless ``INFERENCE_PRECISION_HINT``
says ``f32``, and the IR cannot carry that hint (the plugin ignores it in the model's ``runtime_options``): every
compile here states it (``f32`` for fp32 and int8, ``bf16`` for bf16) and ``export.json`` records it for users.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, Iterable, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from .form import int8_weights_saturate

NAME = 'openvino'
RUNTIME = 'openvino'
EXTRA = 'openvino'
PACKAGES = ('openvino', 'nncf')
PRECISIONS = ('fp32', 'bf16', 'int8')
QUANT_METHOD = ('nncf.quantize (defaults: performance preset, int8 per-channel weights; 7-bit weights, overflow_fix, '
                'on x86 CPUs without VNNI)')
ARTIFACT = 'model.xml'
HINTS = {'fp32': 'f32', 'int8': 'f32', 'bf16': 'bf16'}
MAX_COMPILED_SHAPES = 8  # input shapes a loaded export keeps compiled (least recently used dropped first)


def version() -> str:
    import openvino

    return openvino.__version__.split('-')[0]


def bf16_supported() -> bool:
    """Whether OpenVINO's CPU plugin reports native bf16 on this CPU."""
    import openvino as ov

    return 'BF16' in ov.Core().get_property('CPU', 'OPTIMIZATION_CAPABILITIES')


def build(model: nn.Module, example: torch.Tensor, out: Path, work: Path, precision: str,
          calib: Optional[Iterable[torch.Tensor]], max_batch: int) -> List[str]:
    """Write ``out/model.xml`` + ``out/model.bin`` (weights in fp32, or int8 with NNCF). Returns the artifact names."""
    import openvino as ov

    batch = torch.export.Dim('batch', min=1, max=4096)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    ov_model = ov.convert_model(program)
    ov_model.reshape([-1, *example.shape[1:]])  # static channels and size, dynamic batch
    if precision == 'int8':
        import nncf

        data = [image[None].numpy() for batch in calib for image in batch]  # NNCF counts dataset items as samples
        kwargs = {}
        if int8_weights_saturate():
            from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
            kwargs['advanced_parameters'] = AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE)
        ov_model = nncf.quantize(ov_model, nncf.Dataset(data), subset_size=len(data), **kwargs)
    ov.save_model(ov_model, out / ARTIFACT, compress_to_fp16=False)
    return [ARTIFACT, 'model.bin']


def compile_config(precision: str, threads: Optional[int] = None) -> dict:
    """The CPU plugin properties an export of ``precision`` runs with."""
    config = {'INFERENCE_PRECISION_HINT': HINTS[precision]}
    if threads:
        config['INFERENCE_NUM_THREADS'] = threads
    return config


def load(out: Path, precision: str, threads: Optional[int] = None, spin: bool = True,
         ) -> Callable[[np.ndarray], np.ndarray]:
    """A function running ``out/model.xml`` on an NCHW float32 array on OpenVINO's CPU plugin.

    The IR keeps a dynamic batch; each input shape met is compiled with that shape fixed (``Model.reshape``), which
    OpenVINO's CPU plugin runs faster than the dynamic-shape model (about 1.15x at batch 1 for ghostnet_100). The
    last ``MAX_COMPILED_SHAPES`` shapes stay compiled (``run.cache_info()`` says how many); an older one met again
    is compiled again. ``spin`` is ONNX Runtime's setting; OpenVINO's CPU plugin schedules its own threads."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(out / ARTIFACT)
    config = compile_config(precision, threads)

    @functools.lru_cache(maxsize=MAX_COMPILED_SHAPES)
    def request_for(shape: Tuple[int, ...]) -> Any:
        static = model.clone()
        static.reshape(list(shape))
        return core.compile_model(static, 'CPU', config).create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        return request_for(tuple(x.shape)).infer([x])[0].copy()

    run.cache_info = request_for.cache_info  # type: ignore[attr-defined]
    return run
