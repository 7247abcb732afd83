"""What ``Predictor.from_path`` loads on the PyTorch side: a model dir or checkpoint (TorchBackend),
or an export run through ``vitft.deploy.runtime`` on torch tensors (ExportedBackend), with the
model's own image processor. Imported only when one of those is asked for: it loads torch and
transformers, which a predict on an ONNX Runtime export never needs (``vitft.deploy.ort_backend``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import AutoImageProcessor

from vitft.deploy.backends import Backend, ExportedBackend, TorchBackend
from vitft.deploy.metadata import metadata_operating_point, metadata_scorer
from vitft.deploy.ort_backend import export_scorer
from vitft.modelio.checkpoint import load_classifier
from vitft.modelio.hf import model_info
from vitft.modelio.ood import has_ood, load_ood
from vitft.modelio.operating_point import load_operating_point
from vitft.models.multilabel import is_multilabel

Parts = tuple[Backend, list[str], Any, dict]


def export_parts(folder: str | Path, device: str | None, ood: bool) -> Parts:
    """(backend, labels, image processor, Predictor arguments) of an export folder."""
    backend = ExportedBackend(folder, device=device)
    meta = backend.metadata
    scorer = export_scorer(backend, meta, ood, metadata_scorer)
    processor = AutoImageProcessor.from_pretrained(folder)
    args = {"ood": scorer, "operating_point": metadata_operating_point(meta), "meta": meta}
    return backend, meta["labels"], processor, args


def model_parts(
    model_dir: str | Path | None, ckpt_path: str | Path | None, device: str | None, ood: bool
) -> Parts:
    """(backend, labels, image processor, Predictor arguments) of a model dir or checkpoint."""
    model, processor = load_classifier(model_dir, ckpt_path)
    meta = {"multilabel": is_multilabel(model.config)}
    if model_dir:
        meta.update(model_info(model_dir))
    backend = TorchBackend(model, device, meta.get("training_precision", ""))
    scorer = load_ood(model_dir) if ood and has_ood(model_dir) else None
    point = load_operating_point(model_dir, model.labels)
    return backend, model.labels, processor, {"ood": scorer, "operating_point": point, "meta": meta}
