"""Classification heads that sit on a backbone's pooled features.

Every head maps ``(batch, in_features) -> (batch, num_classes)``. Swapping the head never touches
the backbone: the backbone's own classifier is replaced by ``nn.Identity`` (see classifier.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitft.core.errors import VitftError

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}


class LinearHead(nn.Module):
    """Dropout + one linear layer: the head HF's ``*ForImageClassification`` models have."""

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(x))


class MLPHead(nn.Module):
    """Linear -> activation -> dropout -> linear."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden_size: int = 256,
        dropout: float = 0.1,
        activation: str = "gelu",
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise VitftError(
                f"head.activation={activation!r} is unknown; use one of {sorted(ACTIVATIONS)}"
            )
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden_size),
            ACTIVATIONS[activation](),
            nn.Dropout(dropout),
            nn.Linear(hidden_size, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CosineHead(nn.Module):
    """Cosine-similarity classifier: ``scale * cos(feature, class_weight)``.

    Logits are bounded, so a rare defect class is not drowned by a frequent one through weight
    norm alone; a standard choice for few-shot classes (Chen et al., "A Closer Look at Few-shot
    Classification", 2019).
    """

    def __init__(
        self, in_features: int, num_classes: int, scale: float = 16.0, learn_scale: bool = True
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.normal_(self.weight, std=0.02)
        scale_t = torch.tensor(float(scale))
        if learn_scale:
            self.scale = nn.Parameter(scale_t)
        else:
            self.register_buffer("scale", scale_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(F.normalize(x, dim=-1), F.normalize(self.weight, dim=-1))


HEADS = {"linear": LinearHead, "mlp": MLPHead, "cosine": CosineHead}


def build_head(cfg: dict, in_features: int, num_classes: int) -> nn.Module:
    """Build a head from its config (``name`` plus that head's keyword arguments; Hydra's
    ``_target_`` of conf/head/ names this function and is not an argument)."""
    cfg = {k: v for k, v in dict(cfg).items() if not k.startswith("_")}
    name = cfg.pop("name", "linear")
    if name not in HEADS:
        raise VitftError(f"head={name!r} is unknown; use one of {sorted(HEADS)} (conf/head/)")
    return HEADS[name](in_features, num_classes, **cfg)
