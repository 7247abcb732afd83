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
    patch = int(config.patch_size)
    if size % patch:
        raise VitftError(f"image_size={size} must be a multiple of the patch size {patch}")
    emb = backbone_parts(model.backbone).embeddings
    pos = emb.position_embeddings.data
    old = int(math.isqrt(pos.shape[1] - 1))
    new = size // patch
    if new != old:
        dim = pos.shape[-1]
        grid = pos[:, 1:].reshape(1, old, old, dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
        grid = grid.permute(0, 2, 3, 1).reshape(1, new * new, dim)
        emb.position_embeddings = nn.Parameter(torch.cat([pos[:, :1], grid], dim=1))
    emb.patch_embeddings.image_size = (size, size)
    emb.patch_embeddings.num_patches = new * new
    emb.image_size = (size, size)
    config.image_size = size
    processor.size = {"height": size, "width": size}
