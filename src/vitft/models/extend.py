"""A new class for a trained model from a few images, without touching the backbone.

The head gets one more output, imprinted from the new images' mean feature (Qi et al., 2018:
a class weight that points where its images are), and is then fitted on backbone features of the
old training images plus the new ones, class-balanced, so the few new images are not drowned and
the old classes keep their decision boundaries. Features are computed once: fitting a head on
them takes seconds on a CPU.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from vitft.core.errors import VitftError
from vitft.models.heads import CosineHead, LinearHead, MLPHead


def _grow(layer: nn.Linear, direction: torch.Tensor) -> nn.Linear:
    """``layer`` with one more output row: ``direction`` scaled to the mean norm of the rows."""
    grown = nn.Linear(layer.in_features, layer.out_features + 1, bias=layer.bias is not None)
    with torch.no_grad():
        grown.weight[:-1] = layer.weight
        norm = layer.weight.norm(dim=1).mean()
        grown.weight[-1] = F.normalize(direction, dim=0) * norm
        if layer.bias is not None:
            grown.bias[:-1] = layer.bias
            grown.bias[-1] = layer.bias.mean()
    return grown


def extend_head(head: nn.Module, new_features: torch.Tensor) -> nn.Module:
    """A copy of ``head`` with one more class, imprinted from ``new_features`` ``(n, D)``."""
    head = copy.deepcopy(head)
    mean = new_features.float().mean(0)
    if isinstance(head, LinearHead):
        head.fc = _grow(head.fc, mean)
    elif isinstance(head, MLPHead):
        with torch.no_grad():
            hidden = head.net[1](head.net[0](new_features.float())).mean(0)
        head.net[3] = _grow(head.net[3], hidden)
    elif isinstance(head, CosineHead):
        row = F.normalize(mean, dim=0) * head.weight.norm(dim=1).mean()
        head.weight = nn.Parameter(torch.cat([head.weight.data, row[None]]))
    else:
        raise VitftError(f"add_class: a {type(head).__name__} head cannot grow a class")
    return head


def fit_head(
    head: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    steps: int = 300,
    lr: float = 1e-2,
    seed: int = 0,
) -> nn.Module:
    """Full-batch AdamW on cross-entropy with class-balanced weights; returns ``head`` (eval)."""
    torch.manual_seed(seed)
    n_classes = int(labels.max()) + 1
    counts = torch.bincount(labels, minlength=n_classes).float().clamp_min(1)
    weight = counts.sum() / (n_classes * counts)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    head.train()
    x = features.float()
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(head(x), labels, weight=weight)
        loss.backward()
        opt.step()
    return head.eval()
