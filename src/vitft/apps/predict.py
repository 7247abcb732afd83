"""predict(cfg): predict image files and write a CSV (or JSON) of labels and probabilities."""

from __future__ import annotations

import csv
import importlib
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from vitft.core.errors import VitftError
from vitft.deploy.predictor import UNCERTAIN, UNKNOWN, Predictor, Results


def write_predictions(results: Results, output: str | Path, labels: list[str]) -> Path:
    """CSV (one row per image, ``prob_<class>`` columns) or JSON (by the file's suffix)."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix.lower() == ".json":
        doc = {
            "labels": labels,
            "predictions": [asdict(p) for p in results.predictions],
            "bad_files": [asdict(b) for b in results.bad_files],
        }
        output.write_text(json.dumps(doc, indent=2))
        return output
    ood = any(p.ood_score is not None for p in results.predictions)
    verdict = any(p.defective is not None for p in results.predictions)  # an operating point
    with output.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "path",
                "label",
                "predicted",
                "confidence",
                *[f"prob_{c}" for c in labels],
                "latency_ms",
                *(["ood_score", "unknown"] if ood else []),
                *(["p_defective", "defective"] if verdict else []),
            ]
        )
        for p in results.predictions:
            writer.writerow(
                [p.path, p.label, p.predicted, f"{p.confidence:.6f}"]
                + [f"{p.probs[c]:.6f}" for c in labels]
                + [f"{p.latency_ms:.3f}"]
                + ([f"{p.ood_score:.6g}", int(bool(p.unknown))] if ood else [])
                + ([f"{p.p_defective:.6f}", int(bool(p.defective))] if verdict else [])
            )
    return output


def _no_progress_bars() -> None:
    """No weight-loading progress bars, without importing transformers (an ONNX export runs
    without it) or the hub: they read HF_HUB_DISABLE_PROGRESS_BARS when they are imported."""
    if "transformers" in sys.modules:
        importlib.import_module("transformers").utils.logging.disable_progress_bar()
    elif "huggingface_hub" in sys.modules:
        importlib.import_module("huggingface_hub.utils").disable_progress_bars()
    else:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"


def predict(cfg: Any) -> Results:
    """predict.py: predict ``cfg.inputs`` and write ``cfg.output`` (CSV, or JSON by suffix)."""
    if cfg.get("format") not in (None, "csv", "json"):
        raise VitftError(f"format={cfg.format!r} is unknown; use csv or json")
    if not cfg.get("inputs"):
        raise VitftError("set inputs=<image | folder | glob> (a list works too)")
    _no_progress_bars()
    thresholds = cfg.get("class_thresholds") or {}
    predictor = Predictor.from_path(
        cfg.get("model_dir"),
        cfg.get("ckpt_path"),
        device=cfg.get("device"),
        ood=bool(cfg.get("ood", True)),
        threshold=float(cfg.get("threshold") or 0.0),
        class_thresholds={str(k): float(v) for k, v in dict(thresholds).items()},
        tta=bool(cfg.get("tta")),
        batch_size=int(cfg.get("batch_size", 32)),
        num_workers=int(cfg.get("num_workers", 0)),
    )
    inputs = cfg.inputs if isinstance(cfg.inputs, str) else list(cfg.inputs)
    results = predictor.predict_files(inputs, progress=cfg.get("progress"))
    output = Path(cfg.output)
    if cfg.get("format"):
        output = output.with_suffix("." + cfg.format)
    write_predictions(results, output, predictor.labels)
    n_unc = sum(p.label == UNCERTAIN for p in results.predictions)
    n_unk = sum(p.label == UNKNOWN for p in results.predictions)
    n_def = sum(bool(p.defective) for p in results.predictions)
    print(
        f"predicted {len(results.predictions)} image(s) -> {output}"
        + (f"; {n_unc} uncertain (below threshold)" if n_unc else "")
        + (f"; {n_unk} unknown (unlike the training images)" if n_unk else "")
        + (f"; {n_def} defective (operating point)" if n_def else "")
    )
    if results.bad_files:
        print(f"skipped {len(results.bad_files)} bad file(s):")
        for b in results.bad_files:
            print(f"  {b.path}: {b.reason}")
    return results
