"""The one table of where each architecture keeps its embeddings, ordered blocks and the modules
after the last block (``ARCHITECTURES``); freezing, pruning, resolution and explain ask
``backbone_parts`` for them.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from transformers import PreTrainedModel

from vitft.core.errors import VitftError

# model_type -> (embeddings, ordered blocks, modules after the last block), as attribute paths
# on the HF *ForImageClassification model. For hierarchical backbones (Swin, ConvNeXt, MobileViT)
# a "block" is a stage: freeze.n then counts stages.
ARCHITECTURES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "vit": ("vit.embeddings", "vit.layers", ("vit.layernorm",)),
    "deit": ("deit.embeddings", "deit.layers", ("deit.layernorm",)),
    "dinov2": ("dinov2.embeddings", "dinov2.encoder.layer", ("dinov2.layernorm",)),
    "swin": ("swin.embeddings", "swin.encoder.layers", ("swin.layernorm",)),
    "convnext": ("convnext.embeddings", "convnext.encoder.stages", ("convnext.layernorm",)),
    "mobilevit": ("mobilevit.conv_stem", "mobilevit.encoder.layer", ("mobilevit.conv_1x1_exp",)),
}


@dataclass
class BackboneParts:
    embeddings: nn.Module
    blocks: list[nn.Module]
    post: list[nn.Module]


def _get(module: nn.Module, path: str) -> nn.Module:
    for name in path.split("."):
        module = getattr(module, name)
    return module


def backbone_parts(hf_model: PreTrainedModel) -> BackboneParts:
    """Embeddings, ordered blocks and post-block modules of an HF image classifier."""
    model_type = hf_model.config.model_type
    if model_type not in ARCHITECTURES:
        raise VitftError(
            f"freezing does not know the layout of model_type={model_type!r}; known: "
            f"{sorted(ARCHITECTURES)}. Use freeze=none or freeze=backbone, or add it to "
            "vitft.models.parts.ARCHITECTURES."
        )
    emb, blocks, post = ARCHITECTURES[model_type]
    return BackboneParts(
        embeddings=_get(hf_model, emb),
        blocks=list(_get(hf_model, blocks)),
        post=[_get(hf_model, p) for p in post],
    )


def classifier_in_features(hf_model: PreTrainedModel) -> int:
    """Width of the features the HF model feeds to its ``classifier``."""
    clf = getattr(hf_model, "classifier", None)
    if not isinstance(clf, nn.Linear):
        raise VitftError(
            f"{type(hf_model).__name__} has no linear `classifier` to replace with a vitft head"
        )
    return clf.in_features
