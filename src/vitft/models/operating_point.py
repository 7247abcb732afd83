"""The inspection operating point: ok classes vs defective, and a threshold that caps escapes.

A plant asks "is this part defective?", not "which class is it?". With ``ok_classes`` (the
acceptable classes, e.g. ``[normal]``), P(defective) = 1 - the sum of the ok classes'
probabilities, and a part is called defective when P(defective) >= ``threshold``.

- escape rate: the fraction of defective parts called ok (they ship);
- false-reject rate: the fraction of ok parts called defective (they are scrapped or re-checked).

Raising the threshold trades escapes for false rejects. ``choose_threshold`` picks, on labelled
val images, the operating point with the fewest false rejects whose escape rate is at most
``max_escape``. Plain torch; the verdict (``OperatingPoint``, ``p_defective``: numpy or torch)
lives in ``vitft.models.verdict``, the files that hold a chosen point in
``vitft.modelio.operating_point``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from vitft.core.errors import VitftError
from vitft.models.verdict import OperatingPoint, check_ok_classes, for_model, p_defective

# The verdict itself (numpy or torch, no torch import) lives in vitft.models.verdict.
__all__ = [
    "OperatingPoint",
    "check_ok_classes",
    "choose",
    "choose_threshold",
    "curve",
    "for_model",
    "is_defective_target",
    "p_defective",
    "rates",
]


def is_defective_target(target: torch.Tensor, labels: Sequence[str], ok_classes: Sequence[str]):
    """``(N,)`` bool: the true class (an index into ``labels``) is not an ok class."""
    ok = torch.tensor([c in ok_classes for c in labels])
    return ~ok[target.cpu()]


def rates(called_defective: torch.Tensor, defective: torch.Tensor) -> dict[str, Any]:
    """Escape and false-reject rates (None where there are no defective / ok images)."""
    n_def, n_ok = int(defective.sum()), int((~defective).sum())
    escapes = int((defective & ~called_defective).sum())
    false_rejects = int((~defective & called_defective).sum())
    return {
        "escape_rate": escapes / n_def if n_def else None,
        "false_reject_rate": false_rejects / n_ok if n_ok else None,
        "escapes": escapes,
        "defective": n_def,
        "false_rejects": false_rejects,
        "ok": n_ok,
    }


def curve(scores: torch.Tensor, defective: torch.Tensor) -> dict[str, torch.Tensor]:
    """Escape and false-reject rates at every threshold where either changes: the distinct
    scores, plus one above all of them (every part called ok). Thresholds ascend, so escape rates
    rise and false-reject rates fall."""
    scores = scores.double()
    thresholds = torch.cat([torch.unique(scores), torch.tensor([math.inf], dtype=torch.float64)])
    bad, good = torch.sort(scores[defective]).values, torch.sort(scores[~defective]).values
    # searchsorted (left): how many of the sorted scores lie below each threshold
    escapes = torch.searchsorted(bad, thresholds).double()
    rejects = len(good) - torch.searchsorted(good, thresholds).double()
    return {
        "threshold": thresholds,
        "escape_rate": escapes / max(len(bad), 1),
        "false_reject_rate": rejects / max(len(good), 1),
    }


def choose_threshold(scores: torch.Tensor, defective: torch.Tensor, max_escape: float) -> float:
    """The threshold on P(defective) with the fewest false rejects whose escape rate on these
    images is at most ``max_escape`` (of those, the one with the fewest escapes).

    At most ``floor(max_escape * n)`` of the ``n`` defective images may escape, so the one above
    them must be caught; so must every defective image that no more ok images than that one lies
    below. The threshold sits halfway into the gap under the lowest image it catches: the rates
    here are the same, and a small numeric difference between formats cannot flip that image.
    """
    if not 0 <= max_escape < 1:
        raise VitftError(f"max_escape={max_escape} must be in [0, 1): the escape rate to allow")
    scores = scores.double()
    bad = torch.sort(scores[defective]).values
    if not len(bad):
        raise VitftError(
            "no defective images (classes outside task.ok_classes) to choose the threshold on; "
            "the val split needs some"
        )
    allowed = math.floor(max_escape * len(bad) + 1e-9)  # defective images that may escape
    catch = bad[allowed]
    # Catching the defective images above the highest ok image below ``catch`` costs no false
    # reject (without such an ok image, catching all of them costs none).
    ok_below = scores[~defective & (scores < catch)]
    catch = bad[bad > ok_below.max()].min() if len(ok_below) else bad[0]
    below = scores[scores < catch]
    lower = float(below.max()) if len(below) else 0.0
    return (lower + float(catch)) / 2


def choose(
    probs: torch.Tensor,
    target: torch.Tensor,
    labels: Sequence[str],
    ok_classes: Sequence[str],
    max_escape: float,
    split: str = "val",
) -> OperatingPoint:
    """The operating point for ``max_escape`` on labelled images (``target``: class indices)."""
    scores = p_defective(probs, labels, ok_classes)
    defective = is_defective_target(target, labels, ok_classes)
    threshold = choose_threshold(scores, defective, float(max_escape))
    chosen = rates(scores >= threshold, defective)
    return OperatingPoint(
        list(ok_classes), threshold, float(max_escape), {"split": split, **chosen}
    )
