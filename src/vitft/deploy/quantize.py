"""int8 quantization: ONNX Runtime (dynamic and static) and PyTorch dynamic (Linear layers)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vitft.deploy.onnx import INPUT_NAME
from vitft.models.ood import ScoredClassifier

log = logging.getLogger(__name__)

# ONNX Runtime's x86 int8 kernels multiply uint8 activations by int8 weights with VPMADDUBSW on
# CPUs without VNNI (AVX2, AVX-512 before Cascade Lake): pairs of products are summed in a
# saturating int16, which overflows when full-range 8-bit weights meet large activations. 7-bit
# weights (reduce_range) cannot overflow it. Measured on a trained vit_tiny (AVX2 EPYC): mean
# |logit error| 5x lower for dynamic and 4x lower for static int8, at the same speed and size;
# on VNNI or ARM CPUs it costs one bit of weight precision, which per-channel scales make up for.
REDUCE_RANGE = True
# What metadata.json records about each ONNX int8 file (standard ONNX ops only: any ONNX runtime).
ONNX_INT8_FACTS = {
    "onnx_int8": {
        "method": "dynamic",
        "weights": "int8, per output channel, 7-bit range (reduce_range)",
        "activations": "uint8, per tensor, quantized at run time (DynamicQuantizeLinear)",
        "quantized_ops": "the backbone's Linear layers (MatMul with a weight); the rest float32",
        "ops": "standard ONNX (MatMulInteger, DynamicQuantizeLinear); no contrib ops",
    },
    "onnx_int8_static": {
        "method": "static (QDQ)",
        "weights": "int8, per output channel, 7-bit range (reduce_range)",
        "activations": "uint8, per tensor, ranges calibrated (MinMax) on training images",
        "quantized_ops": "the backbone's Linear layers (MatMul with a weight); the rest float32",
        "ops": "standard ONNX (QuantizeLinear, DequantizeLinear); no contrib ops",
    },
    "onnx_int8_trt": {
        "method": "static (QDQ), for TensorRT int8 engines",
        "weights": "int8, per output channel, symmetric (zero point 0), full 8-bit range",
        "activations": "int8, per tensor, symmetric (zero point 0), calibrated (MinMax)",
        "quantized_ops": "the backbone's Linear layers (MatMul with a weight); the rest float32",
        "ops": "standard ONNX (QuantizeLinear, DequantizeLinear); no contrib ops",
    },
}


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


HEAD_PREFIX = "/head/"  # ONNX node names of ImageClassifier.head (the classifier)
SCORER_PREFIX = "/scorer/"  # ONNX node names of ScoredClassifier.scorer (the OOD score)


def backbone_matmuls(path: str | Path) -> list[str]:
    """``weight_matmuls`` of the backbone: the classification head and the OOD scorer stay float.

    The head turns one token's features into the logits, so its quantization error goes straight
    into the decision. Static int8 quantizes its input with one calibrated per-tensor range; on
    six trained vit_tiny models a float head cut the mean |logit error| of static int8 1.6-3.3x and
    brought one of them from 95.6% to 100% top-1 agreement on val. ONNX Runtime's dynamic
    quantization leaves Gemm float anyway. It is a few thousand weights, so size and speed stay.
    The scorer's MatMul multiplies by its precision matrix (or kNN bank): int8 there moved the
    Mahalanobis score of a trained vit_tiny by up to 3x the threshold (float: 1.5%).
    """
    return [n for n in weight_matmuls(path) if not n.startswith((HEAD_PREFIX, SCORER_PREFIX))]


def onnx_int8_dynamic(src: str | Path, dst: str | Path) -> Path:
    """Weights int8 ahead of time (per channel, 7-bit), activations quantized on the fly."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=REDUCE_RANGE,
        nodes_to_quantize=backbone_matmuls(src),
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


def onnx_int8_static(
    src: str | Path, dst: str | Path, calibration: np.ndarray, tensorrt: bool = False
) -> Path:
    """Weights and activations int8 (QDQ), activation ranges calibrated on ``calibration``.

    Only the backbone's Linear layers are quantized: LayerNorm, Softmax, GELU and the attention
    products stay float, which is where ViT accuracy is lost under full int8, and so does the
    classification head (see ``backbone_matmuls``).
    Weights are per channel with a 7-bit range (see REDUCE_RANGE): on a trained vit_tiny that,
    not calibration, decided parity (MinMax, percentile and entropy calibration, 64 or 120
    images, symmetric int8 activations and QOperator did not fix it).

    ``tensorrt``: the QDQ form TensorRT builds int8 engines from: activations and weights signed
    int8, symmetric (zero point 0), full 8-bit weight range.
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
            nodes_to_quantize=backbone_matmuls(pre),
            per_channel=True,
            reduce_range=REDUCE_RANGE and not tensorrt,
            activation_type=QuantType.QInt8 if tensorrt else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": tensorrt, "WeightSymmetric": True},
        )
    return Path(dst)


def torch_int8_dynamic(model: nn.Module, path: str | Path, image_size: list[int]) -> Path:
    """``torch.ao.quantization.quantize_dynamic`` on the backbone's nn.Linear, saved as TorchScript
    (a ``ScoredClassifier``'s scorer has no Linear: it stays float and scores the int8 features).

    TorchScript keeps the packed int8 weights and the graph in one file, so it reloads in a fresh
    process with ``torch.jit.load`` alone (no vitft, no transformers, no config). The traced
    graph with the x86 engine was the fastest variant measured (ViT-Base, 2 threads: eager
    quantized module 1.65x eager fp32, traced 2.07x; fbgemm and onednn engines, eager attention,
    torch.jit.freeze and a fused QKV Linear were no faster). The classification head stays float,
    as in the ONNX int8 files: on five trained vit_tiny models the mean |logit error| at batch 1
    fell 1.1-2.6x, and one of them went from 97.8% to 100% val agreement.
    """
    scorer = model.scorer if isinstance(model, ScoredClassifier) else None
    classifier = model.model if scorer is not None else model
    qmodel = torch.ao.quantization.quantize_dynamic(
        classifier.eval().cpu(), {nn.Linear}, dtype=torch.qint8
    )
    if isinstance(getattr(classifier, "head", None), nn.Module):
        qmodel.head = classifier.head  # quantize_dynamic copied the model: this is the float head
    if scorer is not None:
        qmodel = ScoredClassifier(qmodel, scorer)
    with torch.inference_mode():
        traced = torch.jit.trace(qmodel, torch.randn(1, 3, *image_size), check_trace=False)
    torch.jit.save(traced, str(path))
    return Path(path)
