"""Multi-label decisions shared by training, evaluation, prediction and export parity.

A multi-label model has ``config.problem_type == "multi_label_classification"`` (the HF field, so
``transformers.pipeline`` applies a sigmoid too): one independent sigmoid per class, and a class is
present when its probability reaches that class's threshold. Thresholds are tuned on val to
maximise each class's F1 and travel with the model (``vitft.json``, export ``metadata.json``).
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics.functional.classification import (
    multilabel_average_precision,
    multilabel_confusion_matrix,
    multilabel_exact_match,
    multilabel_f1_score,
    multilabel_hamming_distance,
    multilabel_precision,
    multilabel_precision_recall_curve,
    multilabel_recall,
)

from vitft.core.errors import VitftError
from vitft.models.multilabel_rule import (
    DEFAULT_THRESHOLD,
    PROBLEM_TYPE,
    decide,
    is_multilabel,
    label_sets,
)

# What is multi-label and how it decides (numpy or torch; no torch import): multilabel_rule.
__all__ = [
    "DEFAULT_THRESHOLD",
    "PROBLEM_TYPE",
    "compute_metrics",
    "curve_ap",
    "decide",
    "filled",
    "is_multilabel",
    "label_sets",
    "loss_weights",
    "pos_weights",
    "tune_from_curve",
    "tune_thresholds",
]


def tune_from_curve(
    precision: list[torch.Tensor], recall: list[torch.Tensor], thresholds: list[torch.Tensor]
) -> list[float | None]:
    """Per class, the threshold that maximises F1 on a PR curve (None: no positives to tune on).

    The threshold is put halfway between the chosen score and the next lower one, so the same
    val decisions hold with a margin on both sides.
    """
    out: list[float | None] = []
    for p, r, t in zip(precision, recall, thresholds, strict=True):
        p, r = p[:-1], r[:-1]  # the last point (recall 0, precision 1) has no threshold
        if len(t) == 0 or float(p.max()) == 0.0:  # no positives: precision 0 everywhere
            out.append(None)
            continue
        f1 = 2 * p * r / (p + r).clamp(min=1e-12)
        best = int(torch.argmax(f1))  # first maximum: the lowest threshold with the best F1
        below = float(t[best - 1]) if best > 0 else 0.0
        out.append((float(t[best]) + below) / 2)
    return out


def curve_ap(precision: torch.Tensor, recall: torch.Tensor) -> float | None:
    """Average precision of one class's PR curve (None without positives)."""
    if precision.numel() < 2 or float(precision[:-1].max()) == 0.0:
        return None
    return float(-torch.sum((recall[1:] - recall[:-1]) * precision[:-1]))


def tune_thresholds(probs: torch.Tensor, target: torch.Tensor) -> list[float | None]:
    """Per-class F1-maximising thresholds for ``probs`` ``(N, C)`` against 0/1 ``target``."""
    curve = multilabel_precision_recall_curve(probs, target.long(), probs.shape[1])
    return tune_from_curve(*curve)


def filled(thresholds: list[float | None]) -> list[float]:
    """Tuned thresholds with the default for classes that could not be tuned."""
    return [DEFAULT_THRESHOLD if t is None else float(t) for t in thresholds]


def loss_weights(spec: Any, balanced: torch.Tensor) -> list[float] | None:
    """``loss.class_weights`` as one weight per class: null, ``auto`` (the ``balanced`` weights
    of the loss: inverse class frequency, or negatives / positives for BCE), ``sqrt`` (their
    square root) or a list."""
    if spec is None:
        return None
    if spec in ("auto", "sqrt"):
        weights = balanced.sqrt() if spec == "sqrt" else balanced
        return [round(float(w), 6) for w in weights]
    if isinstance(spec, str):
        raise VitftError(
            f"loss.class_weights={spec!r} is not an option: use null, auto, sqrt or one number "
            "per class"
        )
    weights = [float(w) for w in spec]
    if len(weights) != len(balanced):
        raise VitftError(
            f"loss.class_weights has {len(weights)} values but the data has {len(balanced)} classes"
        )
    return weights


def pos_weights(spec: Any, positives: torch.Tensor, n_images: int) -> list[float] | None:
    """BCE ``pos_weight`` (``loss_weights``; auto: negatives / positives per class in train)."""
    return loss_weights(spec, (n_images - positives) / positives.clamp(min=1))


def compute_metrics(
    probs: torch.Tensor, target: torch.Tensor, classes: list[str], thresholds: list[float]
) -> dict[str, Any]:
    """Subset accuracy, Hamming loss, micro/macro F1, per-class P/R/F1/AP/support, confusion."""
    n = len(classes)
    target = target.long()
    preds = decide(probs, thresholds)
    support = target.sum(0)
    per_class = {
        "precision": multilabel_precision(preds, target, n, average=None),
        "recall": multilabel_recall(preds, target, n, average=None),
        "f1": multilabel_f1_score(preds, target, n, average=None),
        "average_precision": multilabel_average_precision(probs, target, n, average=None),
    }
    ranked = (support > 0) & (support < len(target))
    metrics: dict[str, Any] = {
        "images": len(target),
        "subset_accuracy": float(multilabel_exact_match(preds, target, n)),
        "hamming_loss": float(multilabel_hamming_distance(preds, target, n, average="micro")),
        "f1_micro": float(multilabel_f1_score(preds, target, n, average="micro")),
        "f1_macro": float(multilabel_f1_score(preds, target, n, average="macro")),
        "map": float(per_class["average_precision"][ranked].mean()) if ranked.any() else None,
    }
    metrics["per_class"] = {
        cls: {
            **{
                name: float(v[i]) if (name != "average_precision" or ranked[i]) else None
                for name, v in per_class.items()
            },
            "support": int(support[i]),
            "threshold": float(thresholds[i]),
        }
        for i, cls in enumerate(classes)
    }
    # Per class [[TN, FP], [FN, TP]].
    metrics["confusion"] = {
        cls: m.tolist()
        for cls, m in zip(classes, multilabel_confusion_matrix(preds, target, n), strict=True)
    }
    return metrics
