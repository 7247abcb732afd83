"""Choose a trained model's inspection operating point on its val images (what train runs when
the task has ``ok_classes``): the model as deployed predicts them, and
``vitft.models.operating_point.choose`` takes the threshold that caps their escape rate."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vitft.deploy.backends import TorchBackend
from vitft.deploy.predictor import Predictor
from vitft.models.operating_point import OperatingPoint, choose, is_defective_target

log = logging.getLogger(__name__)


def fit_operating_point(
    model: Any,
    processor: Any,
    val: Sequence[tuple[Path, int]],
    ok_classes: Sequence[str],
    max_escape: float,
    batch_size: int = 64,
) -> OperatingPoint | None:
    """The threshold on P(defective) with the fewest false rejects whose escape rate on ``val``
    (``(path, class index)``) is at most ``max_escape``; None when val has no defective image."""
    device = next(model.parameters()).device
    predictor = Predictor(
        TorchBackend(model, device), model.labels, processor, batch_size=batch_size
    )
    results = predictor.predict_files([p for p, _ in val], progress=False)
    label_of = {str(p): int(y) for p, y in val}
    labels = predictor.labels
    probs = torch.tensor([[p.probs[c] for c in labels] for p in results.predictions])
    target = torch.tensor([label_of[p.path] for p in results.predictions], dtype=torch.long)
    if not is_defective_target(target, labels, ok_classes).any():
        log.warning("operating point: no defective val images to choose it on; none stored")
        return None
    point = choose(probs, target, labels, ok_classes, max_escape, "val")
    facts = point.chosen_on
    log.info(
        "operating point: p_defective >= %.4g lets %d of %d defective val images through "
        "(max_escape %.3g) and rejects %d of %d ok ones",
        point.threshold, facts["escapes"], facts["defective"], max_escape,
        facts["false_rejects"], facts["ok"],
    )  # fmt: skip
    return point
