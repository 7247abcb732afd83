"""Masked autoencoder pretraining (He et al. 2022) through transformers' ViTMAEForPreTraining.

The MAE encoder is a ViT with the same parameter names as ``ViTModel``, so its weights move into
the classifier one to one; the decoder is thrown away after pretraining.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.transforms import v2
from transformers import PreTrainedModel, ViTMAEConfig, ViTMAEForPreTraining, ViTModel

from vitft.training.pretraining.encoder import vit_encoder
from vitft.training.pretraining.views import normalize


def _one_view(x: torch.Tensor) -> tuple[torch.Tensor]:
    """MAE trains on one view per image (a module-level function: workers pickle the views)."""
    return (x,)


class MAE(nn.Module):
    """``loss(views)``: the masked-patch reconstruction loss of one augmented view."""

    name = "mae"

    def __init__(
        self,
        backbone: PreTrainedModel,
        processor: Any,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
        decoder: dict | None = None,
        crop_scale: tuple[float, float] = (0.2, 1.0),
    ):
        super().__init__()
        encoder = vit_encoder(backbone)
        vit = encoder.config.to_dict()
        keep = (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "hidden_act",
            "layer_norm_eps",
            "image_size",
            "patch_size",
            "num_channels",
            "qkv_bias",
            "hidden_dropout_prob",
            "attention_probs_dropout_prob",
        )
        decoder = {f"decoder_{k}": v for k, v in (decoder or {}).items()}
        config = ViTMAEConfig(
            **{k: vit[k] for k in keep if k in vit},
            mask_ratio=float(mask_ratio),
            norm_pix_loss=bool(norm_pix_loss),
            **decoder,
        )
        self.mae = ViTMAEForPreTraining(config)
        # Start from the backbone's weights (random, hub or local): continued pretraining.
        self.mae.vit.load_state_dict(encoder.state_dict(), strict=True)
        self.encoder_config = encoder.config
        size = config.image_size
        self.views = v2.Compose(
            [
                v2.PILToTensor(),
                v2.RandomResizedCrop(size, scale=tuple(crop_scale), antialias=True),
                v2.RandomHorizontalFlip(),
                v2.ToDtype(torch.float32, scale=True),
                normalize(processor),
                _one_view,
            ]
        )

    def loss(self, views: list[torch.Tensor], progress: float) -> torch.Tensor:
        return self.mae(pixel_values=views[0]).loss

    def after_step(self, progress: float) -> None:
        pass

    def encoder(self) -> ViTModel:
        """The MAE encoder as a plain ViTModel (same weights, no decoder)."""
        vit = ViTModel(self.encoder_config, add_pooling_layer=False)
        vit.load_state_dict(self.mae.vit.state_dict(), strict=True)
        return vit
