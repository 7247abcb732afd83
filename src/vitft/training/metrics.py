"""torchmetrics collections for classification, one per stage (train/val/test).

``validate_args=False``: the checks look at tensor values on the host, a GPU sync per step; preds
are argmax indices and targets come from our own label mapping.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
    MultilabelConfusionMatrix,
    MultilabelExactMatch,
    MultilabelF1Score,
    MultilabelHammingDistance,
    MultilabelPrecision,
    MultilabelRecall,
)

# Metrics with one value per class; logged as <stage>/<metric>_<class>.
PER_CLASS = ("precision", "recall")


def build_metrics(
    num_classes: int, prefix: str, multilabel: bool = False, ordinal: bool = False
) -> MetricCollection:
    """Single-label: accuracy, macro F1, per-class P/R, and for ordered grades (``ordinal``) the
    mean absolute grade error. Multi-label (on 0/1 decisions): ``acc`` is subset accuracy (every
    class right), Hamming loss, micro/macro F1, per-class P/R/F1."""
    if multilabel:
        n = num_classes
        return MetricCollection(
            {
                "acc": MultilabelExactMatch(n, validate_args=False),
                "hamming": MultilabelHammingDistance(n, average="micro", validate_args=False),
                "f1_micro": MultilabelF1Score(n, average="micro", validate_args=False),
                "f1_macro": MultilabelF1Score(n, average="macro", validate_args=False),
                "precision": MultilabelPrecision(n, average=None, validate_args=False),
                "recall": MultilabelRecall(n, average=None, validate_args=False),
                "f1": MultilabelF1Score(n, average=None, validate_args=False),
            },
            prefix=prefix,
        )
    metrics = {
        "acc": MulticlassAccuracy(num_classes, average="micro", validate_args=False),
        "f1_macro": MulticlassF1Score(num_classes, average="macro", validate_args=False),
        "precision": MulticlassPrecision(num_classes, average=None, validate_args=False),
        "recall": MulticlassRecall(num_classes, average=None, validate_args=False),
    }
    if ordinal:
        metrics["mae_grade"] = GradeError()
    return MetricCollection(metrics, prefix=prefix)


def build_confusion(
    num_classes: int, multilabel: bool = False
) -> MulticlassConfusionMatrix | MultilabelConfusionMatrix:
    """Single-label: true x predicted. Multi-label: per class [[TN, FP], [FN, TP]]."""
    if multilabel:
        return MultilabelConfusionMatrix(num_classes, validate_args=False)
    return MulticlassConfusionMatrix(num_classes, validate_args=False)


class BatchMean(Metric):
    """Mean of per-batch values weighted by batch size (the epoch loss), synchronised over ranks.

    Nothing in ``update`` waits for the GPU: torchmetrics' MeanMetric checks every value for NaN
    on the host (and its nan_strategy="disable" drops the weights). A NaN loss shows as NaN.
    """

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, value: Tensor, n: int) -> None:
        self.total += value.detach().to(self.total.dtype) * n
        self.count += n

    def compute(self) -> Tensor:
        return self.total / self.count


class GradeError(BatchMean):
    """Mean absolute grade error |predicted - true| of ordered classes (index = grade)."""

    def update(self, preds: Tensor, target: Tensor) -> None:  # type: ignore[override]
        errors = (preds - target).abs().to(self.total.dtype)
        self.total += errors.sum()
        self.count += errors.numel()


def flatten(values: dict, classes: list[str]) -> dict[str, float]:
    """Per-class vectors -> one scalar per class, named after the class."""
    out = {}
    for key, value in values.items():
        if value.ndim == 0:
            out[key] = float(value)
        else:
            out.update({f"{key}_{c}": float(v) for c, v in zip(classes, value, strict=True)})
    return out
