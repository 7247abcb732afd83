"""check_data(cfg): screen a dataset before training and write its report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vitft.data.doctor import check_dataset


def check_data(cfg: Any) -> int:
    """check_data.py: print the report, write it as JSON, return the exit code."""
    data_dir = cfg.get("data_dir") or cfg.data.data_dir
    report = check_dataset(
        data_dir,
        None if cfg.get("data_dir") else cfg.data.classes,
        decode=bool(cfg.decode),
        val_fraction=cfg.data.val_fraction,
        test_fraction=cfg.data.test_fraction,
    )
    policy = cfg.data.on_bad_file
    print(report.text(policy))
    if cfg.get("report"):
        out = Path(cfg.report)
        payload = {**report.to_json(), "can_train": report.can_train(policy)}
        payload["reasons"] = report.reasons(policy)
        out.write_text(json.dumps(payload, indent=2))
        print(f"report: {out.resolve()}")
    return 0 if report.can_train(policy) else 1
