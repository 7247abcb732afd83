"""The export formats: what each one is (``FORMATS``) and how its model file is written."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from vitft.core.errors import VitftError
from vitft.deploy import onnx as onnx_export
from vitft.deploy import openvino, quantize, tflite
from vitft.deploy.parity import (
    ImageSet,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Format:
    runtime: str
    precision: str
    file: str
    description: str


FORMATS: dict[str, Format] = {
    "onnx": Format("onnxruntime", "fp32", "model.onnx", "ONNX fp32, simplified"),
    "onnx_int8": Format("onnxruntime", "int8", "model.onnx", "ONNX Runtime dynamic int8"),
    "onnx_int8_static": Format(
        "onnxruntime", "int8", "model.onnx", "ONNX Runtime static int8 (QDQ, calibrated)"
    ),
    "onnx_int8_trt": Format(
        "onnxruntime",
        "int8",
        "model.onnx",
        "ONNX QDQ int8 for TensorRT (signed, symmetric, zero point 0; calibrated)",
    ),
    "torch_int8": Format("torchscript", "int8", "model.pt", "PyTorch dynamic int8 (Linear)"),
    "tflite": Format("litert", "fp32", "model.tflite", "LiteRT fp32"),
    "tflite_int8": Format("litert", "int8", "model.tflite", "LiteRT dynamic-range int8"),
    "openvino": Format("openvino", "fp32", "model.xml", "OpenVINO IR fp32"),
    "openvino_int8": Format(
        "openvino", "int8", "model.xml", "OpenVINO IR int8 (NNCF post-training, calibrated)"
    ),
}
# Formats that quantize with activation statistics of calibration images (train split).
CALIBRATED = ("onnx_int8_static", "onnx_int8_trt", "openvino_int8")


def check_formats(formats: list[str]) -> list[str]:
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise VitftError(f"formats={unknown} unknown; choose from {sorted(FORMATS)}")
    if not formats:
        raise VitftError(f"formats=[] is empty; choose from {sorted(FORMATS)}")
    return list(dict.fromkeys(formats))


def write_format(
    fmt: str,
    model: torch.nn.Module,
    dst: Path,
    size: list[int],
    cache: Path,
    calibration: ImageSet | None,
    opset: int,
) -> None:
    """Write format ``fmt`` of ``model`` (the classifier, or a ``ScoredClassifier``: logits and
    ood_score) to the file ``dst``; fp32 intermediates live in cache."""

    def fp32_onnx() -> Path:
        path = cache / "fp32.onnx"
        return path if path.is_file() else onnx_export.export_onnx(model, path, size, opset)

    def fp32_tflite() -> Path:
        path = cache / "fp32.tflite"
        return path if path.is_file() else tflite.export_tflite(model, path, size)

    if fmt == "onnx":
        shutil.copy(fp32_onnx(), dst)
    elif fmt == "onnx_int8":
        quantize.onnx_int8_dynamic(fp32_onnx(), dst)
    elif fmt == "onnx_int8_static":
        assert calibration is not None
        quantize.onnx_int8_static(fp32_onnx(), dst, calibration.x)
    elif fmt == "onnx_int8_trt":
        assert calibration is not None
        quantize.onnx_int8_static(fp32_onnx(), dst, calibration.x, tensorrt=True)
    elif fmt == "torch_int8":
        quantize.torch_int8_dynamic(model, dst, size)
    elif fmt == "tflite":
        shutil.copy(fp32_tflite(), dst)
    elif fmt == "tflite_int8":
        tflite.tflite_int8_dynamic(fp32_tflite(), dst)
    elif fmt == "openvino":
        openvino.export_openvino(fp32_onnx(), dst)
    elif fmt == "openvino_int8":
        assert calibration is not None
        openvino.openvino_int8(fp32_onnx(), dst, calibration.x)
