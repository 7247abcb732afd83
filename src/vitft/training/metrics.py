"""torchmetrics collections for classification, one per stage (train/val/test)."""

from __future__ import annotations

from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

# Metrics with one value per class; logged as <stage>/<metric>_<class>.
PER_CLASS = ("precision", "recall")


def build_metrics(num_classes: int, prefix: str) -> MetricCollection:
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "f1_macro": MulticlassF1Score(num_classes, average="macro"),
            "precision": MulticlassPrecision(num_classes, average=None),
            "recall": MulticlassRecall(num_classes, average=None),
        },
        prefix=prefix,
    )


def build_confusion(num_classes: int) -> MulticlassConfusionMatrix:
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
