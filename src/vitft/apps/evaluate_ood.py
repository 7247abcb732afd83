"""eval's unknown-defect block: the OOD score on the evaluated images, and with ``ood_dir``
(images of classes the model never saw) its AUROC, false-accept rate and operating curve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vitft.core.errors import VitftError
from vitft.deploy.predictor import Predictor, Results
from vitft.models.ood import auroc


def ood_metrics(predictor: Predictor, results: Results, ood_dir: str | None, cfg) -> dict:
    """The unknown flag on the evaluated (known) images, and with ``ood_dir`` (images of classes
    the model never saw) how well the OOD score separates them: AUROC and false-accept rate."""
    if predictor.ood is None:
        if ood_dir:
            raise VitftError(
                f"ood_dir={ood_dir} needs a model with an OOD scorer (model/ood.json, written by "
                "train with ood.method set) or an export of one (export.py ood=true)"
            )
        return {}
    known = torch.tensor([p.ood_score for p in results.predictions])
    scorer = predictor.ood
    out: dict[str, Any] = {
        "method": scorer.method,
        "threshold": scorer.threshold,
        "acceptance_target": scorer.acceptance,
        "known_accepted": float((~scorer.unknown(known)).float().mean()),
    }
    if ood_dir:
        if not Path(ood_dir).expanduser().exists():
            raise VitftError(f"ood_dir={ood_dir} does not exist: a folder of unknown images")
        found = predictor.predict_files(ood_dir, progress=cfg.get("progress"))
        if not found.predictions:
            raise VitftError(f"ood_dir={ood_dir} has no readable images")
        unknown = torch.tensor([p.ood_score for p in found.predictions])
        out.update(
            {
                "ood_dir": str(ood_dir),
                "ood_images": len(unknown),
                "auroc": auroc(known, unknown),
                "false_accept": float((~scorer.unknown(unknown)).float().mean()),
                # the shipped point and the trade around it (ood.acceptance moves along it)
                "operating_point": {
                    "false_alarm": 1.0 - out["known_accepted"],
                    "flagged": float(scorer.unknown(unknown).float().mean()),
                },
                "curve": operating_curve(known, unknown),
            }
        )
    return out


# False-alarm rates on the known images the curve is read at.
CURVE_FALSE_ALARMS = (0.01, 0.02, 0.05, 0.1, 0.2)


def operating_curve(known: torch.Tensor, unknown: torch.Tensor) -> list[dict]:
    """For each false-alarm rate on the ``known`` images: the threshold that gives it and the
    share of ``unknown`` images it flags (the ROC read at the rates a line can live with)."""
    points = []
    for rate in CURVE_FALSE_ALARMS:
        threshold = float(torch.quantile(known.double(), 1.0 - rate))
        points.append(
            {
                "false_alarm": float((known > threshold).float().mean()),
                "flagged": float((unknown > threshold).float().mean()),
                "threshold": threshold,
            }
        )
    return points
