"""metadata.json: what makes an exported model usable without vitft's config.

Every export folder holds one model file plus this file: labels, input size, normalisation, the
format, the outputs, the sha256 of the source model weights (so a deployed file can be traced to
its run), when the graph computes the OOD score, the threshold that makes it the unknown flag, and
the inspection operating point (ok classes and the threshold on P(defective)) of the model dir.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vitft import __version__
from vitft.core.errors import VitftError
from vitft.core.files import sha256
from vitft.deploy.onnx import INPUT_NAME, OOD_OUTPUT, OUTPUT_NAME
from vitft.models.ood import OODScorer
from vitft.models.operating_point import OperatingPoint

METADATA_FILE = "metadata.json"
PARITY_FILE = "parity.json"
__all__ = ["METADATA_FILE", "PARITY_FILE", "build_metadata", "read_metadata", "sha256"]


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
        "input_layout": "NCHW float32, RGB, resized then (x/255 - mean) / std",
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


def write_metadata(folder: str | Path, meta: dict) -> Path:
    path = Path(folder) / METADATA_FILE
    path.write_text(json.dumps(meta, indent=2))
    return path


def read_metadata(folder: str | Path) -> dict:
    path = Path(folder) / METADATA_FILE
    if not path.is_file():
        raise VitftError(
            f"{folder} has no {METADATA_FILE}: point at a folder written by export.py "
            "(e.g. outputs/<run>/export/onnx) or at an HF model dir (outputs/<run>/model)"
        )
    return json.loads(path.read_text())


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
    """The scorer of an export's ``ood`` block without its tensors (they are constants in the
    graph): what the unknown flag needs (threshold, method, views). None without a block."""
    block = meta.get("ood")
    if not block:
        return None
    return OODScorer(
        block["method"],
        {},
        k=int(block.get("k", 5)),
        views=block["views"],
        threshold=float(block["threshold"]),
        acceptance=block.get("acceptance"),
        info=block.get("facts"),
    )


def metadata_operating_point(meta: dict) -> OperatingPoint | None:
    """The export's ``operating_point`` block (None without one)."""
    block = meta.get("operating_point")
    return OperatingPoint.from_dict(block, f"{METADATA_FILE} operating_point") if block else None


def output_names_of(meta: dict) -> list[str]:
    """The export's outputs in order; metadata without ``outputs`` is of a logits-only export."""
    return list(meta.get("outputs") or [meta.get("output_name", OUTPUT_NAME)])
