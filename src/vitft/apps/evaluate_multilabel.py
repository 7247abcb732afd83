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


def _split_samples(cfg: Any, labels: list[str]) -> tuple[Path, list]:
    """The data root and the ``cfg.split`` (path, label vector) samples: the run's own split
    when the model has a run, else a scan of ``cfg.data`` in the model's class order."""
    run = own_run(cfg)
    if run is not None:
        root, _, samples = run_samples(run.root, cfg.split, labels=labels)
    else:
        splits = scan_data({**cfg.data, "classes": labels}, multilabel=True)  # the model's order
        root, samples = splits.root, splits.split(cfg.split)
    if not samples:
        raise VitftError(f"{root}: the {cfg.split} split has no images")
    return root, samples


def _write_predictions(path: Path, predictions, true_sets, labels: list[str]) -> None:
    """predictions.csv: each image's true and predicted labels and every class's probability."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "true", "predicted", *[f"prob_{c}" for c in labels]])
        for p, t in zip(predictions, true_sets, strict=True):
            w.writerow([p.path, ";".join(t), p.label, *[f"{p.probs[c]:.8f}" for c in labels]])


def _pr_curves(probs: torch.Tensor, target: torch.Tensor, labels: list[str], pc: dict):
    """The figure of each class's PR curve, with its tuned threshold's operating point."""
    precision, recall, _ = multilabel_precision_recall_curve(probs, target, len(labels))
    curves = {c: (recall[i].numpy(), precision[i].numpy()) for i, c in enumerate(labels)}
    points = {
        c: (pc[c]["recall"], pc[c]["precision"], f"t={pc[c]['threshold']:.2f}") for c in labels
    }
    ap = {c: pc[c]["average_precision"] for c in labels}
    return plots.curves(curves, ap, "pr", points)


def _errors(cfg: Any, probs, target, thresholds: list[float], predictions, true_sets):
    """The figure of the wrong label sets, most confident first (at most ``cfg.errors_max``)."""
    pred_sets = [p.labels for p in predictions]
    # Wrong sets, ranked by the largest distance of a wrong class's score from its threshold.
    present = decide(probs, thresholds)
    margin = ((probs - torch.tensor(thresholds)).abs() * (present != target)).max(-1).values
    wrong = (present != target).any(-1).nonzero().flatten()
    worst = wrong[margin[wrong].argsort(descending=True)][: int(cfg.errors_max)].tolist()
    return plots.image_grid(
        [load_image(predictions[i].path) for i in worst],
        [
            f"{Path(predictions[i].path).name}\ntrue {_joined(true_sets[i])}\n"
            f"pred {_joined(pred_sets[i])}"
            for i in worst
        ],
        suptitle=f"{len(wrong)} of {len(target)} label sets wrong; the most confident {len(worst)}",
    )


def evaluate_multilabel(
    cfg: Any, predictor: Predictor, out_dir: Path
) -> tuple[dict[str, Any], dict[str, tuple[Path, str]], list[list]]:
    """(metrics, {figure: (png, caption)}, table rows) of ``predictor`` on ``cfg.split``."""
    labels = predictor.labels
    root, samples = _split_samples(cfg, labels)
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
    _write_predictions(out_dir / "predictions.csv", results.predictions, true_sets, labels)

    figures: dict[str, tuple[Path, str]] = {}

    def add(name: str, fig) -> None:
        figures[name] = (plots.save(fig, out_dir / f"{name}.png"), FIGURES[name])

    add("pr_curves", _pr_curves(probs, target, labels, metrics["per_class"]))
    add("confusion_grid", plots.confusion_grid(metrics["confusion"]))
    add("errors", _errors(cfg, probs, target, thresholds, results.predictions, true_sets))
    rows = [
        [p.path, _joined(t), _joined(p.labels), round(p.confidence, 4)]
        for p, t in zip(results.predictions, true_sets, strict=True)
    ]
    return metrics, figures, rows


def summary_line(metrics: dict[str, Any]) -> str:
    keys = ("subset_accuracy", "f1_micro", "f1_macro", "map", "hamming_loss")
    return ", ".join(f"{k} {metrics[k]:.3f}" for k in keys if metrics[k] is not None)
