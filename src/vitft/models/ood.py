"""Out-of-distribution (unknown-defect) scorers on pooled backbone features.

A scorer is fitted on the training set's features (``ImageClassifier.features``) and maps any
feature batch to one score per image: higher means less like anything seen in training. The
threshold is the ``acceptance`` quantile of the scores of held-out in-distribution images (val),
so that fraction of normal traffic is accepted and the rest is flagged ``unknown``.

- ``mahalanobis``: distance to the nearest class mean under one shared covariance (Lee et al.,
  2018), shrunk towards a scaled identity (Ledoit-Wolf) because small datasets have fewer images
  than feature dimensions and the plain covariance is singular.
- ``knn``: cosine distance to the k-th nearest training feature (Sun et al., 2022); no
  distribution assumption, costs a feature bank of the training set.

Plain tensors in and out: the model dir stores them (``vitft.modelio.ood``), no pickle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vitft.core.errors import VitftError

METHODS = ("mahalanobis", "knn")


def ledoit_wolf(centered: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Shrunk covariance of ``centered`` ``(n, d)`` rows and the shrinkage used (0..1)."""
    n, d = centered.shape
    cov = centered.T @ centered / n
    mu = torch.trace(cov) / d
    target = mu * torch.eye(d, dtype=cov.dtype)
    delta = ((cov - target) ** 2).sum() / d
    # beta: how noisy the sample covariance is (variance of the outer products around it)
    sq = centered**2
    beta = ((sq.T @ sq) / n - cov**2).sum() / (d * n)
    shrink = float(torch.clamp(beta / delta, 0.0, 1.0)) if delta > 0 else 1.0
    # A small ridge keeps it invertible when features have no spread (e.g. a frozen random
    # backbone whose pooled features are constant).
    ridge = (1e-6 * mu + 1e-12) * torch.eye(d, dtype=cov.dtype)
    return (1 - shrink) * cov + shrink * target + ridge, shrink


@dataclass
class OODScorer:
    method: str
    tensors: dict[str, torch.Tensor]
    k: int = 5
    threshold: float = float("inf")
    acceptance: float | None = None
    info: dict = field(default_factory=dict)

    @classmethod
    def fit(
        cls, method: str, features: torch.Tensor, labels: torch.Tensor, k: int = 5
    ) -> OODScorer:
        """Fit ``method`` on training ``features`` ``(n, d)`` with class ``labels`` ``(n,)``."""
        if method not in METHODS:
            raise VitftError(f"ood.method={method!r} is unknown; use one of {list(METHODS)}")
        feats = features.detach().double().cpu()
        if len(feats) < 2:
            raise VitftError(f"ood: {len(feats)} training image(s); the scorer needs at least 2")
        info = {"train_images": len(feats), "feature_dim": int(feats.shape[1])}
        if method == "knn":
            if k < 1:
                raise VitftError(f"ood.k={k} must be >= 1")
            bank = torch.nn.functional.normalize(feats, dim=1).float()
            return cls(method, {"bank": bank}, k=min(int(k), len(bank)), info=info)
        labels = labels.long().cpu()
        classes = torch.unique(labels)
        means = torch.zeros(int(labels.max()) + 1, feats.shape[1], dtype=feats.dtype)
        for c in classes.tolist():
            means[c] = feats[labels == c].mean(0)
        cov, shrink = ledoit_wolf(feats - means[labels])
        precision = torch.linalg.inv(cov)
        present = torch.zeros(len(means), dtype=torch.bool)
        present[classes] = True
        info["shrinkage"] = round(shrink, 6)
        tensors = {"means": means[present].float(), "precision": precision.float()}
        return cls(method, tensors, k=int(k), info=info)

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """One score per row of ``features``; higher: less like the training data."""
        x = features.detach().float().cpu()
        if self.method == "knn":
            sims = torch.nn.functional.normalize(x, dim=1) @ self.tensors["bank"].T
            kth = sims.topk(self.k, dim=1).values[:, -1]
            return 1.0 - kth
        means, precision = self.tensors["means"], self.tensors["precision"]
        diff = x[:, None, :] - means[None]  # (n, classes, d)
        dist = torch.einsum("ncd,de,nce->nc", diff, precision, diff)
        return dist.min(1).values

    def calibrate(self, features: torch.Tensor, acceptance: float) -> OODScorer:
        """Threshold = the ``acceptance`` quantile of in-distribution ``features``' scores."""
        if not 0.0 < acceptance <= 1.0:
            raise VitftError(f"ood.acceptance={acceptance} must be in (0, 1], e.g. 0.95")
        if len(features) == 0:
            raise VitftError("ood: no held-out images to set the threshold on (val is empty)")
        scores = self.score(features)
        self.threshold = float(torch.quantile(scores.double(), acceptance))
        self.acceptance = float(acceptance)
        self.info["calibration_images"] = len(scores)
        self.info["calibration_accepted"] = float((scores <= self.threshold).float().mean())
        return self

    def unknown(self, scores: torch.Tensor) -> torch.Tensor:
        return scores > self.threshold


def auroc(in_scores: torch.Tensor, out_scores: torch.Tensor) -> float:
    """P(an unknown image scores higher than a known one), ties counted half."""
    a, b = in_scores.double().flatten(), out_scores.double().flatten()
    if not len(a) or not len(b):
        return float("nan")
    greater = (b[:, None] > a[None]).double().mean()
    ties = (b[:, None] == a[None]).double().mean()
    return float(greater + 0.5 * ties)
