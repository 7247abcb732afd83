"""evaluate(cfg): a trained model on one split of a folder dataset, as numbers and pictures.

model (dir or checkpoint) + data split -> Predictor -> probabilities -> metrics (+ with ok
classes the escape / false-reject view, ``evaluate_inspection``) -> metrics.json, predictions.csv,
figures (confusion, PR/ROC, reliability, worst errors, heatmaps, escape curve) -> report.html
(+ W&B with logger=wandb). Metrics come from torchmetrics on the same probabilities the CSV holds.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from omegaconf import OmegaConf
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_auroc,
    multiclass_average_precision,
    multiclass_calibration_error,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from vitft.apps.evaluate_figures import split_figures
from vitft.apps.evaluate_inspection import inspection
from vitft.apps.evaluate_multilabel import evaluate_multilabel, summary_line
from vitft.apps.evaluate_ood import ood_metrics
from vitft.core import html, plots
from vitft.core.errors import VitftError
from vitft.core.hardware import loader_options
from vitft.data.folder import class_folders, list_images
from vitft.data.sources import scan_data, source_of
from vitft.deploy.backends import ExportedBackend
from vitft.deploy.predictor import Predictor, Results
from vitft.run.rundir import own_run, run_samples
from vitft.training import tracking

log = logging.getLogger(__name__)


def compute_metrics(
    probs: torch.Tensor, target: torch.Tensor, classes: list[str], n_bins: int = 15
) -> dict[str, Any]:
    """Accuracy, F1, per-class P/R/F1/support/AUROC/AP, top-k, ECE and the confusion matrix."""
    n = len(classes)
    per_class = {
        "precision": multiclass_precision(probs, target, n, average=None),
        "recall": multiclass_recall(probs, target, n, average=None),
        "f1": multiclass_f1_score(probs, target, n, average=None),
        "support": torch.bincount(target, minlength=n),
        "auroc": multiclass_auroc(probs, target, n, average=None),
        "average_precision": multiclass_average_precision(probs, target, n, average=None),
    }
    # AUROC/AP need positives and negatives, recall needs positives: else undefined (null), not 0
    support = per_class["support"]
    ranked = (support > 0) & (support < len(target))
    undefined = {"auroc": ranked, "average_precision": ranked, "recall": support > 0}
    metrics: dict[str, Any] = {
        "images": len(target),
        "accuracy": float(multiclass_accuracy(probs, target, n, average="micro")),
        "f1_macro": float(multiclass_f1_score(probs, target, n, average="macro")),
        "f1_weighted": float(multiclass_f1_score(probs, target, n, average="weighted")),
        "auroc_macro": float(per_class["auroc"][ranked].mean()) if ranked.any() else None,
        "ece": float(multiclass_calibration_error(probs, target, n, n_bins=n_bins, norm="l1")),
        "ece_bins": n_bins,
    }
    for k in range(2, n):
        metrics[f"top{k}_accuracy"] = float(
            multiclass_accuracy(probs, target, n, top_k=k, average="micro")
        )
    metrics["per_class"] = {
        cls: {
            name: int(v[i])
            if name == "support"
            else (float(v[i]) if name not in undefined or undefined[name][i] else None)
            for name, v in per_class.items()
        }
        for i, cls in enumerate(classes)
    }
    metrics["confusion_matrix"] = multiclass_confusion_matrix(probs, target, n).tolist()
    return metrics


def _class_map(data_classes: list[str], model_labels: list[str]) -> list[int]:
    """Data class index -> model class index, by name (a new folder may order them differently)."""
    missing = [c for c in data_classes if c not in model_labels]
    if missing:
        raise VitftError(
            f"the data has classes {missing} that the model does not know (model classes: "
            f"{model_labels}); evaluate on folders named after the model's classes"
        )
    return [model_labels.index(c) for c in data_classes]


def _samples(cfg: Any, split: str) -> tuple[Path, list[str], list[tuple[Path, int]]]:
    """(root, classes, samples) to evaluate on.

    - The model's run split (``<run>/split_manifest.csv``) when ``cfg.data`` is the run's own
      dataset or was not set: the very files training held out (``own_run``).
    - A folder without train/ (e.g. images from a new production line): its class folders.
    - Any other train/val/test dataset: its ``split``, split as configured.
    """
    data = cfg.data
    root = Path(data.data_dir).expanduser()
    run = own_run(cfg)
    if run is not None:
        return run_samples(run.root, split)
    if source_of(data) == "folder" and root.is_dir() and not (root / "train").is_dir():
        classes = class_folders(root)
        if not classes:
            raise VitftError(f"{root} has neither train/ nor class folders to evaluate on")
        if split != cfg.split:  # the val images max_escape chooses on, never the evaluated ones
            raise VitftError(
                f"{root} is one set of class folders, with no {split} split apart from the "
                f"evaluated images: evaluate the run's own split, or a dataset with {split}/"
            )
        samples = [(p, i) for i, c in enumerate(classes) for p in list_images(root / c)[0]]
        return root, classes, samples
    splits = scan_data(data, multilabel=False)
    return splits.root, splits.classes, splits.split(split)


def write_predictions_csv(path: Path, results: Results, true: list[str], labels: list[str]) -> Path:
    ood = any(p.ood_score is not None for p in results.predictions)
    verdict = any(p.p_defective is not None for p in results.predictions)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["path", "true", "predicted", "confidence", *[f"prob_{c}" for c in labels]]
            + (["ood_score", "unknown"] if ood else [])
            + (["p_defective", "defective"] if verdict else [])
        )
        for p, t in zip(results.predictions, true, strict=True):
            w.writerow(
                [p.path, t, p.predicted, f"{p.confidence:.8f}"]
                + [f"{p.probs[c]:.8f}" for c in labels]
                + ([f"{p.ood_score:.6g}", int(bool(p.unknown))] if ood else [])
                + ([f"{p.p_defective:.8f}", int(bool(p.defective))] if verdict else [])
            )
    return path


def _fp32_reference(predictor: Predictor, results: Results, target: torch.Tensor, cfg) -> dict:
    """For an int8 export: the fp32 model it came from, on the same images (what int8 cost)."""
    backend = predictor.backend
    if backend.precision != "int8" or not isinstance(backend, ExportedBackend):
        return {}
    if backend.source_model is None:
        missing = backend.metadata.get("source_model")
        return {"fp32_reference": f"unavailable: source model {missing} not found"}
    fp32 = Predictor.from_path(
        backend.source_model, batch_size=predictor.batch_size, tta=predictor.tta
    )
    ref = fp32.predict_files([p.path for p in results.predictions], progress=cfg.get("progress"))
    top = torch.tensor([predictor.labels.index(p.predicted) for p in results.predictions])
    ref_top = torch.tensor([fp32.labels.index(p.predicted) for p in ref.predictions])
    acc, ref_acc = float((top == target).float().mean()), float((ref_top == target).float().mean())
    return {
        "fp32_reference": {
            "model": str(backend.source_model),
            "accuracy": ref_acc,
            "accuracy_change": acc - ref_acc,
            "agreement": float((top == ref_top).float().mean()),
        }
    }


def _log_wandb(cfg, out_dir: Path, metrics: dict, figures: dict, rows: list[list]) -> None:
    wandb_cfg = {
        k: v
        for k, v in (cfg.get("logger") or {}).items()
        if v and "Wandb" in str(v.get("_target_", ""))
    }
    if not wandb_cfg:
        return
    loggers = tracking.build_loggers(
        wandb_cfg, out_dir, tracking.run_id(out_dir, None), _resolved(cfg)
    )
    wandb_loggers = [lg for lg in loggers if type(lg).__name__ == "WandbLogger"]
    import wandb

    run = wandb_loggers[0].experiment
    scalars = {f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
    for cls, vals in metrics["per_class"].items():
        scalars.update({f"eval/{k}_{cls}": v for k, v in vals.items()})
    columns = ["image", "path", "true", "predicted", "confidence"]
    table = wandb.Table(columns=columns, data=[[wandb.Image(str(r[0])), *r] for r in rows])
    run.log(
        {
            **scalars,
            **{f"eval/{name}": wandb.Image(str(path)) for name, path in figures.items()},
            "eval/predictions": table,
        }
    )
    run.summary.update(scalars)


def _resolved(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)


@dataclass
class Scored:
    """One split, predicted: its results, their probabilities and true classes (model indices)."""

    root: Path
    results: Results
    probs: torch.Tensor
    target: torch.Tensor


def predict_split(cfg: Any, predictor: Predictor, split: str) -> Scored:
    """Predict ``split`` of the data (see ``_samples``) with ``predictor``."""
    root, data_classes, samples = _samples(cfg, split)
    to_model = _class_map(data_classes, predictor.labels)
    log.info("evaluating on %s (%s): %d images", root, split, len(samples))
    results = predictor.predict_files([p for p, _ in samples], progress=cfg.get("progress"))
    if not results.predictions:
        raise VitftError(f"no readable images in {root} ({split})")
    true_of = {str(p): to_model[y] for p, y in samples}
    probs = torch.tensor([[p.probs[c] for c in predictor.labels] for p in results.predictions])
    target = torch.tensor([true_of[p.path] for p in results.predictions])
    return Scored(root, results, probs, target)


def evaluate(cfg: Any) -> dict[str, Any]:
    """Evaluate ``cfg.model_dir`` or ``cfg.ckpt_path`` on ``cfg.split`` of ``cfg.data``."""
    transformers.utils.logging.disable_progress_bar()
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = cfg.data
    predictor = Predictor.from_path(
        cfg.get("model_dir"),
        cfg.get("ckpt_path"),
        device=cfg.get("device"),
        tta=bool(cfg.get("tta")),
        batch_size=int(data.eval_batch_size),
        num_workers=loader_options(data.num_workers, False)["num_workers"],
    )
    if predictor.multilabel:
        metrics, figures, rows = evaluate_multilabel(cfg, predictor, out_dir)
        return _publish(cfg, out_dir, metrics, figures, rows, summary_line(metrics))
    scored = predict_split(cfg, predictor, cfg.split)
    metrics = _split_metrics(cfg, predictor, scored)
    view = inspection(
        cfg, predictor, scored.results, scored.probs, scored.target, _val(cfg, predictor, scored)
    )
    metrics.update(view.metrics if view else {})
    ood = ood_metrics(predictor, scored.results, cfg.get("ood_dir"), cfg)
    if ood:
        metrics["ood"] = ood
    labels = predictor.labels
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    true_names = [labels[t] for t in scored.target.tolist()]
    write_predictions_csv(out_dir / "predictions.csv", scored.results, true_names, labels)
    figures = split_figures(
        cfg, predictor, scored.results, scored.probs, scored.target, metrics, out_dir
    )
    if view:  # right after the confusion matrix and the PR/ROC curves in the report
        curve = (plots.save(view.figure(), out_dir / "escape_curve.png"), view.caption())
        figures = {"escape_curve": curve, **figures}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))  # + heatmaps status
    rows = [
        [p.path, t, p.predicted, round(p.confidence, 4)]
        for p, t in zip(scored.results.predictions, true_names, strict=True)
    ]
    return _publish(cfg, out_dir, metrics, figures, rows, _summary(metrics))


def _val(cfg: Any, predictor: Predictor, scored: Scored):
    """() -> (probabilities, targets) of the val split: the evaluated one when it is val."""

    def val() -> tuple[torch.Tensor, torch.Tensor]:
        held_out = scored if cfg.split == "val" else predict_split(cfg, predictor, "val")
        return held_out.probs, held_out.target

    return val


def _split_metrics(cfg: Any, predictor: Predictor, scored: Scored) -> dict[str, Any]:
    """compute_metrics, plus what was evaluated and how (and int8's fp32 reference)."""
    metrics = compute_metrics(scored.probs, scored.target, predictor.labels, int(cfg.ece_bins))
    backend = predictor.backend
    metrics.update(
        {
            "split": cfg.split,
            "data_dir": str(scored.root),
            "model": str(cfg.get("model_dir") or cfg.get("ckpt_path")),
            "classes": predictor.labels,
            "bad_files": [{"path": b.path, "reason": b.reason} for b in scored.results.bad_files],
            "tta": bool(cfg.get("tta")),
            "backend": {
                "format": backend.name,
                "precision": backend.precision,
                "providers": list(backend.providers),  # what really ran it (e.g. CUDA)
            },
            **_fp32_reference(predictor, scored.results, scored.target, cfg),
        }
    )
    return metrics


def _summary(metrics: dict) -> str:
    """The console line: headline metrics, then the escape and OOD figures when there are any."""
    summary = ", ".join(
        f"{k} {metrics[k]:.3f}"
        for k in ("accuracy", "f1_macro", "auroc_macro", "ece", "escape_rate", "false_reject_rate")
        if metrics.get(k) is not None
    )
    ood = metrics.get("ood") or {}
    if "auroc" in ood:
        summary += f", ood auroc {ood['auroc']:.3f} (false-accept {ood['false_accept']:.3f})"
    return summary


def _publish(cfg, out_dir: Path, metrics: dict, figures: dict, rows: list, summary: str) -> dict:
    """report.html, W&B (logger=wandb) and the console line; ``figures``: {name: (png, caption)}."""
    html.write_report(out_dir / "report.html", metrics, figures)
    _log_wandb(cfg, out_dir, metrics, {name: path for name, (path, _) in figures.items()}, rows)
    print(f"{cfg.split}: {metrics['images']} images: {summary}")
    print(f"report: {out_dir / 'report.html'}")
    return metrics
