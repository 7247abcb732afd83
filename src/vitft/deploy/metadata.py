"""metadata.json: what makes an exported model usable without vitft's config.

Every export folder holds one model file plus this file: labels, input size, normalisation, the
format, the outputs, the sha256 of the source model weights (so a deployed file can be traced to
its run), when the graph computes the OOD score, the threshold that makes it the unknown flag, and
the inspection operating point (ok classes and the threshold on P(defective)) of the model dir.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vitft import __version__
from vitft.core.files import sha256
from vitft.deploy.metadata_file import (
    INPUT_NAME,
    METADATA_FILE,
    OOD_OUTPUT,
    OUTPUT_NAME,
    metadata_operating_point,
    output_names_of,
    read_metadata,
    write_metadata,
)
from vitft.deploy.ort_backend import ExportScorer
from vitft.models.ood import OODScorer
from vitft.models.verdict import OperatingPoint

PARITY_FILE = "parity.json"
# metadata.json as plain data lives in vitft.deploy.metadata_file (no torch); still importable here.
__all__ = [
    "METADATA_FILE",
    "PARITY_FILE",
    "build_metadata",
    "metadata_operating_point",
    "output_names_of",
    "read_metadata",
    "sha256",
    "write_metadata",
]


def source_sha256(model_dir: str | Path) -> str | None:
    """Hash of the source model's weights (model.safetensors), None when there is no such file."""
    weights = Path(model_dir) / "model.safetensors"
    return sha256(weights) if weights.is_file() else None


def build_metadata(
    *,
    fmt: str,
    precision: str,
    runtime: str,
    file: str,
    labels: list[str],
    facts: dict,
    model_dir: str | Path | None,
    outputs: list[str] | None = None,
    ood: OODScorer | None = None,
    operating_point: OperatingPoint | None = None,
    **extra: Any,
) -> dict:
    """The metadata of one exported format; ``facts`` is ``processor_facts(processor)``,
    ``outputs`` the graph's (``onnx.output_names``), ``ood`` the scorer inside the graph,
    ``operating_point`` the model dir's (applied to the graph's logits by the Predictor)."""
    return {
        "format": fmt,
        "precision": precision,
        "runtime": runtime,
        "file": file,
        "labels": list(labels),
        "image_size": facts["image_size"],
        "image_mean": facts["image_mean"],
        "image_std": facts["image_std"],
        "input_name": INPUT_NAME,
        "input_layout": input_layout(facts.get("preprocessing") or {}),
        "preprocessing": facts.get("preprocessing"),
        "output_name": OUTPUT_NAME,
        "outputs": list(outputs or [OUTPUT_NAME]),
        "ood": ood_block(ood) if ood is not None else None,
        "operating_point": operating_point.to_dict() if operating_point is not None else None,
        "source_model": str(model_dir) if model_dir else None,
        "source_sha256": source_sha256(model_dir) if model_dir else None,
        "vitft_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def input_layout(steps: dict) -> str:
    """One line a reader without vitft can follow from a decoded RGB image to the input tensor."""
    order = steps.get("channel_order", "RGB")
    crop = ", center-cropped" if steps.get("center_crop") else ""
    filt = f" ({steps['resample']})" if steps.get("resample") else ""
    scale = "x * rescale_factor" if "rescale_factor" in steps else "x/255"
    norm = f"({scale} - mean) / std" if steps.get("normalize", True) else scale
    return f"NCHW float32, {order}, resized{filt}{crop}, then {norm}"


def ood_block(scorer: OODScorer) -> dict:
    """metadata.json's ``ood``: what turns the graph's ``ood_score`` into the unknown flag."""
    return {
        "output_name": OOD_OUTPUT,
        "method": scorer.method,
        "k": scorer.k,
        "views": scorer.views,
        "threshold": scorer.threshold,
        "acceptance": scorer.acceptance,
        "facts": dict(scorer.info),
    }


def metadata_scorer(meta: dict) -> OODScorer | None:
    """The scorer of an export's ``ood`` block (read by ``ExportScorer``) without its tensors
    (they are constants in the graph): what the unknown flag needs (threshold, method, views).
    None without a block."""
    block = ExportScorer.from_metadata(meta)
    if block is None:
        return None
    return OODScorer(
        block.method,
        {},
        k=block.k,
        views=block.views,
        threshold=block.threshold,
        acceptance=block.acceptance,
        info=block.info,
    )
