"""ImageClassifier: an HF backbone plus a vitft head, as a plain ``nn.Module``.

This is what training wraps, and what export and inference use: it never needs Lightning.
The HF model's own ``classifier`` is replaced by ``nn.Identity``, so its ``logits`` are the pooled
features its classifier would see (CLS token for ViT, CLS + mean patch token for DINOv2, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from vitft.models.backbone import load_backbone
from vitft.models.heads import LinearHead, build_head
from vitft.models.parts import classifier_in_features
from vitft.models.resolution import set_image_size


class ImageClassifier(nn.Module):
    def __init__(self, backbone: PreTrainedModel, head: nn.Module, head_cfg: dict | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        # saved with the model (config.json, checkpoints); Hydra's _target_ keys are not settings
        self.head_cfg = {
            k: v for k, v in dict(head_cfg or {"name": "linear"}).items() if k[0] != "_"
        }

    @property
    def config(self):
        """The backbone's HF config (architecture, image size, id2label)."""
        return self.backbone.config

    @property
    def labels(self) -> list[str]:
        id2label = self.config.id2label
        return [id2label[i] for i in range(len(id2label))]

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features, the head's input: ``(batch, in_features)``."""
        return self.backbone(pixel_values=pixel_values).logits

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pixel_values))

    @classmethod
    def from_hf(
        cls, hf_model: PreTrainedModel, head_cfg: dict | None = None, build: Callable = build_head
    ) -> ImageClassifier:
        """Take over an HF ``*ForImageClassification`` model with the head that ``build`` makes
        from ``head_cfg`` (conf/head/); a linear head keeps the HF classifier's weights."""
        head_cfg = dict(head_cfg or {"name": "linear"})
        in_features = classifier_in_features(hf_model)
        head = build(head_cfg, in_features, hf_model.config.num_labels)
        if isinstance(head, LinearHead):
            head.fc.load_state_dict(hf_model.classifier.state_dict())
        hf_model.classifier = nn.Identity()
        return cls(hf_model, head, head_cfg)


def build_model(
    model_cfg: dict,
    head_cfg: dict,
    labels: list[str],
    backbone: Callable = load_backbone,
    head: Callable = build_head,
) -> tuple[ImageClassifier, Any]:
    """Backbone (hub, local dir or config) + head for ``labels``; returns (model, processor).
    ``backbone`` and ``head`` build them from their conf group (training passes the builders
    that conf/model/ and conf/head/ name in ``_target_``)."""
    hf_model, processor = backbone(model_cfg, labels)
    if model_cfg.get("gradient_checkpointing"):
        # Recompute each block's activations in backward instead of keeping them (less memory,
        # one extra forward). No effect on frozen blocks, which keep no activations anyway.
        hf_model.activation_checkpointing_enable()
    # from_pretrained returns the model in eval mode, and Lightning keeps each module's mode as
    # it finds it at fit start: a pretrained backbone would train with dropout, stochastic depth
    # and BatchNorm batch statistics all off. Training builds the model, so it starts in train mode.
    model = ImageClassifier.from_hf(hf_model, head_cfg, head).train()
    if model_cfg.get("image_size"):
        # Train at another resolution: position embeddings interpolated to the new grid.
        set_image_size(model, processor, int(model_cfg["image_size"]))
    if model_cfg.get("compile"):
        model.compile()  # in place: parameter names (checkpoints, export) stay the same
    return model, processor
