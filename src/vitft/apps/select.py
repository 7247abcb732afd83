"""select(cfg): which unlabelled images to label next (active learning).

pool folder -> the model's probabilities and backbone features -> ``strategy`` picks ``budget``
images (``vitft.models.acquisition``) -> a ranked CSV (rank, path, score, reason) and, with
``copy_to``, copies of the picks to hand to whoever labels them; ``export=label_studio`` also
writes the picks as Label Studio tasks pre-annotated with the model's guess.
"""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
import transformers

from vitft.core.errors import VitftError
from vitft.data.labelstudio import import_tasks, write_import
from vitft.deploy.predictor import Predictor
from vitft.models.acquisition import STRATEGIES, acquire
from vitft.run.rundir import Run, run_samples

log = logging.getLogger(__name__)


def _labelled_features(predictor: Predictor, model_dir: str) -> torch.Tensor | None:
    """Features of the run's training images (coreset starts from what is already labelled)."""
    run = Run.of(model_dir)
    if run is None or not run.split_file.is_file():
        log.info("coreset: no run split next to %s; starting from the pool alone", model_dir)
        return None
    try:
        _, _, samples = run_samples(run.root, "train")
    except VitftError as err:
        log.warning("coreset: the run's training images are not usable (%s); pool alone", err)
        return None
    feats, _, _ = predictor.features_files([p for p, _ in samples], progress=False)
    return feats


def _reason(strategy: str, score: float, probs: torch.Tensor, labels: list[str]) -> str:
    top = probs.topk(min(2, len(labels)))
    first = f"{labels[top.indices[0]]} {float(top.values[0]):.2f}"
    if strategy == "margin":
        second = f"{labels[top.indices[1]]} {float(top.values[1]):.2f}" if len(labels) > 1 else ""
        return f"top two close: {first} vs {second}"
    if strategy == "entropy":
        return f"spread probabilities (entropy {score:.3f}; top {first})"
    if strategy == "coreset":
        return f"unlike labelled/picked images (feature distance {score:.3f}; predicted {first})"
    return f"uncertain and diverse (gradient-embedding distance {score:.3f}; predicted {first})"


def write_selection(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["rank", "path", "score", "reason"])
        w.writeheader()
        w.writerows(rows)
    return path


EXPORTS = ("label_studio",)


def export_label_studio(
    cfg: Any, rows: list[dict], probs: torch.Tensor, picks: list[int], labels: list[str]
) -> Path:
    """The picks as import tasks, each pre-annotated with the top class and its probability."""
    top = probs[picks].max(-1)
    items = [
        {"path": r["path"], "labels": [labels[int(c)]], "score": float(p), "rank": r["rank"]}
        for r, p, c in zip(rows, top.values, top.indices, strict=True)
    ]
    root = cfg.get("image_root") or cfg.pool
    tasks = import_tasks(items, root, model_version=Path(str(cfg.model_dir)).resolve().name)
    out, config = write_import(
        Path(str(cfg.output)).parent / "label_studio_tasks.json", tasks, labels
    )
    print(f"label studio: {len(tasks)} task(s) -> {out} (project labelling config: {config})")
    return out


def select(cfg: Any) -> list[dict]:
    """select.py: rank ``cfg.pool`` for labelling; returns the chosen rows, best first."""
    if not cfg.get("model_dir"):
        raise VitftError("set model_dir=<run>/model (the model that decides what to label next)")
    if not cfg.get("pool"):
        raise VitftError("set pool=<folder of unlabelled images>")
    strategy, budget = str(cfg.strategy), int(cfg.budget)
    if strategy not in STRATEGIES:
        raise VitftError(f"strategy={strategy!r} is unknown; use one of {list(STRATEGIES)}")
    if budget < 1:
        raise VitftError(f"budget={budget} must be >= 1")
    if cfg.get("export") and cfg.export not in EXPORTS:
        raise VitftError(f"export={cfg.export!r} is unknown; use one of {list(EXPORTS)} or null")
    pool = Path(str(cfg.pool)).expanduser()
    if not pool.is_dir():
        raise VitftError(f"pool={cfg.pool} is not a folder (a folder of unlabelled images)")
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(int(cfg.seed))
    predictor = Predictor.from_path(
        cfg.model_dir, device=cfg.get("device"), ood=False, batch_size=int(cfg.batch_size)
    )
    if predictor.multilabel:
        raise VitftError("select ranks single-label models; this model is multi-label")
    feats, paths, bad = predictor.features_files(pool, progress=cfg.get("progress"))
    for b in bad:
        log.warning("skipped %s: %s", b.path, b.reason)
    if not paths:
        raise VitftError(f"pool={cfg.pool} has no readable images")
    with torch.inference_mode():
        probs = predictor.backend.torch_model.head(feats).float().softmax(-1)
    labelled = _labelled_features(predictor, cfg.model_dir) if strategy == "coreset" else None
    if budget > len(paths):
        log.warning("budget=%d > %d pool images: ranking them all", budget, len(paths))
    picks, scores = acquire(strategy, budget, probs, feats, labelled, int(cfg.seed))
    rows = [
        {
            "rank": rank,
            "path": paths[i],
            "score": f"{score:.6g}",
            "reason": _reason(strategy, score, probs[i], predictor.labels),
        }
        for rank, (i, score) in enumerate(zip(picks, scores, strict=True), start=1)
    ]
    out = write_selection(Path(str(cfg.output)), rows)
    print(f"{strategy}: {len(rows)} of {len(paths)} pool images -> {out}")
    if cfg.get("export") == "label_studio":
        export_label_studio(cfg, rows, probs, picks, predictor.labels)
    if cfg.get("copy_to"):
        dest = Path(str(cfg.copy_to)).expanduser()
        dest.mkdir(parents=True, exist_ok=True)
        for r in rows:  # rank prefix: same-named files of different folders never collide
            shutil.copy2(r["path"], dest / f"{r['rank']:04d}_{Path(r['path']).name}")
        print(f"copied {len(rows)} image(s) to label -> {dest}")
    return rows
