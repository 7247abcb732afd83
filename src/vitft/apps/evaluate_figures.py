"""eval's figures of one single-label split: confusion matrix, PR/ROC curves, reliability, the
most confident errors and heatmaps, each a PNG with its caption for report.html."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchmetrics.functional.classification import multiclass_precision_recall_curve, multiclass_roc

from vitft.core import plots
from vitft.data.images import load_image
from vitft.deploy.explain import Explainer, methods_for, usable_methods
from vitft.deploy.predictor import Predictor, Results

FIGURES = {
    "confusion_matrix": "confusion matrix: counts and row-normalised",
    "pr_curves": "precision-recall curves per class",
    "roc_curves": "ROC curves per class",
    "reliability": "reliability diagram (calibration)",
    "errors": "worst misclassified images",
    "heatmaps": "where the model looked (attention rollout, Grad-CAM)",
}  # and escape_curve, captioned with its operating point (evaluate_inspection)


def _curves(probs: torch.Tensor, target: torch.Tensor, classes: list[str], kind: str) -> dict:
    n = len(classes)
    if kind == "roc":
        xs, ys, _ = multiclass_roc(probs, target, n)
    else:
        ys, xs, _ = multiclass_precision_recall_curve(probs, target, n)
    return {c: (xs[i].numpy(), ys[i].numpy()) for i, c in enumerate(classes)}


def _heatmap_samples(true: torch.Tensor, pred: torch.Tensor, per_class: int) -> list[int]:
    """Per true class: its first correct and first misclassified images, up to ``per_class``."""
    picks: list[int] = []
    for c in torch.unique(true).tolist():
        idx = (true == c).nonzero().flatten().tolist()
        right = [i for i in idx if pred[i] == c]
        wrong = [i for i in idx if pred[i] != c]
        chosen = (right[:1] + wrong[:1] + right[1:] + wrong[1:])[:per_class]
        picks += sorted(chosen)
    return picks


def _heatmaps(predictor: Predictor, paths, titles, preds, cfg) -> tuple[Any | None, str]:
    """(figure or None, what the report says about heatmaps)."""
    model = predictor.backend.torch_model
    if model is None:
        return None, f"none: a {predictor.backend.description} export has no PyTorch model"
    if not methods_for(model):
        return None, "none: explain supports ViT, MobileViT and ConvNeXt backbones"
    labels = predictor.labels
    explainer = Explainer(model.cpu(), float(cfg.discard_ratio), str(cfg.head_fusion))
    images = [load_image(p) for p in paths]
    pixels = torch.stack([predictor.transform(img) for img in images])
    methods = usable_methods(explainer, cfg.methods)
    maps = explainer.explain(pixels, methods, torch.as_tensor(preds))
    fig = plots.heatmap_figure(images, maps, titles, [labels[i] for i in preds.tolist()])
    return fig, "heatmaps.png"


def split_figures(
    cfg, predictor: Predictor, results: Results, probs, target, metrics: dict, out_dir: Path
) -> dict[str, tuple[Path, str]]:
    """The PNGs of one split: {name: (path, caption)}; sets ``metrics["heatmaps"]``."""
    labels = predictor.labels
    figures: dict[str, tuple[Path, str]] = {}

    def add(name: str, fig) -> None:
        figures[name] = (plots.save(fig, out_dir / f"{name}.png"), FIGURES[name])

    add("confusion_matrix", plots.confusion_matrix(np.array(metrics["confusion_matrix"]), labels))
    pc = metrics["per_class"]
    for kind in ("pr", "roc"):
        area = {c: pc[c]["average_precision" if kind == "pr" else "auroc"] for c in labels}
        add(f"{kind}_curves", plots.curves(_curves(probs, target, labels, kind), area, kind))
    conf, pred = probs.max(-1)
    add(
        "reliability",
        plots.reliability(
            conf.numpy(), (pred == target).numpy(), int(cfg.ece_bins), metrics["ece"]
        ),
    )
    titles = [
        f"{Path(p.path).name}\ntrue {labels[t]} / pred {labels[k]} {c:.2f}"
        for p, t, k, c in zip(results.predictions, target, pred, conf, strict=True)
    ]
    wrong = (pred != target).nonzero().flatten()
    worst = wrong[conf[wrong].argsort(descending=True)][: int(cfg.errors_max)].tolist()
    images = [load_image(results.predictions[i].path) for i in worst]
    add(
        "errors",
        plots.image_grid(
            images,
            [titles[i] for i in worst],
            suptitle=f"{len(wrong)} of {len(target)} misclassified; the most confident "
            f"{len(worst)}",
        ),
    )
    metrics["heatmaps"] = "none: explain.per_class=0"
    if cfg.explain.get("per_class", 0) > 0:
        picks = _heatmap_samples(target, pred, int(cfg.explain.per_class))
        paths = [results.predictions[i].path for i in picks]
        fig, metrics["heatmaps"] = _heatmaps(
            predictor, paths, [titles[i] for i in picks], pred[picks], cfg.explain
        )
        if fig is not None:
            add("heatmaps", fig)
    return figures
