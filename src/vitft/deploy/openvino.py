"""OpenVINO IR export: fp32 from the ONNX graph, and int8 by NNCF post-training quantization.

``model.xml`` (graph) + ``model.bin`` (weights) run with ``openvino.Core`` on Intel CPUs (and
iGPUs/NPUs); int8 uses the calibration images like ``onnx_int8_static`` (``calibration_images``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vitft.core.errors import VitftError
from vitft.deploy.quantize import SCORER_PREFIX


def _ov():
    try:
        import openvino as ov
    except ImportError as err:
        raise VitftError(
            f'formats=[openvino*] needs OpenVINO ({err}): pip install "vitft[openvino]"'
        ) from err
    return ov


def export_openvino(onnx_path: str | Path, dst: str | Path) -> Path:
    """fp32 IR (``dst`` = .../model.xml, weights in model.bin beside it) of an ONNX model."""
    ov = _ov()
    model = ov.convert_model(str(onnx_path))
    ov.save_model(model, str(dst), compress_to_fp16=False)  # fp16 weights would cost parity
    return Path(dst)


def openvino_int8(onnx_path: str | Path, dst: str | Path, calibration: np.ndarray) -> Path:
    """int8 IR: NNCF post-training quantization calibrated on ``calibration`` (N, 3, H, W); the
    OOD scorer's nodes stay float (see ``quantize.backbone_matmuls``)."""
    ov = _ov()
    try:
        import nncf
    except ImportError as err:
        raise VitftError(
            f'formats=[openvino_int8] needs NNCF ({err}): pip install "vitft[openvino]"'
        ) from err
    model = ov.convert_model(str(onnx_path))
    data = nncf.Dataset([np.ascontiguousarray(x[None], np.float32) for x in calibration])
    quantized = nncf.quantize(
        model,
        data,
        model_type=nncf.ModelType.TRANSFORMER,  # keeps softmax/LayerNorm paths accurate
        subset_size=len(calibration),
        ignored_scope=nncf.IgnoredScope(patterns=[f"{SCORER_PREFIX}.*"], validate=False),
    )
    ov.save_model(quantized, str(dst), compress_to_fp16=False)
    return Path(dst)
