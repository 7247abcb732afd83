"""The ok/defective verdict of an operating point, on numpy arrays and torch tensors alike.

With ``ok_classes`` (the acceptable classes, e.g. ``[normal]``), P(defective) = 1 - the sum of the
ok classes' probabilities, and a part is called defective when P(defective) >= ``threshold``.
Imports no torch: a predict on an ONNX Runtime export applies it to numpy probabilities. Choosing
the threshold (torch) is ``vitft.models.operating_point``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

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


def p_defective(probs: Any, labels: Sequence[str], ok_classes: Sequence[str]) -> Any:
    """``(N,)`` P(defective) = 1 - sum of the ok classes' probabilities (softmax rows), of the
    kind ``probs`` is (numpy or torch)."""
    ok = [c in ok_classes for c in labels]  # a boolean mask for numpy and torch alike
    return (1 - probs[:, ok].sum(-1)).clip(0, 1)


@dataclass
class OperatingPoint:
    """Which classes are ok, and from what P(defective) a part is called defective."""

    ok_classes: list[str]
    threshold: float
    max_escape: float | None = None  # the cap the threshold was chosen for
    # Where it was chosen and its rates there, e.g. {"split": "val", "escape_rate": ...}.
    chosen_on: dict[str, Any] = field(default_factory=dict)

    def scores(self, probs: Any, labels: Sequence[str]) -> Any:
        return p_defective(probs, labels, self.ok_classes)

    def defective(self, scores: Any) -> Any:
        return scores >= self.threshold

    def verdicts(self, probs: Any, labels: Sequence[str]) -> list[tuple[float, bool]]:
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
