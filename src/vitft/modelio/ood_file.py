"""The names of the OOD scorer's files in a model dir, and whether it has one. Imports no torch:
a predict on an ONNX Runtime export asks it (``vitft.deploy.ort_backend``); the files are written
and read in ``vitft.modelio.ood``."""

from __future__ import annotations

from pathlib import Path

OOD_JSON = "ood.json"
OOD_TENSORS = "ood.safetensors"


def has_ood(model_dir: str | Path | None) -> bool:
    return bool(model_dir) and (Path(model_dir) / OOD_JSON).is_file()
