"""``label_issues.crossfit=finetune``: out-of-fold probabilities from K fine-tuned models.

Each of the K folds of the training split is held out once: a model is fine-tuned on the other
K-1 folds through the normal training path (``vitft.apps.train.train`` on the train config of
``label_issues.finetune_recipe`` plus ``label_issues.finetune_overrides``), validated on the
original val split, and its softmax probabilities on the held-out fold's images are kept. Every
training image is so scored by a model that never saw its label: a model fine-tuned on all the
labels learns some of the wrong ones, which then look right. The runs go under
``<label_issues.output>/crossfit/fold_<k>``, their data (links) under ``crossfit/data/fold_<k>``,
and ``crossfit/folds.csv`` says which fold held each image out.
"""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict

from vitft.apps.train import train
from vitft.core.errors import VitftError
from vitft.core.resolvers import conf_dir
from vitft.data.folder import DatasetSplits
from vitft.deploy.predictor import Predictor

log = logging.getLogger(__name__)

# No tracker, no test split or pass, no OOD scorer: only the fold's model is needed.
QUIET = [
    "logger=none",
    "callbacks.lr_monitor=null",
    "++trainer.enable_model_summary=false",
    "data.test_fraction=0",
    "test=false",
    "ood.method=null",
]


def _link(src: Path, dst: Path) -> None:
    try:
        dst.symlink_to(src.resolve())
    except OSError:  # no symlinks here (some Windows setups): copy
        shutil.copy2(src, dst)


def fold_data(splits: DatasetSplits, fold: np.ndarray, k: int, root: Path) -> Path:
    """``root/{train,val}/<class>/``: links to the training images outside fold ``k`` and to the
    val split (the file names get an index: two classes may hold one name)."""
    shutil.rmtree(root, ignore_errors=True)
    kept = [s for s, f in zip(splits.train, fold, strict=True) if f != k]
    for split, samples in (("train", kept), ("val", splits.val)):
        for i, (path, y) in enumerate(samples):
            out = root / split / splits.classes[y]
            out.mkdir(parents=True, exist_ok=True)
            _link(Path(path), out / f"{i:05d}_{Path(path).name}")
    return root


def _compose_train(overrides: list[str]) -> DictConfig:
    if GlobalHydra.instance().is_initialized():  # inside `vitft check-data` (Hydra's main)
        return compose("train", overrides=overrides)
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose("train", overrides=overrides)


def train_config(cfg: Any, data_dir: Path, classes: list[str], out: Path) -> DictConfig:
    """The train config of one fold: the recipe, quiet, on ``data_dir``, writing into ``out``."""
    opts = cfg.label_issues
    recipe = opts.get("finetune_recipe")
    extra = [str(o) for o in OmegaConf.to_container(opts.get("finetune_overrides") or [])]
    overrides = [*([f"experiment={recipe}"] if recipe else []), *QUIET, "task=folder"]
    try:
        run_cfg = _compose_train([*overrides, f"seed={cfg.seed}", *extra])
    except HydraException as err:
        first = str(err).strip().splitlines()[0]
        raise VitftError(
            f"label_issues.finetune_recipe={recipe} / finetune_overrides={extra}: {first}; "
            "name an experiment in conf/experiment/ and train.yaml overrides"
        ) from err
    with open_dict(run_cfg):
        run_cfg.task.data_dir = str(data_dir)
        run_cfg.task.classes = list(classes)
        run_cfg.paths.output_dir = str(out)
    return run_cfg


def held_out_probs(model_dir: Path, paths: list[str], classes: list[str]) -> np.ndarray:
    """``(len(paths), classes)`` softmax probabilities of the model in ``model_dir``."""
    predictor = Predictor.from_path(model_dir, ood=False)
    return np.array([[p.probs[c] for c in classes] for p in predictor.predict(paths)])


def finetuned_probs(cfg: Any, splits: DatasetSplits, fold: np.ndarray) -> np.ndarray:
    """``(N, classes)`` out-of-fold probabilities of the training images, row ``i`` from the
    model fine-tuned without fold ``fold[i]`` (K trainings)."""
    root = Path(str(cfg.label_issues.output)) / "crossfit"
    paths = [str(p) for p, _ in splits.train]
    probs = np.zeros((len(paths), len(splits.classes)))
    folds = int(fold.max()) + 1
    write_folds(root / "folds.csv", paths, fold)
    for k in range(folds):
        held = np.flatnonzero(fold == k)
        run = root / f"fold_{k}"
        log.info(
            "label issues: fold %d/%d: fine-tuning on %d image(s), scoring the %d held out -> %s",
            k + 1, folds, len(paths) - len(held), len(held), run,
        )  # fmt: skip
        data = fold_data(splits, fold, k, root / "data" / f"fold_{k}")
        train(train_config(cfg, data, splits.classes, run))
        probs[held] = held_out_probs(run / "model", [paths[i] for i in held], splits.classes)
    return probs


def write_folds(out: Path, paths: list[str], fold: np.ndarray) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "fold"])
        w.writerows([p, int(k)] for p, k in zip(paths, fold, strict=True))
    return out
