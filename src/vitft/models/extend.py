"""A new class for a trained model from a few images, without touching the backbone.

The head gets one more output, imprinted from the new images' mean feature (Qi et al., 2018:
a class weight that points where its images are), and is then fitted on backbone features of the
old training images plus the new ones, class-balanced, so the few new images are not drowned;
only the new output row trains, and its bias is then lowered until the old classes' val images
stay theirs (``protect_old_classes``). Features are computed once: fitting a head on
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
    """Full-batch Adam on class-balanced cross-entropy, training only the new class's output row
    (the old rows, hidden layers and scale keep their trained values); returns ``head`` (eval)."""
    torch.manual_seed(seed)
    n_classes = int(labels.max()) + 1
    counts = torch.bincount(labels, minlength=n_classes).float().clamp_min(1)
    weight = counts.sum() / (n_classes * counts)
    rows = [p for p in head.parameters() if p.ndim >= 1 and p.shape[0] == n_classes]
    for p in head.parameters():
        p.requires_grad_(any(p is r for r in rows))
    opt = torch.optim.Adam(rows, lr=lr)  # no weight decay: it would move the old rows too
    head.train()
    x = features.float()
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(head(x), labels, weight=weight)
        loss.backward()
        for p in rows:
            p.grad[:-1] = 0
        opt.step()
    for p in head.parameters():
        p.requires_grad_(True)
    return head.eval()


def protect_old_classes(
    head: nn.Module, features: torch.Tensor, labels: torch.Tensor, max_taken: float = 0.01
) -> float:
    """Lower the new class's bias until at most ``max_taken`` of the old classes' images
    (``features``, ``labels``: the run's val split) are predicted as the new class, so adding it
    costs the old classes at most about that much accuracy. Returns the offset applied (0: none
    needed). A cosine head has no bias: left as fitted."""
    last = (
        head.fc
        if isinstance(head, LinearHead)
        else head.net[3]
        if isinstance(head, MLPHead)
        else None
    )
    if last is None or last.bias is None or not len(labels):
        return 0.0
    with torch.no_grad():
        logits = head(features.float())
        margin = logits[:, -1] - logits[:, :-1].max(1).values
        offset = float(torch.quantile(margin, 1 - max_taken).clamp_min(0))
        if offset > 0:
            last.bias[-1] -= offset + 1e-4
    return offset
