"""The HF-format model directory: what a run leaves in ``<run>/model``.

A linear head is saved as the backbone's own ``*ForImageClassification`` (plain HF: any
transformers tool, ``pipeline``, TF/Flax ``from_pt`` loads it without vitft). Other heads are saved
as ``VitftForImageClassification`` (model_type ``vitft``), which ``register_hf`` (run when this
module is imported; ``vitft.register_hf()`` from user code) registers with transformers' Auto
classes so that ``pipeline("image-classification", model=dir)`` works too.
Weights are safetensors; loading never runs code from the directory.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import ImageClassifierOutput

from vitft.core.errors import VitftError
from vitft.models.classifier import ImageClassifier
from vitft.models.heads import LinearHead, build_head
from vitft.models.lora import merged_backbone
from vitft.models.multilabel import DEFAULT_THRESHOLD
from vitft.models.parts import classifier_in_features
from vitft.models.pruning import apply_pruned_structure, load_pruned

VITFT_MODEL_TYPE = "vitft"


class VitftConfig(PretrainedConfig):
    """An HF backbone config plus a vitft head config."""

    model_type = VITFT_MODEL_TYPE

    def __init__(self, backbone: dict | None = None, head: dict | None = None, **kwargs):
        self.backbone = dict(backbone or {})
        self.head = dict(head or {"name": "linear"})
        super().__init__(**kwargs)


class VitftForImageClassification(PreTrainedModel):
    """HF wrapper around an ImageClassifier with a non-linear head (same state-dict keys)."""

    config_class = VitftConfig
    main_input_name = "pixel_values"
    base_model_prefix = "vitft"

    def __init__(self, config: VitftConfig):
        super().__init__(config)
        backbone_cfg = dict(config.backbone)
        backbone_config = AutoConfig.for_model(backbone_cfg.pop("model_type"), **backbone_cfg)
        self.backbone = AutoModelForImageClassification.from_config(backbone_config)
        apply_pruned_structure(self.backbone)  # a head-pruned backbone (vitft.models.pruning)
        in_features = classifier_in_features(self.backbone)
        self.backbone.classifier = nn.Identity()
        self.head = build_head(config.head, in_features, config.num_labels)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, labels=None, **kwargs) -> ImageClassifierOutput:
        logits = self.head(self.backbone(pixel_values=pixel_values).logits)
        return ImageClassifierOutput(logits=logits)


def register_hf() -> None:
    """Register model_type ``vitft`` with transformers' Auto classes, so that ``pipeline`` and
    ``AutoModelForImageClassification`` load a model dir with an mlp or cosine head. Importing
    this module does it; ``vitft.register_hf()`` is the explicit spelling for user code."""
    AutoConfig.register(VITFT_MODEL_TYPE, VitftConfig, exist_ok=True)
    AutoModelForImageClassification.register(
        VitftConfig, VitftForImageClassification, exist_ok=True
    )


register_hf()  # every vitft path that loads a model dir imports this module


def to_hf(model: ImageClassifier) -> PreTrainedModel:
    """An HF model with the same weights and outputs as ``model`` (a copy, in eval mode)."""
    model = copy.deepcopy(model).cpu().eval()
    model.backbone = merged_backbone(model.backbone)  # LoRA adapters become plain weights
    if isinstance(model.head, LinearHead):
        hf_model = model.backbone
        hf_model.classifier = model.head.fc
        return hf_model
    config = VitftConfig(
        backbone=model.config.to_dict(),
        head=model.head_cfg,
        id2label=model.config.id2label,
        label2id=model.config.label2id,
        problem_type=model.config.problem_type,
    )
    hf_model = VitftForImageClassification(config)
    hf_model.load_state_dict(model.state_dict())
    return hf_model.eval()


def save_hf(
    model: ImageClassifier, processor: Any, out_dir: str | Path, meta: dict | None = None
) -> Path:
    """Write ``model`` + its image processor to ``out_dir`` (safetensors), plus vitft.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    to_hf(model).save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    info = {"head": model.head_cfg, "labels": model.labels, **(meta or {})}
    (out_dir / "vitft.json").write_text(json.dumps(info, indent=2, default=str))
    return out_dir


def model_info(model_dir: str | Path) -> dict:
    """The vitft.json that ``save_hf`` wrote ({} for a plain HF model dir)."""
    path = Path(model_dir) / "vitft.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def multilabel_facts(model_dir: str | Path, labels: list[str]) -> dict:
    """What an export of a multi-label model records: sigmoid outputs and per-class thresholds."""
    tuned = model_info(model_dir).get("thresholds") or {}
    return {
        "multilabel": True,
        "output_activation": "sigmoid",
        "thresholds": {c: float(tuned.get(c, DEFAULT_THRESHOLD)) for c in labels},
    }


def load_model(model_dir: str | Path) -> tuple[ImageClassifier, Any]:
    """Load a model directory written by ``save_hf`` (or any HF image classifier directory)."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise VitftError(
            f"{model_dir} is not an HF model directory (no config.json): pass the `model/` folder "
            "of a run, e.g. outputs/<run>/model"
        )
    hf_model = load_pruned(model_dir) or AutoModelForImageClassification.from_pretrained(model_dir)
    processor = AutoImageProcessor.from_pretrained(model_dir)
    if isinstance(hf_model, VitftForImageClassification):
        model = ImageClassifier(hf_model.backbone, hf_model.head, hf_model.config.head)
        # id2label lives on the wrapper config; keep it on the backbone too.
        model.backbone.config.id2label = dict(hf_model.config.id2label)
        model.backbone.config.label2id = dict(hf_model.config.label2id)
        model.backbone.config.problem_type = hf_model.config.problem_type
    else:
        model = ImageClassifier.from_hf(hf_model, {"name": "linear"})
    return model.eval(), processor
