"""TFLite (LiteRT) export through litert-torch: float32, and dynamic-range int8 weights.

The graph has a fixed batch of 1 (what edge devices run); the runtime feeds images one by one.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from vitft.core.errors import VitftError

log = logging.getLogger(__name__)


def export_tflite(model: nn.Module, path: str | Path, image_size: list[int]) -> Path:
    """Convert ``model`` (pixel_values -> logits, NCHW float32, batch 1) to a .tflite file."""
    try:
        import litert_torch
    except ImportError as err:
        raise VitftError(
            "formats=[tflite] needs LiteRT: pip install litert-torch ai-edge-litert "
            "ai-edge-quantizer (the `edge` extra; see README, Deploy)"
        ) from err

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    edge_model = litert_torch.convert(model.eval().cpu(), (torch.randn(1, 3, *image_size),))
    edge_model.export(str(path))
    return path


def tflite_int8_dynamic(src: str | Path, dst: str | Path) -> Path:
    """Dynamic-range int8: int8 weights, float activations (AI Edge Quantizer, no calibration)."""
    from ai_edge_quantizer import quantizer, recipe

    qt = quantizer.Quantizer(str(src))
    qt.load_quantization_recipe(recipe.dynamic_wi8_afp32())
    result = qt.quantize()
    Path(dst).write_bytes(bytes(result.quantized_model))
    return Path(dst)
