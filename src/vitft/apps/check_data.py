"""check_data(cfg): screen a dataset (folders or a manifest) before training; write its report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vitft.core.errors import VitftError
from vitft.data.check import check_files, check_manifest
from vitft.data.doctor import DataReport, check_dataset
from vitft.data.sources import scan_data, source_of


def check_data(cfg: Any) -> int:
    """check_data.py: print the report, write it as JSON, return the exit code."""
    data = cfg.data
    location = cfg.get("data_dir") or data.data_dir
    classes = None if cfg.get("data_dir") else data.classes
    split_args = dict(val_fraction=data.val_fraction, test_fraction=data.test_fraction)
    if source_of(data) == "manifest":
        report = check_manifest(
            location,
            list(classes) if classes else None,
            cfg.get("task", {}).get("multilabel"),
            data.get("label_sep") or ";",
            decode=bool(cfg.decode),
            split_seed=data.get("split_seed", 0),
            annotators=data.get("annotators") or "majority",
            image_root=data.get("image_root"),
            **split_args,
        )
    elif source_of(data) == "hf":  # the dataset's images, once they are files
        report = DataReport(str(location), decode=bool(cfg.decode))
        try:
            check_files(report, scan_data({**data, "data_dir": location, "classes": classes}))
        except VitftError as err:
            report.errors.append(str(err))
    else:
        report = check_dataset(location, classes, decode=bool(cfg.decode), **split_args)
    policy = data.on_bad_file
    print(report.text(policy))
    if cfg.get("report"):
        out = Path(cfg.report)
        payload = {**report.to_json(), "can_train": report.can_train(policy)}
        payload["reasons"] = report.reasons(policy)
        out.write_text(json.dumps(payload, indent=2))
        print(f"report: {out.resolve()}")
    return 0 if report.can_train(policy) else 1
