"""check_data(cfg): screen a dataset (folders or a manifest) before training; write its report.

``labels=true`` also looks for training labels that are probably wrong and for near-duplicates
across splits (``vitft.data.label_issues``), on a frozen backbone's cached features (the
pretrained ``model``, or a trained one: ``label_issues.model_dir``); the out-of-fold
probabilities come from a probe on those features, or (``label_issues.crossfit=finetune``) from K
models fine-tuned on the other folds (``vitft.apps.crossfit``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from vitft.apps.crossfit import finetuned_probs
from vitft.core.errors import VitftError
from vitft.data.check import check_files, check_manifest
from vitft.data.doctor import DataReport, _item, check_dataset, screen
from vitft.data.folder import SPLITS, DatasetSplits
from vitft.data.labelstudio import import_tasks, write_import
from vitft.data.sources import scan_data, source_of
from vitft.modelio.hf import load_model
from vitft.models.classifier import build_model
from vitft.training.cache import FeatureCache

log = logging.getLogger(__name__)

CROSSFIT = ("probe", "finetune")  # label_issues.crossfit: where the out-of-fold probs come from


def check_data(cfg: Any) -> int:
    """vitft check-data: print the report, write it as JSON, return the exit code."""
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
    if cfg.get("labels") and not report.errors:
        check_labels(cfg, {**data, "data_dir": location, "classes": classes}, report)
    print(report.text(policy))
    if cfg.get("report"):
        out = Path(cfg.report)
        payload = {**report.to_json(), "can_train": report.can_train(policy)}
        payload["reasons"] = report.reasons(policy)
        out.write_text(json.dumps(payload, indent=2))
        print(f"report: {out.resolve()}")
    return 0 if report.can_train(policy) else 1


def feature_model(cfg: Any, classes: list[str]) -> tuple[Any, Any]:
    """The backbone whose features labels=true works on: the trained model in
    ``label_issues.model_dir`` if set, else the pretrained ``model``; with its processor."""
    model_dir = cfg.label_issues.get("model_dir")
    if not model_dir:
        return build_model(
            OmegaConf.to_container(cfg.model, resolve=True), {"name": "linear"}, classes
        )
    if not (Path(str(model_dir)) / "config.json").is_file():
        raise VitftError(
            f"label_issues.model_dir={model_dir} is not a model dir (no config.json): pass the "
            "model/ folder of a training run (outputs/<run>/model), or null for `model`"
        )
    log.info("label issues: features of the trained model in %s", model_dir)
    return load_model(model_dir)


def _features(cfg: Any, splits: DatasetSplits) -> dict[str, np.ndarray]:
    """Each split's backbone features (``feature_model``), through the feature cache."""
    opts = cfg.label_issues
    model, processor = feature_model(cfg, splits.classes)
    cache = FeatureCache(model.eval(), processor, opts.cache_dir, views=1, dtype="float32")
    return {
        s: np.asarray(cache.get(splits.split(s)).features[0], np.float32)
        for s in SPLITS
        if splits.split(s)
    }


def check_labels(cfg: Any, data: dict, report: DataReport) -> list:
    """labels=true: the suspect training labels (ranked CSV, gallery, optional Label Studio
    review tasks) and near-duplicates across splits, added to ``report``."""
    try:  # cleanlab and scikit-learn are the optional extra vitft[labels]
        from vitft.data import label_issues as li
    except ModuleNotFoundError as err:
        raise VitftError(
            f"labels=true needs cleanlab ({err}): pip install 'vitft[labels]'"
        ) from err
    opts = cfg.label_issues
    splits = screen(scan_data(data, cfg.get("task", {}).get("multilabel")), "skip")
    if splits.multilabel:
        raise VitftError("labels=true checks single-label data; this dataset is multi-label")
    crossfit = opts.get("crossfit") or "probe"
    if crossfit not in CROSSFIT:
        raise VitftError(f"label_issues.crossfit={crossfit} is unknown: use one of {CROSSFIT}")
    labels = np.array([y for _, y in splits.train])
    paths = [str(p) for p, _ in splits.train]
    if crossfit == "finetune":  # K trainings; the folds checked before the first one
        fold = li.fold_ids(labels, int(opts.folds), int(cfg.seed), len(splits.classes))
        probs = finetuned_probs(cfg, splits, fold)
    feats = _features(cfg, splits)
    if crossfit == "probe":
        probs = li.out_of_fold_probs(feats["train"], labels, int(opts.folds), int(cfg.seed))
    issues = li.find_issues(paths, labels, probs, feats["train"], splits.classes)
    out = Path(str(opts.output))
    table = li.write_csv(out / "label_issues.csv", issues)
    picture = li.gallery(out / "label_issues.png", issues, int(opts.gallery))
    report.warnings.append(
        _item(
            "suspect_labels", table,
            f"{len(issues)} of {len(paths)} training label(s) look wrong (ranked, with the "
            f"suggested label){f'; gallery: {picture}' if picture else ''}", "train",
        )
    )  # fmt: skip
    if opts.get("export") == "label_studio" and issues:
        root = opts.get("image_root") or (
            splits.root if splits.root.is_dir() else splits.root.parent
        )
        _review_tasks(issues, splits.classes, root, out)
    _near_duplicates(li, feats, splits, float(opts.duplicate_ratio), report)
    return issues


def _review_tasks(issues: list, classes: list[str], root: str | Path, out: Path) -> Path:
    """The suspects as Label Studio tasks, pre-annotated with the suggested label."""
    items = [
        {"path": x.path, "labels": [x.suggested], "score": x.p_suggested, "given": x.given}
        for x in issues
    ]
    tasks = import_tasks(items, root, model_version="vitft-label-issues")
    file, config = write_import(out / "label_studio_review.json", tasks, classes)
    log.info("label review: %d task(s) -> %s (labelling config %s)", len(tasks), file, config)
    return file


def _near_duplicates(
    li: Any,
    feats: dict[str, np.ndarray],
    splits: DatasetSplits,
    threshold: float,
    report: DataReport,
) -> None:
    """Images of val/test whose features nearly match a train (or val) image: leaks that a
    byte hash misses (a resized, re-encoded or slightly augmented copy)."""
    for later, earlier in (("val", "train"), ("test", "train"), ("test", "val")):
        if later not in feats or earlier not in feats:
            continue
        for i, j, r in li.near_duplicates(feats[later], feats[earlier], threshold):
            path, other = splits.split(later)[i][0], splits.split(earlier)[j][0]
            what = (
                f"near-duplicate of {earlier} image {other} (feature distance {r:.2f} of the "
                f"usual nearest-neighbour distance in {earlier})"
            )
            report.warnings.append(_item("near_duplicate_across_splits", path, what, later))
