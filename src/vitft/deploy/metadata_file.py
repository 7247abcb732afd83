"""metadata.json as plain data: its name, the graph's input and output names it records, reading
and writing it, the export's outputs in order and its operating point. Imports no torch: a predict
on an ONNX Runtime export reads it without torch (``vitft.deploy.ort_backend``);
``vitft.deploy.metadata`` builds it."""

from __future__ import annotations

import json
from pathlib import Path

from vitft.core.errors import VitftError
from vitft.models.verdict import OperatingPoint

METADATA_FILE = "metadata.json"
# The graph's names (vitft.deploy.onnx exports with them).
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"
OOD_OUTPUT = "ood_score"


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


def model_file(folder: str | Path, meta: dict) -> Path:
    """The export's model file, named in its metadata.json; missing, a clear error."""
    path = Path(folder) / meta["file"]
    if not path.is_file():
        raise VitftError(f"{folder}: model file {meta['file']} named in {METADATA_FILE} is missing")
    return path


def output_names_of(meta: dict) -> list[str]:
    """The export's outputs in order; metadata without ``outputs`` is of a logits-only export."""
    return list(meta.get("outputs") or [meta.get("output_name", OUTPUT_NAME)])


def metadata_operating_point(meta: dict) -> OperatingPoint | None:
    """The export's ``operating_point`` block (None without one)."""
    block = meta.get("operating_point")
    return OperatingPoint.from_dict(block, f"{METADATA_FILE} operating_point") if block else None
