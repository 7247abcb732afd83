"""add_class(cfg): teach a trained model one more class from a few images (few-shot).

model dir + a folder of the new class's images -> backbone features of the run's training images
and the new ones -> the head grows one output, imprinted and fitted on those features
(``vitft.models.extend``; the backbone is untouched) -> a new model dir, with the OOD scorer
refitted when the model had one. Old classes are checked on the run's val images before/after.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from vitft.core.errors import VitftError
from vitft.deploy.ood import feature_predictor
from vitft.modelio.hf import load_model, model_info, save_hf
from vitft.modelio.ood import has_ood, load_ood, save_ood
from vitft.models.extend import extend_head, fit_head, protect_old_classes
from vitft.models.multilabel import is_multilabel
from vitft.models.ood import OODScorer
from vitft.run.rundir import Run, run_samples

log = logging.getLogger(__name__)


def _run_features(predictor, model_dir: str, split: str, labels: list[str], views=None):
    """Features (with OOD ``views``: the OOD scorer's) and model-label indices of the run's
    ``split`` images."""
    run = Run.of(model_dir)
    if run is None or not run.split_file.is_file():
        raise VitftError(
            f"add_class needs the run's training images: {model_dir} is not inside a run dir "
            "with split_manifest.csv (pass the model/ folder of a train.py run)"
        )
    _, classes, samples = run_samples(run.root, split)
    to_model = [labels.index(c) for c in classes]
    feats, names, _ = predictor.features_files([p for p, _ in samples], progress=False, views=views)
    label_of = {str(p): to_model[y] for p, y in samples}
    return feats, torch.tensor([label_of[n] for n in names], dtype=torch.long)


def _accuracy(head, feats: torch.Tensor, labels: torch.Tensor) -> float | None:
    if not len(labels):
        return None
    with torch.no_grad():
        return float((head(feats).argmax(1) == labels).float().mean())


def _refit_ood(predictor, cfg: Any, labels: list[str], images: Path, new_label: int, out: Path):
    """The OOD scorer again, its training set now with the new class's images."""
    old = load_ood(cfg.model_dir)
    feats, ys = _run_features(predictor, cfg.model_dir, "train", labels, old.views)
    new, _, _ = predictor.features_files(images, progress=False, views=old.views)
    val, _ = _run_features(predictor, cfg.model_dir, "val", labels, old.views)
    new_y = torch.full((len(new),), new_label, dtype=torch.long)
    scorer = OODScorer.fit(
        old.method, torch.cat([feats, new]), torch.cat([ys, new_y]), k=old.k, views=old.views
    )
    save_ood(scorer.calibrate(val, float(old.acceptance or 0.95)), out)


def _request(cfg: Any) -> tuple[str, Path]:
    """The new class's name and image folder from ``cfg``, checked before any model loads."""
    name = cfg.get("class")
    if not cfg.get("model_dir") or not name or not cfg.get("images"):
        raise VitftError("set model_dir=<run>/model class=<new class name> images=<folder>")
    name = str(name)
    images = Path(str(cfg.images)).expanduser()
    if not images.is_dir():
        raise VitftError(f"images={cfg.images} is not a folder (the new class's images)")
    return name, images


def _check_extendable(model, name: str, labels: list[str]) -> None:
    """Refuse a class the model already has, and a multi-label model."""
    if name in labels:
        raise VitftError(f"class={name!r} is already one of the model's classes {labels}")
    if is_multilabel(model.config):
        raise VitftError("add_class extends single-label models; this model is multi-label")


def _new_class_features(predictor, cfg: Any, images: Path, name: str) -> torch.Tensor:
    """Features of the new class's readable images; unreadable ones are logged and skipped."""
    new, _, bad = predictor.features_files(images, progress=False)
    for b in bad:
        log.warning("skipped %s: %s", b.path, b.reason)
    if not len(new):
        raise VitftError(f"images={cfg.images} has no readable images")
    if len(new) < 5:
        log.warning("add_class: %d image(s) of %s; 5 or more give a steadier class", len(new), name)
    return new


def _grown_head(head, cfg: Any, new, new_y, train, val):
    """The head with one more output, imprinted from and fitted on the features, then offset
    so the old classes keep their images; returns the head and the new class's bias offset."""
    old, old_y = train
    val, val_y = val
    head = extend_head(head, new)
    head = fit_head(
        head, torch.cat([old, new]), torch.cat([old_y, new_y]), int(cfg.steps), float(cfg.lr),
        int(cfg.seed),
    )  # fmt: skip
    # Every old image the run has (train and val) guards the old classes: val alone is a few
    # dozen images, too few to tell where the old classes' margins end.
    offset = protect_old_classes(
        head, torch.cat([old, val]), torch.cat([old_y, val_y]), float(cfg.max_old_taken)
    )
    return head, offset


def _set_labels(model, labels: list[str]) -> None:
    """Name the model's outputs ``labels``, in order, in its HF config."""
    id2label = {i: c for i, c in enumerate(labels)}
    model.backbone.config.id2label = id2label
    model.backbone.config.label2id = {c: i for i, c in id2label.items()}


def add_class(cfg: Any) -> dict:
    """vitft add-class: model_dir + images of class ``cfg['class']`` -> a new model dir (output)."""
    name, images = _request(cfg)
    model, processor = load_model(cfg.model_dir)
    labels = list(model.labels)
    _check_extendable(model, name, labels)
    predictor = feature_predictor(model, processor)
    new = _new_class_features(predictor, cfg, images, name)
    old, old_y = _run_features(predictor, cfg.model_dir, "train", labels)
    val, val_y = _run_features(predictor, cfg.model_dir, "val", labels)
    before = _accuracy(model.head.eval(), val, val_y)

    new_y = torch.full((len(new),), len(labels), dtype=torch.long)
    head, offset = _grown_head(model.head, cfg, new, new_y, (old, old_y), (val, val_y))
    model.head = head
    _set_labels(model, [*labels, name])
    report = {
        "class": name,
        "images": len(new),
        "from_model": str(cfg.model_dir),
        "old_val_acc_before": before,
        "old_val_acc_after": _accuracy(head, val, val_y),
        "new_class_train_recall": _accuracy(head, new, new_y),  # on its own images: optimistic
        "new_class_bias_offset": offset,
    }
    out = Path(str(cfg.output))
    meta = {k: v for k, v in model_info(cfg.model_dir).items() if k not in ("head", "labels")}
    save_hf(model, processor, out, meta={**meta, "metrics": {}, "added_class": report})
    if has_ood(cfg.model_dir):
        _refit_ood(predictor, cfg, labels, images, len(labels), out)
    (out / "added_class.json").write_text(json.dumps(report, indent=2))
    print(
        f"{name}: {len(new)} images -> {out}; old classes' val accuracy "
        f"{before:.3f} -> {report['old_val_acc_after']:.3f}"
        if before is not None
        else f"{name}: {len(new)} images -> {out}"
    )
    return report
