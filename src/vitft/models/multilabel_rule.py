"""What makes a model multi-label and how it decides, on numpy arrays and torch tensors alike.

A multi-label model has ``problem_type == "multi_label_classification"``: one sigmoid per class,
and a class is present when its probability reaches that class's threshold (``DEFAULT_THRESHOLD``
where none was tuned). Imports no torch: a predict on an ONNX Runtime export decides on numpy
probabilities. Tuning the thresholds and the metrics (torch) are ``vitft.models.multilabel``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

PROBLEM_TYPE = "multi_label_classification"
DEFAULT_THRESHOLD = 0.5


def is_multilabel(config: Any) -> bool:
    """Whether an HF config (or a dict of one, or export metadata) is multi-label."""
    get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
    return get("problem_type") == PROBLEM_TYPE or bool(get("multilabel", False))


def decide(probs: Any, thresholds: Any) -> Any:
    """``(N, C)`` 0/1 (int64, of the kind ``probs`` is: numpy or torch): class present where its
    probability reaches its threshold."""
    limits = [float(t) for t in thresholds]
    if isinstance(probs, np.ndarray):
        return (probs >= np.asarray(limits, probs.dtype)).astype(np.int64)
    return (probs >= probs.new_tensor(limits)).long()


def label_sets(present: Any, labels: Sequence[str]) -> list[list[str]]:
    """The classes present in each row of ``decide``'s output."""
    return [[c for c, on in zip(labels, row.tolist(), strict=True) if on] for row in present]
