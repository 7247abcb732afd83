"""ONNX export: opset >= 17, dynamic batch, ``pixel_values`` -> ``logits`` (and ``ood_score`` for a
``ScoredClassifier``), simplified, checked."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from vitft.core.errors import VitftError
from vitft.deploy.metadata_file import INPUT_NAME, OOD_OUTPUT, OUTPUT_NAME
from vitft.models.ood import ScoredClassifier

log = logging.getLogger(__name__)


def output_names(model: nn.Module) -> list[str]:
    """An export's outputs: logits, then the OOD score when the scorer is in the graph."""
    return [OUTPUT_NAME, OOD_OUTPUT] if isinstance(model, ScoredClassifier) else [OUTPUT_NAME]


def export_onnx(model: nn.Module, path: str | Path, image_size: list[int], opset: int = 18) -> Path:
    """Write ``model`` (pixel_values -> ``output_names(model)``) to ``path`` as a simplified,
    checked ONNX file."""
    import onnx
    import onnxslim

    if opset < 17:
        raise VitftError(f"opset={opset}: vitft exports need opset >= 17 (LayerNormalization)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    sample = torch.randn(2, 3, *image_size)
    outputs = output_names(model)
    with warnings.catch_warnings():
        # The TorchScript-based exporter warns that it is deprecated; its output is checked below.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (sample,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *outputs]},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    slim = onnxslim.slim(str(path))
    onnx.save(slim, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    log.info("onnx: wrote %s (opset %d, simplified, checked)", path, opset)
    return path
