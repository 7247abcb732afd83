"""Fit the unknown-defect (OOD) scorer of a trained model on its own training and val images.

Features come from the model as deployed (preprocessing of inference, no augmentation); the
scorer is fitted on the train split and its threshold set on the val split, so that
``acceptance`` of in-distribution images pass (``vitft.models.ood``). Training hands the batches
over from its own loader (workers included) and the fit runs on the training device: with 8
views per image (``d4``) it is a full pass over the training set eight times.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sized
from typing import Any

import torch
from tqdm.auto import tqdm

from vitft.deploy.backends import TorchBackend
from vitft.deploy.predictor import Predictor
from vitft.models.ood import OODScorer

log = logging.getLogger(__name__)


def feature_predictor(model: Any, processor: Any, batch_size: int = 64) -> Predictor:
    """A Predictor that extracts backbone features on the model's own device."""
    device = next(model.parameters()).device
    return Predictor(TorchBackend(model, device), model.labels, processor, batch_size=batch_size)


def batch_features(
    backend: TorchBackend, batches: Iterable, views: str, desc: str, progress: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, V, D)`` features over ``views`` of every ``(pixels, labels)`` batch, and the labels."""
    feats: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    total = len(batches) if isinstance(batches, Sized) else None
    for pixels, y in tqdm(batches, desc=desc, total=total, unit="batch", disable=not progress):
        feats.append(backend.features(pixels, views))
        labels.append(torch.as_tensor(y, dtype=torch.long))
    if not feats:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    return torch.cat(feats), torch.cat(labels)


def fit_scorer(
    model: Any,
    train: Iterable,
    val: Iterable,
    device: str | torch.device = "cpu",
    method: str = "mahalanobis",
    acceptance: float = 0.95,
    k: int = 5,
    views: str = "none",
    progress: bool = True,
) -> OODScorer:
    """Fit ``method`` on the features over ``views`` of ``train``'s ``(pixels, labels)`` batches
    (preprocessed as for inference) on ``device``; threshold on ``val``'s (on train when val is
    empty, which accepts too much: a warning says so). The model is back on its device after."""
    start = time.perf_counter()
    home = next(model.parameters()).device
    backend = TorchBackend(model, device)
    try:
        feats, labels = batch_features(backend, train, views, "ood fit (train)", progress)
        held_out, _ = batch_features(backend, val, views, "ood fit (val)", progress)
    finally:
        model.to(home)
    scorer = OODScorer.fit(method, feats, labels, k=k, views=views)
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
    log.info("ood: fitted in %.1f s on %s", time.perf_counter() - start, backend.device)
    return scorer
