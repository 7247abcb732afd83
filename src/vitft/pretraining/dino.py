"""DINO self-distillation (Caron et al. 2021) with lightly's head, loss and multi-crop views.

A student ViT learns to match an EMA teacher's output across global and local crops of the
same image. It needs no negatives and works on a few hundred images, which suits plants with
small unlabelled pools. The teacher's encoder is what is saved (as in the DINO paper).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.transforms.dino_transform import DINOTransform
from lightly.utils.scheduler import cosine_schedule
from torch import nn
from transformers import PreTrainedModel, ViTModel

from vitft.data.transforms import processor_facts
from vitft.pretraining.encoder import vit_encoder


class DINO(nn.Module):
    name = "dino"

    def __init__(
        self,
        backbone: PreTrainedModel,
        processor: Any,
        output_dim: int = 4096,
        hidden_dim: int = 512,
        bottleneck_dim: int = 128,
        teacher_momentum: tuple[float, float] = (0.996, 1.0),
        teacher_temp: float = 0.04,
        warmup_teacher_temp: float = 0.04,
        warmup_fraction: float = 0.1,
        student_temp: float = 0.1,
        local_views: int = 4,
        global_crop_scale: tuple[float, float] = (0.4, 1.0),
        local_crop_scale: tuple[float, float] = (0.05, 0.4),
    ):
        super().__init__()
        self.student = vit_encoder(backbone)
        width = self.student.config.hidden_size
        self.student_head = DINOProjectionHead(width, hidden_dim, bottleneck_dim, output_dim)
        self.teacher = copy.deepcopy(self.student)
        self.teacher_head = DINOProjectionHead(width, hidden_dim, bottleneck_dim, output_dim)
        self.teacher_head.load_state_dict(self.student_head.state_dict())
        deactivate_requires_grad(self.teacher)
        deactivate_requires_grad(self.teacher_head)
        self.criterion = DINOLoss(output_dim=output_dim, student_temp=student_temp)
        self.momentum = tuple(teacher_momentum)
        self.temps = (float(warmup_teacher_temp), float(teacher_temp), float(warmup_fraction))

        size = self.student.config.image_size
        patch = self.student.config.patch_size
        facts = processor_facts(processor)
        self.views = DINOTransform(
            global_crop_size=size,
            local_crop_size=max(patch, size // 2 // patch * patch),
            global_crop_scale=tuple(global_crop_scale),
            local_crop_scale=tuple(local_crop_scale),
            n_local_views=int(local_views),
            normalize={"mean": facts["image_mean"], "std": facts["image_std"]},
        )

    @staticmethod
    def _embed(encoder: ViTModel, x: torch.Tensor) -> torch.Tensor:
        out = encoder(pixel_values=x, interpolate_pos_encoding=True)
        return out.last_hidden_state[:, 0]  # the CLS token, as the classifier reads it

    def loss(self, views: list[torch.Tensor], progress: float) -> torch.Tensor:
        with torch.no_grad():
            teacher = [self.teacher_head(self._embed(self.teacher, v)) for v in views[:2]]
        student = [self.student_head(self._embed(self.student, v)) for v in views]
        warm, temp, frac = self.temps
        t = temp if progress >= frac else warm + (temp - warm) * progress / max(frac, 1e-8)
        return self.criterion(teacher, student, teacher_temp=t)

    def after_step(self, progress: float) -> None:
        m = cosine_schedule(int(progress * 10_000), 10_000, *self.momentum)
        update_momentum(self.student, self.teacher, m=m)
        update_momentum(self.student_head, self.teacher_head, m=m)

    def encoder(self) -> ViTModel:
        return self.teacher
