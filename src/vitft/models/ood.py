"""Out-of-distribution (unknown-defect) scorers on multi-scale backbone features.

A scorer is fitted on the training set's features (``multiscale_features``) and maps any
image to one score: higher means less like anything seen in training. The threshold is the
``acceptance`` quantile of the scores of held-out in-distribution images (val), so that fraction
of normal traffic is accepted and the rest is flagged ``unknown``.

- ``mahalanobis``: distance to the nearest class mean under one shared covariance (Lee et al.,
  2018), shrunk towards a scaled identity (Ledoit-Wolf) because small datasets have fewer images
  than feature dimensions and the plain covariance is singular. Features are L2-normalised first
  (Mueller & Hein, 2025: feature norms vary with image contrast, not with novelty).
- ``mahalanobis_class``: the same, but each class with its own shrunk covariance (a class with
  fewer than 2 images takes the shared one). A new defect that stays inside the spread of all
  known parts can still lie outside the spread of the class it resembles: on the unknown
  morphologies of the sample sets (benchmarks/README.md#unknown-morphologies) it raised the
  mean AUROC from 0.874 to 0.900, small pits on the defect surfaces from 0.84 to 0.91; on the
  real-photo proxy, whose graded classes differ only by their defects, it lowered it from 0.884
  to 0.800, hence not the default. Costs a D x D matrix per class.
- ``knn``: cosine distance to the k-th nearest training feature (Sun et al., 2022); no
  distribution assumption, costs a feature bank of the training set.

``views``: the score of an image is taken over symmetric copies of it (``flip``: mirror;
``d4``: the 4 rotations and their mirrors), the transformations the model was trained to ignore.
Averaging the features over them removes what the augmentation made meaningless (a crack's
direction) and keeps what is new. Each view costs one backbone pass.

Plain torch: ``OODScorer`` is an ``nn.Module`` whose tensors are buffers, and
``ScoredClassifier`` (pixels -> logits, score) exports to ONNX/OpenVINO/TFLite with the score as
a second output. The model dir stores the tensors as safetensors (``vitft.modelio.ood``).
"""

from __future__ import annotations

import torch
from torch import nn

from vitft.core.errors import VitftError

METHODS = ("mahalanobis", "mahalanobis_class", "knn")
VIEWS = {"none": 1, "flip": 2, "d4": 8}
# The views an augmentation preset trains the model to be invariant to (ood.views=auto).
PRESET_VIEWS = {"none": "none", "light": "flip", "industrial": "d4", "formula": "flip"}


def views_for(views: str, augment: str | None) -> str:
    """Resolve ``ood.views`` (``auto``: from the training augmentation preset)."""
    if views == "auto":
        return PRESET_VIEWS.get(augment or "none", "none")
    if views not in VIEWS:
        raise VitftError(f"ood.views={views!r} is unknown; use auto or one of {list(VIEWS)}")
    return views


def image_views(pixels: torch.Tensor, views: str) -> torch.Tensor:
    """``(V * N, C, H, W)``: the ``views`` copies of ``pixels``, view-major (view 0: as given).

    Rotations by 90 degrees change a non-square image's shape, so ``d4`` takes square images;
    flips are ``torch.flip`` and rotations transposes, which every export format has.
    """
    if views == "none":
        return pixels
    out = [pixels, pixels.flip(3)]
    if views == "d4":
        if pixels.shape[2] != pixels.shape[3]:
            raise VitftError(
                f"ood.views=d4 needs square images, got {tuple(pixels.shape[2:])}: "
                "set ood.views=flip"
            )
        r = pixels
        for _ in range(3):
            r = r.transpose(2, 3).flip(3)  # rot90
            out += [r, r.flip(3)]
    return torch.cat(out)


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


