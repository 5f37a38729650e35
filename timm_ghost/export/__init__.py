"""Verified exports to ONNX Runtime, OpenVINO and ExecuTorch (XNNPACK), in fp32, bf16 or int8.

    from timm_ghost.export import export_model, export_module, load_export
    export_model(model, 'out/ghostnet_onnx', format='onnx')              # fp32, verified to 1e-4
    export_model(model, 'out/ghostnet_ov_int8', format='openvino', precision='int8', calib='data/train')
    run = load_export('out/ghostnet_onnx'); logits = run(images_nchw_float32)
    export_module(unet, 'out/unet_onnx', format='onnx', input_size=(3, 256, 256))  # any image module, one tensor out

Each format needs its runtime's packages, installed by an optional extra: ``timm-ghost[onnx]``,
``timm-ghost[openvino]``, ``timm-ghost[executorch]`` (all three: ``timm-ghost[export]``).
"""
from .api import (
    BF16_RTOL,
    FORMATS,
    FP32_ATOL,
    MIN_HOLDOUT,
    PRECISIONS,
    ExportResult,
    calibration_split,
    export_model,
    export_module,
    load_export,
    require_runtime,
    runtime_for,
)
from .cli import register_cli
from .form import export_form

__all__ = [
    'FORMATS', 'PRECISIONS', 'FP32_ATOL', 'BF16_RTOL', 'MIN_HOLDOUT', 'ExportResult', 'export_model', 'export_module',
    'load_export', 'export_form', 'runtime_for', 'require_runtime', 'calibration_split', 'register_cli',
]
