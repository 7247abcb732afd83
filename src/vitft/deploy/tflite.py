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
    """Convert ``model`` (pixel_values -> logits, or a ``ScoredClassifier``'s (logits, ood_score);
    NCHW float32, batch 1) to a .tflite file."""
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


# Tensors of ScoredClassifier.scorer, as litert-torch names them (".../OODScorer_scorer;3").
SCORER_TENSORS = r".*_scorer[;/].*"


def tflite_int8_dynamic(src: str | Path, dst: str | Path) -> Path:
    """Dynamic-range int8: int8 weights, float activations (AI Edge Quantizer, no calibration).

    The OOD scorer stays float: int8 of its precision matrix moved the score by up to 29% of the
    threshold on a trained vit_tiny (float: 0.7%, as the backbone's int8 alone gives).
    """
    from ai_edge_quantizer import quantizer, recipe

    keep_float = {"regex": SCORER_TENSORS, "operation": "*", "algorithm_key": "no_quantize"}
    qt = quantizer.Quantizer(str(src))
    qt.load_quantization_recipe([*recipe.dynamic_wi8_afp32(), keep_float])
    result = qt.quantize()
    Path(dst).write_bytes(bytes(result.quantized_model))
    return Path(dst)
