"""The inspection operating point: ok classes vs defective, and a threshold that caps escapes.

A plant asks "is this part defective?", not "which class is it?". With ``ok_classes`` (the
acceptable classes, e.g. ``[normal]``), P(defective) = 1 - the sum of the ok classes'
probabilities, and a part is called defective when P(defective) >= ``threshold``.

- escape rate: the fraction of defective parts called ok (they ship);
- false-reject rate: the fraction of ok parts called defective (they are scrapped or re-checked).

Raising the threshold trades escapes for false rejects. ``choose_threshold`` picks, on labelled
val images, the operating point with the fewest false rejects whose escape rate is at most
``max_escape``. Plain torch; the files that hold a chosen point live in
``vitft.modelio.operating_point``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from vitft.core.errors import VitftError


def check_ok_classes(
    ok_classes: Sequence[str] | None, labels: Sequence[str], key: str = "task.ok_classes"
) -> list[str] | None:
    """``ok_classes`` as a list (None: the feature is off); a name that is not a class, or no
    defective class left, is a one-line error naming ``key``."""
    if ok_classes is None:
        return None
    if isinstance(ok_classes, str):
        ok_classes = [ok_classes]
    ok = [str(c) for c in ok_classes]
    unknown = [c for c in ok if c not in labels]
    if unknown or not ok:
        raise VitftError(
            f"{key}={ok} names {unknown or 'no class'}, not classes of the model; valid "
            f"classes: {list(labels)} (task.ok_classes=null turns the ok/defective view off)"
        )
    if set(ok) >= set(labels):
        raise VitftError(
            f"{key}={ok} are all the classes {list(labels)}: leave at least one "
            "defective class out of it"
        )
    return ok


def for_model(
    point: OperatingPoint | None, labels: Sequence[str], multilabel: bool = False
) -> OperatingPoint | None:
    """``point`` checked against a model's ``labels`` (None stays None)."""
    if point is not None:
        if multilabel:  # 1 - the ok classes' sigmoids is no probability
            raise VitftError("an operating point (ok_classes) is for single-label models")
        check_ok_classes(point.ok_classes, labels, "operating point ok_classes")
    return point


def p_defective(
    probs: torch.Tensor, labels: Sequence[str], ok_classes: Sequence[str]
) -> torch.Tensor:
    """``(N,)`` P(defective) = 1 - sum of the ok classes' probabilities (softmax rows)."""
    ok = torch.tensor([c in ok_classes for c in labels], device=probs.device)
    return (1 - probs[:, ok].sum(-1)).clamp(0, 1)


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


@dataclass
class OperatingPoint:
    """Which classes are ok, and from what P(defective) a part is called defective."""

    ok_classes: list[str]
    threshold: float
    max_escape: float | None = None  # the cap the threshold was chosen for
    # Where it was chosen and its rates there, e.g. {"split": "val", "escape_rate": ...}.
    chosen_on: dict[str, Any] = field(default_factory=dict)

    def scores(self, probs: torch.Tensor, labels: Sequence[str]) -> torch.Tensor:
        return p_defective(probs, labels, self.ok_classes)

    def defective(self, scores: torch.Tensor) -> torch.Tensor:
        return scores >= self.threshold

    def verdicts(self, probs: torch.Tensor, labels: Sequence[str]) -> list[tuple[float, bool]]:
        """(P(defective), defective) per row of ``probs``."""
        scores = self.scores(probs, labels)
        return list(zip(scores.tolist(), self.defective(scores).tolist(), strict=True))

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok_classes": list(self.ok_classes),
            "threshold": float(self.threshold),
            "max_escape": self.max_escape,
            "rule": "defective when p_defective = 1 - sum(p[ok_classes]) >= threshold",
            "chosen_on": dict(self.chosen_on),
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any], where: str) -> OperatingPoint:
        """From ``to_dict``'s output; ``where`` (the file) names what to fix when it is broken."""
        try:
            return cls(
                ok_classes=[str(c) for c in doc["ok_classes"]],
                threshold=float(doc["threshold"]),
                max_escape=doc.get("max_escape"),
                chosen_on=dict(doc.get("chosen_on") or {}),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise VitftError(
                f"{where}: the operating point needs ok_classes and a numeric threshold ({err!r}); "
                "choose it again with eval.py max_escape=<rate>, or delete it"
            ) from None


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
