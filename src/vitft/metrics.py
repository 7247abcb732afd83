"""torchmetrics collections for classification, one per stage (train/val/test)."""

from __future__ import annotations

from torchmetrics import MetricCollection
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


def build_metrics(num_classes: int, prefix: str, multilabel: bool = False) -> MetricCollection:
    """Single-label: accuracy, macro F1, per-class P/R. Multi-label (on 0/1 decisions): ``acc`` is
    subset accuracy (every class right), Hamming loss, micro/macro F1, per-class P/R/F1."""
    if multilabel:
        n = num_classes
        return MetricCollection(
            {
                "acc": MultilabelExactMatch(n),
                "hamming": MultilabelHammingDistance(n, average="micro"),
                "f1_micro": MultilabelF1Score(n, average="micro"),
                "f1_macro": MultilabelF1Score(n, average="macro"),
                "precision": MultilabelPrecision(n, average=None),
                "recall": MultilabelRecall(n, average=None),
                "f1": MultilabelF1Score(n, average=None),
            },
            prefix=prefix,
        )
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "f1_macro": MulticlassF1Score(num_classes, average="macro"),
            "precision": MulticlassPrecision(num_classes, average=None),
            "recall": MulticlassRecall(num_classes, average=None),
        },
        prefix=prefix,
    )


def build_confusion(
    num_classes: int, multilabel: bool = False
) -> MulticlassConfusionMatrix | MultilabelConfusionMatrix:
    """Single-label: true x predicted. Multi-label: per class [[TN, FP], [FN, TP]]."""
    if multilabel:
        return MultilabelConfusionMatrix(num_classes)
    return MulticlassConfusionMatrix(num_classes)


def flatten(values: dict, classes: list[str]) -> dict[str, float]:
    """Per-class vectors -> one scalar per class, named after the class."""
    out = {}
    for key, value in values.items():
        if value.ndim == 0:
            out[key] = float(value)
        else:
            out.update({f"{key}_{c}": float(v) for c, v in zip(classes, value, strict=True)})
    return out
