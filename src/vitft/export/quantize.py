"""int8 quantization: ONNX Runtime (dynamic and static) and PyTorch dynamic (Linear layers)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vitft.export.onnx import INPUT_NAME

log = logging.getLogger(__name__)


def weight_matmuls(path: str | Path) -> list[str]:
    """MatMul/Gemm nodes with a weight (initializer) input: the Linear layers.

    The attention products (Q.K^T, softmax.V) multiply two activations; int8 there costs the most
    accuracy (softmax inputs/outputs have a wide range) for little speed, so they stay float.
    """
    import onnx

    graph = onnx.load(str(path)).graph
    weights = {init.name for init in graph.initializer}
    return [
        n.name
        for n in graph.node
        if n.op_type in ("MatMul", "Gemm") and any(i in weights for i in n.input)
    ]


def onnx_int8_dynamic(src: str | Path, dst: str | Path) -> Path:
    """Weights int8 ahead of time (per channel), activations quantized on the fly."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=QuantType.QInt8,
        per_channel=True,
        nodes_to_quantize=weight_matmuls(src),
    )
    return Path(dst)


class _Calibration:
    """onnxruntime CalibrationDataReader over a float32 (N, 3, H, W) array, one image at a time."""

    def __init__(self, images: np.ndarray):
        self._it = iter([{INPUT_NAME: images[i : i + 1]} for i in range(len(images))])

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # pragma: no cover - only called by some calibrators
        pass


def onnx_int8_static(src: str | Path, dst: str | Path, calibration: np.ndarray) -> Path:
    """Weights and activations int8 (QDQ), activation ranges calibrated on ``calibration``.

    Only the Linear layers' matrix multiplications are quantized: LayerNorm, Softmax, GELU and
    the attention products stay float, which is where ViT accuracy is lost under full int8.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(dst),
            _Calibration(calibration.astype(np.float32)),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul", "Gemm"],
            nodes_to_quantize=weight_matmuls(pre),
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    return Path(dst)


def torch_int8_dynamic(model: nn.Module, path: str | Path, image_size: list[int]) -> Path:
    """``torch.ao.quantization.quantize_dynamic`` on every nn.Linear, saved as TorchScript.

    TorchScript keeps the packed int8 weights and the graph in one file, so it reloads in a fresh
    process with ``torch.jit.load`` alone (no vitft, no transformers, no config).
    """
    qmodel = torch.ao.quantization.quantize_dynamic(
        model.eval().cpu(), {nn.Linear}, dtype=torch.qint8
    )
    with torch.inference_mode():
        traced = torch.jit.trace(qmodel, torch.randn(1, 3, *image_size), check_trace=False)
    torch.jit.save(traced, str(path))
    return Path(path)
