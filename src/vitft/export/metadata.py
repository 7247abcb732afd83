"""metadata.json: what makes an exported model usable without vitft's config.

Every export folder holds one model file plus this file: labels, input size, normalisation, the
format and the sha256 of the source model weights (so a deployed file can be traced to its run).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vitft import __version__
from vitft.errors import VitftError
from vitft.weights import sha256

METADATA_FILE = "metadata.json"
PARITY_FILE = "parity.json"


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
    **extra: Any,
) -> dict:
    """The metadata of one exported format; ``facts`` is ``processor_facts(processor)``."""
    return {
        "format": fmt,
        "precision": precision,
        "runtime": runtime,
        "file": file,
        "labels": list(labels),
        "image_size": facts["image_size"],
        "image_mean": facts["image_mean"],
        "image_std": facts["image_std"],
        "input_name": "pixel_values",
        "input_layout": "NCHW float32, RGB, resized then (x/255 - mean) / std",
        "output_name": "logits",
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