class OODScorer(nn.Module):
    """Scores ``(N, V, D)`` features (V views of each image) -> ``(N,)``; higher: more novel."""

    def __init__(
        self,
        method: str,
        tensors: dict[str, torch.Tensor],
        k: int = 5,
        views: str = "none",
        threshold: float = float("inf"),
        acceptance: float | None = None,
        info: dict | None = None,
    ):
        super().__init__()
        if method not in METHODS:
            raise VitftError(f"ood.method={method!r} is unknown; use one of {list(METHODS)}")
        self.method, self.k, self.views = method, int(k), views_for(views, None)
        for name, t in tensors.items():
            self.register_buffer(name, t.float())
        self.threshold, self.acceptance = float(threshold), acceptance
        self.info = dict(info or {})

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.named_buffers())

    @property
    def n_views(self) -> int:
        return VIEWS[self.views]

    @classmethod
    def fit(
        cls,
        method: str,
        features: torch.Tensor,
        labels: torch.Tensor,
        k: int = 5,
        views: str = "none",
    ) -> OODScorer:
        """Fit ``method`` on training ``features`` ``(n, D)`` or ``(n, V, D)`` (V views per image,
        as ``views`` makes them) with class ``labels`` ``(n,)``."""
        if method not in METHODS:
            raise VitftError(f"ood.method={method!r} is unknown; use one of {list(METHODS)}")
        feats = features.detach().double().cpu()
        if feats.dim() == 2:
            feats = feats[:, None]
        if len(feats) < 2:
            raise VitftError(f"ood: {len(feats)} training image(s); the scorer needs at least 2")
        info = {"train_images": len(feats), "feature_dim": int(feats.shape[-1])}
        pooled = _pool(feats)
        if method == "knn":
            if k < 1:
                raise VitftError(f"ood.k={k} must be >= 1")
            bank = nn.functional.normalize(pooled, dim=1)
            return cls(method, {"bank": bank}, k=min(int(k), len(bank)), views=views, info=info)
        labels = labels.long().cpu()
        classes = torch.unique(labels)
        means = torch.zeros(int(labels.max()) + 1, pooled.shape[1], dtype=pooled.dtype)
        for c in classes.tolist():
            means[c] = pooled[labels == c].mean(0)
        cov, shrink = ledoit_wolf(pooled - means[labels])
        precision = torch.linalg.inv(cov)
        present = torch.zeros(len(means), dtype=torch.bool)
        present[classes] = True
        info["shrinkage"] = round(shrink, 6)
        tensors = {"means": means[present], "precision": precision}
        if method == "mahalanobis_class":
            tensors["precision"] = _class_precisions(pooled, labels, classes, precision)
        return cls(method, tensors, k=int(k), views=views, info=info)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """One score per image of ``features`` ``(N, V, D)`` (or ``(N, D)``: one view)."""
        if features.dim() == 2:
            features = features[:, None]
        x = _pool(features.float())
        if self.method == "knn":
            sims = nn.functional.normalize(x, dim=1) @ self.bank.T
            return 1.0 - sims.topk(self.k, dim=1).values[:, -1]
        diff = x[:, None, :] - self.means[None]  # (n, classes, d)
        if self.method == "mahalanobis_class":  # (classes, d, d): one batched matmul per class
            per_class = diff.transpose(0, 1)
            dist = ((per_class @ self.precision) * per_class).sum(-1).transpose(0, 1)
        else:
            dist = ((diff @ self.precision) * diff).sum(-1)
        return dist.min(1).values

    def score(self, features: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self(features.detach().float().cpu())

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


def _class_precisions(
    pooled: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor, shared: torch.Tensor
) -> torch.Tensor:
    """``(classes, d, d)``: each present class's shrunk precision, the shared one for a class
    with fewer than 2 images (its own covariance would be nothing but shrinkage)."""
    out = []
    for c in classes.tolist():
        x = pooled[labels == c]
        out.append(torch.linalg.inv(ledoit_wolf(x - x.mean(0))[0]) if len(x) > 1 else shared)
    return torch.stack(out)


def _pool(features: torch.Tensor) -> torch.Tensor:
    """``(N, V, D)`` -> ``(N, D)``: averaged over the views, then L2-normalised."""
    return nn.functional.normalize(features.mean(1), dim=-1)


# Intermediate depths the OOD features take, evenly spaced: a few keep the precision matrix small
# ((5 x 768)^2 floats for ViT-Base) while covering early, middle and late evidence.
OOD_DEPTHS = 4


def ood_hidden(model: nn.Module, pixel_values: torch.Tensor):
    """``(pooled (N, D), [OOD_DEPTHS hidden states])`` of one backbone pass: the intermediate
    states the OOD features take their maxima from, evenly spaced in depth."""
    out = model.backbone(pixel_values=pixel_values, output_hidden_states=True)
    hidden = list(out.hidden_states or ())[1:]  # [0] is the embedding/stem output
    if len(hidden) > OOD_DEPTHS:
        step = (len(hidden) - 1) / (OOD_DEPTHS - 1)
        hidden = [hidden[round(i * step)] for i in range(OOD_DEPTHS)]
    return out.logits, hidden


def multiscale_features(model: nn.Module, pixel_values: torch.Tensor):
    """``(OOD features (N, D'), pooled features (N, D))`` of one backbone pass.

    The OOD features are the pooled features and the global max over positions of
    ``OOD_DEPTHS`` intermediate hidden states, each L2-normalised. A classifier's pooled features
    keep only what tells its known classes apart: a crack unseen in training barely moves a
    dent-vs-normal model's pooled features, but its strongest local response at some middle
    depth stands out (benchmarks/README.md#unknown-defects).
    """
    pooled, hidden = ood_hidden(model, pixel_values)
    return ood_descriptor(pooled, hidden), pooled


def ood_descriptor(pooled: torch.Tensor, hidden: list[torch.Tensor]) -> torch.Tensor:
    """``ood_hidden``'s outputs -> the ``(N, D')`` OOD features."""
    # (N, C, H, W) maps or (N, tokens, C) sequences: the maximum over positions
    peaks = [h.amax(dim=(2, 3)) if h.dim() == 4 else h.amax(dim=1) for h in hidden]
    parts = [nn.functional.normalize(t.flatten(1), dim=-1) for t in [pooled, *peaks]]
    return torch.cat(parts, -1)


def _view_outputs(model: nn.Module, pixel_values: torch.Tensor, views: str):
    n = pixel_values.shape[0]
    pixels = image_views(pixel_values, views)
    if torch.jit.is_tracing() or torch.compiler.is_compiling() or not n:
        chunks = [pixels]  # an exported graph holds one backbone call over every view
    else:  # eager: a view at a time; one batch of all views ran 2.3x slower on CPU (MobileViT)
        chunks = pixels.split(n)
    outs = [multiscale_features(model, chunk) for chunk in chunks]
    feats = torch.cat([f for f, _ in outs])
    return feats.reshape(VIEWS[views], n, -1).transpose(0, 1), outs[0][1][:n]


def view_features(model: nn.Module, pixel_values: torch.Tensor, views: str) -> torch.Tensor:
    """``(N, V, D')``: the OOD features of each image's ``views`` (view 0: as given)."""
    return _view_outputs(model, pixel_values, views)[0]


class ScoredClassifier(nn.Module):
    """``pixel_values -> (logits, ood_score)``: the classifier's logits of the image as given and
    its OOD score over the scorer's views, in one graph (what exports with a scorer run)."""

    def __init__(self, model: nn.Module, scorer: OODScorer):
        super().__init__()
        self.model, self.scorer = model, scorer

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats, pooled = _view_outputs(self.model, pixel_values, self.scorer.views)
        return self.model.head(pooled), self.scorer(feats)


def auroc(in_scores: torch.Tensor, out_scores: torch.Tensor) -> float:
    """P(an unknown image scores higher than a known one), ties counted half."""
    a, b = in_scores.double().flatten(), out_scores.double().flatten()
    if not len(a) or not len(b):
        return float("nan")
    greater = (b[:, None] > a[None]).double().mean()
    ties = (b[:, None] == a[None]).double().mean()
    return float(greater + 0.5 * ties)
