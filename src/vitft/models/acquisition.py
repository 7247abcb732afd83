"""Active-learning acquisition: which unlabelled images to label next, from a model's outputs.

Every strategy maps (probabilities and/or backbone features of the pool) to ``budget`` pool
indices, most useful first, with the score each pick had when it was chosen:

- ``margin``: smallest gap between the two most probable classes (uncertainty).
- ``entropy``: highest entropy of the class probabilities (uncertainty).
- ``coreset``: k-center greedy on L2-normalised features (Sener & Savarese, 2018): each pick is
  the image farthest from everything labelled or already picked, so near-duplicates of a pick
  score ~0 and are not picked again (diversity).
- ``badge``: k-means++ seeding on gradient embeddings (Ash et al., 2020): the last layer's
  gradient for the predicted label, ``(p - onehot(argmax p)) x features``; its norm is the
  uncertainty and k-means++ spreads the picks (both).

Deterministic: ties break by index, and badge's draws come from a generator seeded by ``seed``.
"""

from __future__ import annotations

import torch

from vitft.core.errors import VitftError

STRATEGIES = ("margin", "entropy", "coreset", "badge")


def margin(probs: torch.Tensor) -> torch.Tensor:
    """1 - (p1 - p2): higher when the top two classes are closer."""
    top = probs.topk(min(2, probs.shape[1]), dim=1).values
    gap = top[:, 0] - (top[:, 1] if top.shape[1] > 1 else 0)
    return 1.0 - gap


def entropy(probs: torch.Tensor) -> torch.Tensor:
    p = probs.clamp_min(1e-12)
    return -(p * p.log()).sum(1)


def _top(scores: torch.Tensor, budget: int) -> tuple[list[int], list[float]]:
    # stable: equal scores keep pool order
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))[:budget]
    return order, [float(scores[i]) for i in order]


def k_center_greedy(
    features: torch.Tensor, budget: int, labelled: torch.Tensor | None = None
) -> tuple[list[int], list[float]]:
    """Greedy k-center on L2-normalised features; starts from ``labelled`` (or, without it, from
    the image farthest from the pool's mean). Returns picks and their distance when picked."""
    x = torch.nn.functional.normalize(features.float(), dim=1)
    if labelled is not None and len(labelled):
        centres = torch.nn.functional.normalize(labelled.float(), dim=1)
        nearest = torch.cdist(x, centres).min(1).values
    else:
        nearest = torch.cdist(x, x.mean(0, keepdim=True))[:, 0]
    picks: list[int] = []
    dists: list[float] = []
    for _ in range(min(budget, len(x))):
        i = int(torch.argmax(nearest))  # first index among equal maxima
        picks.append(i)
        dists.append(float(nearest[i]))
        nearest = torch.minimum(nearest, torch.cdist(x, x[i : i + 1])[:, 0])
        nearest[i] = -1.0  # never twice
    return picks, dists


def gradient_embeddings(probs: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """BADGE's embedding: the cross-entropy gradient of a linear last layer for the predicted
    label, ``(p - onehot(argmax p))`` outer ``features``, flattened: ``(N, classes * D)``."""
    onehot = torch.nn.functional.one_hot(probs.argmax(1), probs.shape[1]).float()
    return ((probs.float() - onehot)[:, :, None] * features.float()[:, None, :]).flatten(1)


def kmeans_pp(emb: torch.Tensor, budget: int, seed: int) -> tuple[list[int], list[float]]:
    """k-means++ seeding: the largest embedding first, then each next pick drawn with probability
    proportional to its squared distance to the nearest pick. Returns picks and that distance."""
    gen = torch.Generator().manual_seed(int(seed))
    first = int(torch.argmax(emb.norm(dim=1)))
    picks, scores = [first], [float(emb[first].norm())]
    d2 = torch.cdist(emb, emb[first : first + 1])[:, 0] ** 2
    for _ in range(min(budget, len(emb)) - 1):
        d2[picks] = 0.0
        total = float(d2.sum())
        if total <= 0:  # everything left duplicates a pick: take the rest in order
            rest = [i for i in range(len(emb)) if i not in set(picks)]
            i = rest[0]
        else:
            i = int(torch.multinomial(d2.double() / total, 1, generator=gen))
        picks.append(i)
        scores.append(float(d2[i].sqrt()))
        d2 = torch.minimum(d2, torch.cdist(emb, emb[i : i + 1])[:, 0] ** 2)
    return picks, scores


def acquire(
    strategy: str,
    budget: int,
    probs: torch.Tensor,
    features: torch.Tensor | None = None,
    labelled: torch.Tensor | None = None,
    seed: int = 0,
) -> tuple[list[int], list[float]]:
    """``budget`` pool indices for ``strategy``, best first, and each one's score."""
    if strategy not in STRATEGIES:
        raise VitftError(f"strategy={strategy!r} is unknown; use one of {list(STRATEGIES)}")
    if budget < 1:
        raise VitftError(f"budget={budget} must be >= 1")
    if strategy == "margin":
        return _top(margin(probs), budget)
    if strategy == "entropy":
        return _top(entropy(probs), budget)
    assert features is not None, f"{strategy} needs features"
    if strategy == "coreset":
        return k_center_greedy(features, budget, labelled)
    return kmeans_pp(gradient_embeddings(probs, features), budget, seed)
