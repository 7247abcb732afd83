"""Knowledge distillation: a frozen teacher's soft targets (Hinton et al. 2015) for the student.

loss = (1 - weight) * task loss + weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitft.core.errors import VitftError
from vitft.data.transforms import processor_facts
from vitft.modelio.hf import load_model


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Soft-target KL divergence, scaled by T^2 so its gradients match the hard loss's scale."""
    t = float(temperature)
    return F.kl_div(
        F.log_softmax(student / t, dim=-1),
        F.log_softmax(teacher / t, dim=-1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)


class Teacher:
    """A frozen model in eval mode; not an nn.Module attribute, so it stays out of checkpoints,
    the optimizer and ``module.train()``."""

    def __init__(self, model: nn.Module, image_size: list[int]):
        self.model = model.eval().requires_grad_(False)
        self.image_size = list(image_size)

    @torch.no_grad()
    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        model = self.model.to(pixel_values.device)
        if list(pixel_values.shape[-2:]) != self.image_size:
            pixel_values = F.interpolate(
                pixel_values, size=self.image_size, mode="bilinear", align_corners=False
            )
        return model(pixel_values)


def load_teacher(distill_cfg: dict | None, labels: list[str], processor) -> Teacher | None:
    """The teacher named by ``distill.teacher`` (an HF model dir), checked against the student."""
    if not distill_cfg or not distill_cfg.get("teacher"):
        return None
    model, teacher_processor = load_model(distill_cfg["teacher"])
    if model.labels != list(labels):
        raise VitftError(
            f"distill.teacher={distill_cfg['teacher']} predicts {model.labels} but the data has "
            f"{list(labels)}: the teacher must be trained on the same classes"
        )
    mine, theirs = processor_facts(processor), processor_facts(teacher_processor)
    if mine["image_mean"] != theirs["image_mean"] or mine["image_std"] != theirs["image_std"]:
        raise VitftError(
            "distill.teacher normalises images with another mean/std than the student model "
            f"({theirs['image_mean']}/{theirs['image_std']} vs {mine['image_mean']}/"
            f"{mine['image_std']}); pick a student with the teacher's image processor"
        )
    return Teacher(model, theirs["image_size"])
