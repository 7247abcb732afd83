"""Change a ViT's input resolution: interpolate its position embeddings to the new patch grid.

Lower resolution is the cheapest edge speed-up (224 -> 160 halves the tokens). The model keeps
working at the new size without ``interpolate_pos_encoding`` at run time, so exports see a plain
fixed-size graph, and the saved config/processor record the new size.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vitft.core.errors import VitftError
from vitft.models.parts import backbone_parts


def set_image_size(model: nn.Module, processor: Any, size: int) -> None:
    """Resize ``model`` (ImageClassifier) and ``processor`` to ``size`` x ``size`` in place."""
    config = model.config
    emb = backbone_parts(model.backbone).embeddings
    if getattr(emb, "position_embeddings", None) is None:
        # Convolutional, hybrid and relative-position backbones (MobileViT, ConvNeXt, Swin) take
        # other input sizes as they are: only the preprocessing and the recorded size change.
        config.image_size = size
        _resize_processor(processor, size)
        return
    patch = int(config.patch_size)
    if size % patch:
        raise VitftError(f"image_size={size} must be a multiple of the patch size {patch}")
    pos = emb.position_embeddings.data
    # Tokens before the patch grid: CLS, plus DeiT's distillation token.
    prefix = next(
        k for k in range(1, pos.shape[1]) if math.isqrt(pos.shape[1] - k) ** 2 == pos.shape[1] - k
    )
    old = math.isqrt(pos.shape[1] - prefix)
    new = size // patch
    if new != old:
        dim = pos.shape[-1]
        grid = pos[:, prefix:].reshape(1, old, old, dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
        grid = grid.permute(0, 2, 3, 1).reshape(1, new * new, dim)
        emb.position_embeddings = nn.Parameter(torch.cat([pos[:, :prefix], grid], dim=1))
    emb.patch_embeddings.image_size = (size, size)
    emb.patch_embeddings.num_patches = new * new
    emb.image_size = (size, size)
    config.image_size = size
    _resize_processor(processor, size)


def _resize_processor(processor: Any, size: int) -> None:
    if getattr(processor, "do_center_crop", False) and getattr(processor, "crop_size", None):
        processor.size = {"shortest_edge": size}
        processor.crop_size = {"height": size, "width": size}
    else:
        processor.size = {"height": size, "width": size}
