"""Fit the unknown-defect (OOD) scorer of a trained model on its own training and val images.

Features come from the model as deployed (preprocessing of inference, no augmentation); the
scorer is fitted on the train split and its threshold set on the val split, so that
``acceptance`` of in-distribution images pass (``vitft.models.ood``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vitft.deploy.backends import TorchBackend
from vitft.deploy.predictor import Predictor
from vitft.models.ood import OODScorer

log = logging.getLogger(__name__)


def feature_predictor(model: Any, processor: Any, batch_size: int = 64) -> Predictor:
    """A Predictor that extracts backbone features on the model's own device."""
    device = next(model.parameters()).device
    return Predictor(TorchBackend(model, device), model.labels, processor, batch_size=batch_size)


def labelled_features(
    predictor: Predictor, samples: Sequence[tuple[Path, int]], views: str = "none"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, V, D)`` features of the ``views`` of readable ``samples`` ``(path, label)``, and
    their labels."""
    feats, names, _ = predictor.features_files([p for p, _ in samples], progress=False, views=views)
    label_of = {str(p): int(y) for p, y in samples}
    return feats, torch.tensor([label_of[n] for n in names], dtype=torch.long)


def fit_scorer(
    model: Any,
    processor: Any,
    train: Sequence[tuple[Path, int]],
    val: Sequence[tuple[Path, int]],
    method: str = "mahalanobis",
    acceptance: float = 0.95,
    k: int = 5,
    batch_size: int = 64,
    views: str = "none",
) -> OODScorer:
    """Fit ``method`` on ``train``'s features over ``views``; threshold on ``val`` (on train when
    val is empty, which accepts too much: a warning says so)."""
    predictor = feature_predictor(model, processor, batch_size)
    feats, labels = labelled_features(predictor, train, views)
    scorer = OODScorer.fit(method, feats, labels, k=k, views=views)
    held_out, _ = labelled_features(predictor, val, views) if val else (feats[:0], None)
    if not len(held_out):
        log.warning("ood: no val images; threshold set on the training images (optimistic)")
        held_out = feats
    scorer.calibrate(held_out, acceptance)
    log.info(
        "ood: %s over %s views on %d train images, threshold %.4g accepts %.1f%% of %d val images",
        method,
        views,
        len(feats),
        scorer.threshold,
        100 * scorer.info["calibration_accepted"],
        len(held_out),
    )
    return scorer
