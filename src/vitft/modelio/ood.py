"""The OOD scorer's files in a model dir: ``ood.json`` (method, threshold, facts) and
``ood.safetensors`` (its tensors). Plain JSON and safetensors: loading runs no code."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from vitft.core.errors import VitftError
from vitft.modelio.ood_file import OOD_JSON, OOD_TENSORS, has_ood
from vitft.models.ood import OODScorer

__all__ = ["OOD_JSON", "OOD_TENSORS", "has_ood", "load_ood", "save_ood"]


def save_ood(scorer: OODScorer, model_dir: str | Path) -> Path:
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.contiguous() for name, t in scorer.tensors.items()}
    save_file(tensors, str(model_dir / OOD_TENSORS))
    doc = {
        "method": scorer.method,
        "k": scorer.k,
        "views": scorer.views,
        "threshold": scorer.threshold,
        "acceptance": scorer.acceptance,
        **scorer.info,
    }
    (model_dir / OOD_JSON).write_text(json.dumps(doc, indent=2))
    return model_dir / OOD_JSON


def load_ood(model_dir: str | Path) -> OODScorer:
    model_dir = Path(model_dir)
    if not (model_dir / OOD_TENSORS).is_file():
        raise VitftError(
            f"{model_dir / OOD_JSON} has no {OOD_TENSORS} next to it: retrain, or delete "
            f"{OOD_JSON} to predict without the unknown flag"
        )
    doc = json.loads((model_dir / OOD_JSON).read_text())
    if "views" not in doc:
        # Scorers from before L2-normalised, view-averaged features score other numbers.
        raise VitftError(
            f"{model_dir / OOD_JSON} was fitted by an older vitft: retrain, or delete "
            f"{OOD_JSON} to predict without the unknown flag"
        )
    keys = ("method", "k", "views", "threshold", "acceptance")
    facts = {k: v for k, v in doc.items() if k not in keys}
    return OODScorer(
        method=doc["method"],
        tensors=load_file(str(model_dir / OOD_TENSORS)),
        k=int(doc.get("k", 5)),
        views=doc["views"],
        threshold=float(doc["threshold"]),
        acceptance=doc.get("acceptance"),
        info=facts,
    )
