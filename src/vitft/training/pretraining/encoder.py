"""The pretrained encoder as an HF model dir that ``model.pretrained=<dir>`` fine-tunes.

What is saved is the base model (``ViTModel``: embeddings, blocks, final norm; no classifier), so
``AutoModelForImageClassification.from_pretrained(dir, num_labels=...)`` loads every encoder
weight from the file and makes only the new classifier.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, ViTModel

from vitft.core.errors import VitftError
from vitft.weights import WEIGHTS_FILE, sha256

PRETRAINING_FILE = "pretraining.json"


def vit_encoder(hf_model: PreTrainedModel) -> ViTModel:
    """The ViT base model inside an HF image classifier (the part pretraining trains)."""
    if hf_model.config.model_type != "vit":
        raise VitftError(
            "vitft pretrain pretrains ViT backbones (model_type vit), not "
            f"{hf_model.config.model_type!r}. Use model=vit_fractal, model=vit_tiny, "
            "model=vit_base or a local ViT dir"
        )
    return hf_model.base_model


def save_encoder(
    encoder: PreTrainedModel,
    processor: Any,
    out_dir: str | Path,
    info: dict,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """``out_dir``: config, weights (``dtype``), image processor and ``pretraining.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    encoder = encoder.to(dtype)
    encoder.config.id2label, encoder.config.label2id = {0: "LABEL_0"}, {"LABEL_0": 0}
    encoder.save_pretrained(out_dir, safe_serialization=True)
    encoder.float()
    processor.save_pretrained(out_dir)
    info = {**info, "weights_sha256": sha256(out_dir / WEIGHTS_FILE), "dtype": str(dtype)}
    (out_dir / PRETRAINING_FILE).write_text(json.dumps(info, indent=2, default=str))
    return out_dir
