"""The inspection operating point's file in a model dir: ``operating_point.json`` (ok classes,
the threshold on P(defective), the escape cap it was chosen for and its rates where it was
chosen). Written by train (task.ok_classes + max_escape) or eval (max_escape=...)."""

from __future__ import annotations

import json
from pathlib import Path

from vitft.core.errors import VitftError
from vitft.models.operating_point import OperatingPoint, check_ok_classes

OPERATING_POINT_JSON = "operating_point.json"


def save_operating_point(point: OperatingPoint, model_dir: str | Path) -> Path:
    path = Path(model_dir) / OPERATING_POINT_JSON
    path.write_text(json.dumps(point.to_dict(), indent=2))
    return path


def load_operating_point(model_dir: str | Path | None, labels: list[str]) -> OperatingPoint | None:
    """The model dir's operating point, checked against the model's ``labels``; None without."""
    path = Path(model_dir) / OPERATING_POINT_JSON if model_dir else None
    if path is None or not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise VitftError(f"{path} is not valid JSON ({err}): fix or delete it") from None
    point = OperatingPoint.from_dict(doc, str(path))
    check_ok_classes(point.ok_classes, labels, f"{path}: ok_classes")
    return point
