"""eval's ok-vs-defective view (``task.ok_classes``): the split's escape and false-reject rates,
the curve between them as the threshold on P(defective) moves, and the operating point on it.

The point is the model's own (``model/operating_point.json``, or an export's metadata), or with
``max_escape`` one chosen on the val split and stored in the model dir. Without either, the
rates are those of the plain class decision (defective when the top class is not an ok class).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vitft.core import plots
from vitft.core.errors import VitftError
from vitft.deploy.metadata import METADATA_FILE
from vitft.deploy.predictor import Predictor, Results
from vitft.modelio.operating_point import save_operating_point
from vitft.models.operating_point import (
    OperatingPoint,
    check_ok_classes,
    choose,
    curve,
    is_defective_target,
    p_defective,
    rates,
)
from vitft.run.rundir import own_run

log = logging.getLogger(__name__)

# () -> (probabilities, true class indices) of the val split, predicted when max_escape needs them
ValSplit = Callable[[], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class InspectionView:
    metrics: dict[str, Any]  # escape_rate, false_reject_rate and the operating_point block
    curve: dict[str, torch.Tensor]
    argmax: dict[str, Any]  # the rates of the plain class decision

    def figure(self):
        block = self.metrics["operating_point"]
        chosen = None
        if block["threshold"] is not None:
            chosen = (self.metrics["false_reject_rate"], self.metrics["escape_rate"])
        return plots.escape_curve(
            self.curve["false_reject_rate"].numpy(),
            self.curve["escape_rate"].numpy(),
            chosen=chosen,
            chosen_label=_point_label(block),
            argmax=(self.argmax["false_reject_rate"], self.argmax["escape_rate"]),
            max_escape=block["max_escape"],
            title=f"ok: {', '.join(block['ok_classes'])}; {block['defective']} defective, "
            f"{block['ok']} ok images",
        )

    def caption(self) -> str:
        block = self.metrics["operating_point"]
        return (
            "escape rate (defective parts called ok) against false-reject rate (ok parts called "
            f"defective) as the threshold on P(defective) moves; {_point_label(block)}: "
            f"{block['escapes']} of {block['defective']} defective images escape, "
            f"{block['false_rejects']} of {block['ok']} ok images are rejected"
        )


def _point_label(block: dict) -> str:
    if block["threshold"] is None:
        return "the top class decides (no threshold: set max_escape)"
    where = f"chosen on {block['chosen_on'].get('split', 'val')}"
    cap = f" for max_escape {block['max_escape']:g}" if block["max_escape"] is not None else ""
    return f"threshold {block['threshold']:.3g} ({where}{cap})"


def ok_classes_for(cfg: Any, predictor: Predictor) -> list[str] | None:
    """The model's own ok classes (its operating point's; on the run's own split the run's
    ``task.ok_classes``), else eval's ``task.ok_classes``."""
    if predictor.operating_point is not None:
        return predictor.operating_point.ok_classes
    run = own_run(cfg)
    task = (run.config().get("task") or {}) if run is not None else cfg.task
    return check_ok_classes(task.get("ok_classes"), predictor.labels)


def inspection(
    cfg: Any, predictor: Predictor, results: Results, probs: torch.Tensor, target, val: ValSplit
) -> InspectionView | None:
    """The view of the evaluated split (None without ok classes); sets each prediction's
    ``p_defective`` and ``defective`` as the operating point sees them."""
    ok = ok_classes_for(cfg, predictor)
    max_escape = cfg.get("max_escape")
    if ok is None:
        if max_escape is not None:
            raise VitftError(
                f"max_escape={max_escape} needs ok classes: set task.ok_classes=[...] (the "
                f"acceptable ones among {predictor.labels})"
            )
        return None
    labels = predictor.labels
    point, stored = predictor.operating_point, None
    if max_escape is not None:
        point = choose(*val(), labels, ok, float(max_escape), "val")
        stored = _store(cfg, point)
    scores = p_defective(probs, labels, ok)
    defective = is_defective_target(target, labels, ok)
    ok_mask = torch.tensor([c in ok for c in labels])
    argmax_called = ~ok_mask[probs.argmax(-1)]
    called = point.defective(scores) if point is not None else argmax_called
    for p, score, bad in zip(results.predictions, scores.tolist(), called.tolist(), strict=True):
        p.p_defective, p.defective = score, bool(bad)
    at = rates(called, defective)
    block = {
        "ok_classes": ok,
        "threshold": point.threshold if point is not None else None,
        "max_escape": point.max_escape if point is not None else None,
        "chosen_on": point.chosen_on if point is not None else None,
        "stored": stored,
        **at,
        "argmax": rates(argmax_called, defective),
    }
    metrics = {"escape_rate": at["escape_rate"], "false_reject_rate": at["false_reject_rate"]}
    metrics["operating_point"] = block
    return InspectionView(metrics, curve(scores, defective), block["argmax"])


def _store(cfg: Any, point: OperatingPoint) -> str | None:
    """Store a point chosen by eval in the model dir (predict and serve apply it from then on);
    an export or a checkpoint only reports it."""
    model_dir = Path(cfg.get("model_dir") or "")
    if not cfg.get("model_dir") or (model_dir / METADATA_FILE).is_file():
        log.warning(
            "operating point not stored: it is stored in an HF model dir (eval.py "
            "model_dir=<run>/model max_escape=...); export again to carry it"
        )
        return None
    path = save_operating_point(point, model_dir)
    log.info("operating point stored in %s: predict and serve apply it", path)
    return str(path)
