"""Evaluation of a multi-label model: label sets at the tuned thresholds, as numbers and pictures.

predictions (per-class sigmoid probabilities) -> torchmetrics Multilabel* metrics (per-class
P/R/F1/AP, micro/macro F1, subset accuracy, Hamming loss) -> per-class PR curves with each
class's operating point, a per-class confusion grid, the worst label-set errors.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import torch
from torchmetrics.functional.classification import multilabel_precision_recall_curve

from vitft.core import plots
from vitft.core.errors import VitftError
from vitft.data.images import load_image
from vitft.data.sources import scan_data
from vitft.deploy.predictor import Predictor
from vitft.models.multilabel import compute_metrics, decide, label_sets
from vitft.run.rundir import own_run, run_samples

FIGURES = {
    "pr_curves": "precision-recall curve per class; dots: the tuned threshold's operating point",
    "confusion_grid": "per-class confusion: true absent/present x predicted, at the thresholds",
    "errors": "images whose predicted label set is wrong, most confident mistakes first",
}


def _joined(names: list[str]) -> str:
    return ";".join(names) or "(none)"


def evaluate_multilabel(
    cfg: Any, predictor: Predictor, out_dir: Path
) -> tuple[dict[str, Any], dict[str, tuple[Path, str]], list[list]]:
    """(metrics, {figure: (png, caption)}, table rows) of ``predictor`` on ``cfg.split``."""
    labels = predictor.labels
    run = own_run(cfg)
    if run is not None:
        root, _, samples = run_samples(run.root, cfg.split, labels=labels)
    else:
        splits = scan_data({**cfg.data, "classes": labels}, multilabel=True)  # the model's order
        root, samples = splits.root, splits.split(cfg.split)
    if not samples:
        raise VitftError(f"{root}: the {cfg.split} split has no images")
    results = predictor.predict_files([p for p, _ in samples], progress=cfg.get("progress"))
    if not results.predictions:
        raise VitftError(f"no readable images in {root} ({cfg.split})")
    true_of = {str(p): y for p, y in samples}
    probs = torch.tensor([[p.probs[c] for c in labels] for p in results.predictions])
    target = torch.tensor([true_of[p.path] for p in results.predictions])
    thresholds = predictor.thresholds.tolist()
    metrics = compute_metrics(probs, target, labels, thresholds)
    metrics.update(
        split=cfg.split,
        data_dir=str(root),
        model=str(cfg.get("model_dir") or cfg.get("ckpt_path")),
        classes=labels,
        multilabel=True,
        bad_files=[{"path": b.path, "reason": b.reason} for b in results.bad_files],
        tta=bool(cfg.get("tta")),
    )
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    true_sets = label_sets(target, labels)
    pred_sets = [p.labels for p in results.predictions]
    with (out_dir / "predictions.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "true", "predicted", *[f"prob_{c}" for c in labels]])
        for p, t in zip(results.predictions, true_sets, strict=True):
            w.writerow([p.path, ";".join(t), p.label, *[f"{p.probs[c]:.8f}" for c in labels]])

    figures: dict[str, tuple[Path, str]] = {}

    def add(name: str, fig) -> None:
        figures[name] = (plots.save(fig, out_dir / f"{name}.png"), FIGURES[name])

    precision, recall, _ = multilabel_precision_recall_curve(probs, target, len(labels))
    curves = {c: (recall[i].numpy(), precision[i].numpy()) for i, c in enumerate(labels)}
    pc = metrics["per_class"]
    points = {
        c: (pc[c]["recall"], pc[c]["precision"], f"t={pc[c]['threshold']:.2f}") for c in labels
    }
    ap = {c: pc[c]["average_precision"] for c in labels}
    add("pr_curves", plots.curves(curves, ap, "pr", points))
    add("confusion_grid", plots.confusion_grid(metrics["confusion"]))
    # Wrong sets, ranked by the largest distance of a wrong class's score from its threshold.
    present = decide(probs, thresholds)
    margin = ((probs - torch.tensor(thresholds)).abs() * (present != target)).max(-1).values
    wrong = (present != target).any(-1).nonzero().flatten()
    worst = wrong[margin[wrong].argsort(descending=True)][: int(cfg.errors_max)].tolist()
    add(
        "errors",
        plots.image_grid(
            [load_image(results.predictions[i].path) for i in worst],
            [
                f"{Path(results.predictions[i].path).name}\ntrue {_joined(true_sets[i])}\n"
                f"pred {_joined(pred_sets[i])}"
                for i in worst
            ],
            suptitle=f"{len(wrong)} of {len(target)} label sets wrong; "
            f"the most confident {len(worst)}",
        ),
    )
    rows = [
        [p.path, _joined(t), _joined(p.labels), round(p.confidence, 4)]
        for p, t in zip(results.predictions, true_sets, strict=True)
    ]
    return metrics, figures, rows


def summary_line(metrics: dict[str, Any]) -> str:
    keys = ("subset_accuracy", "f1_micro", "f1_macro", "map", "hamming_loss")
    return ", ".join(f"{k} {metrics[k]:.3f}" for k in keys if metrics[k] is not None)
