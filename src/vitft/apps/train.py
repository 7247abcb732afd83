"""train(cfg): the story of one training run, top to bottom.

files -> screened splits -> backbone + head -> Lightning module -> fit -> best checkpoint
-> validate + test -> HF export in <run>/model -> summary.json. Each step's factory is in
``vitft.training.factory``; the run dir's layout is ``vitft.run.rundir.Run``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import transformers
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from vitft.core.errors import VitftError
from vitft.data.transforms import processor_facts
from vitft.deploy.ood import fit_scorer
from vitft.deploy.operating_point import fit_operating_point
from vitft.modelio.checkpoint import check_labels
from vitft.modelio.ood import save_ood
from vitft.modelio.operating_point import save_operating_point
from vitft.models.ood import VIEWS, views_for
from vitft.models.operating_point import check_ok_classes
from vitft.run.rundir import Run
from vitft.training import checkpoints, tracking
from vitft.training.batch_size import AUTO, auto_batch_size
from vitft.training.factory import (
    build,
    build_classifier,
    build_module,
    build_trainer,
    check_multilabel,
    ema_callbacks,
    feature_cache,
    load_weights,
    scalars,
    screened_splits,
    tune_thresholds,
)
from vitft.training.seeding import StepSeed

log = logging.getLogger(__name__)


def resolve_ckpt_path(cfg: DictConfig, output_dir: Path) -> str | None:
    """The checkpoint to continue from: ``ckpt_path``, or with ``resume=auto`` the run's last."""
    if cfg.get("ckpt_path"):
        path = Path(cfg.ckpt_path).expanduser()
        if not path.is_file():
            raise VitftError(f"ckpt_path={cfg.ckpt_path} does not exist (or is not a file)")
        return str(path)
    resume = cfg.get("resume")
    if resume in (None, False, "never"):
        return None
    if resume != "auto":
        raise VitftError(f"resume={resume!r} is unknown; use resume=auto or leave it unset")
    newest = checkpoints.newest_checkpoint(output_dir)
    if newest:
        log.info("resume=auto: continuing from %s", newest)
        return str(newest)
    log.info("resume=auto: no checkpoint in %s yet, starting fresh", output_dir)
    return None


def is_rank0() -> bool:
    return rank_zero_only.rank == 0


def _instantiate_all(cfg: DictConfig | None) -> list[Any]:
    return [instantiate(c) for c in (cfg or {}).values() if c and "_target_" in c]


def open_run(cfg: DictConfig) -> tuple[Run, str | None]:
    """Seed, create the run dir, and find the checkpoint to continue from (or None: a fresh
    start, which clears an earlier run's checkpoints and metrics from the run dir)."""
    transformers.utils.logging.disable_progress_bar()
    L.seed_everything(cfg.seed, workers=True)
    run = Run(Path(cfg.paths.output_dir))
    run.root.mkdir(parents=True, exist_ok=True)
    ckpt_path = resolve_ckpt_path(cfg, run.root)
    if not ckpt_path and is_rank0():
        tracking.clear_previous(run.root)
    return run, ckpt_path


def train(cfg: DictConfig) -> tuple[dict, dict]:
    """Train, test and export one model. Returns (metrics, objects)."""
    run, ckpt_path = open_run(cfg)

    # 1. files (folders, manifest or HF dataset) -> screened train/val/test splits
    splits = screened_splits(cfg.data, cfg.task.get("multilabel"), run.root)
    ok_classes = check_ok_classes(cfg.task.get("ok_classes"), splits.classes)  # before, not after
    if ckpt_path:
        check_labels(ckpt_path, splits.classes)

    # 2. backbone + head, freeze strategy, batches that take their preprocessing from the model;
    # each conf group is built by the function its _target_ names
    model, processor = build_classifier(cfg.model, cfg.head, splits.classes)
    check_multilabel(cfg.loss, cfg.get("distill"), model, splits)
    freeze = build(cfg.freeze, "freeze", model)
    cache = feature_cache(cfg.get("cache"), cfg.freeze, model, processor, cfg.data)
    datamodule = build(cfg.data, "data", splits, processor, run.root, cfg.seed, cache=cache)

    # 3. the run dir: config, provenance, split manifest. Under DDP, Lightning re-runs this
    # script for ranks > 0 once rank 0 is in fit(): only rank 0 writes the run dir.
    resolved = OmegaConf.to_container(cfg, resolve=True)
    provenance = run.start(resolved, splits, cfg.model) if is_rank0() else {}
    rid = tracking.run_id(run.root, ckpt_path)

    # 4. LightningModule, callbacks, loggers, Trainer
    groups = {g: cfg.get(g) for g in ("optimizer", "scheduler", "loss", "distill")}
    module = build_module(model, processor, datamodule, rid, cfg.get("channels_last"), **groups)
    # StepSeed: dropout/drop-path/MixUp draws as a function of the position (exact resume).
    callbacks = [freeze, StepSeed(cfg.seed), *_instantiate_all(cfg.get("callbacks"))]
    callbacks += ema_callbacks(cfg.get("ema_decay"))
    loggers = tracking.build_loggers(cfg.get("logger"), run.root, rid, resolved)
    trainer = build_trainer(cfg.trainer, callbacks, loggers)

    # 5. fit, then validate and test the best checkpoint (not the last epoch's weights)
    best = _fit(cfg, trainer, callbacks, module, datamodule, run, ckpt_path)
    metrics = scalars(trainer.validate(module, datamodule=datamodule, verbose=False))
    thresholds = tune_thresholds(module, splits.classes)  # multi-label only
    if cfg.get("test", True):
        metrics.update(scalars(trainer.test(module, datamodule=datamodule)))
    if trainer.world_size > 1:  # the same numbers on every rank (torchmetrics syncs them)
        log.info("rank %d of %d: %s", trainer.global_rank, trainer.world_size, json.dumps(metrics))

    # 6. model/ (HF format, model card), summary.json, W&B artifact, hub push
    summary = _summary(metrics, splits, module, trainer, run, best, ckpt_path, rid, thresholds)
    if trainer.is_global_zero:
        meta = {"source_checkpoint": best or None, "metrics": metrics}
        meta |= {"task": cfg.task.get("name"), "model": cfg.model.get("name")}
        # serving on CUDA runs under the autocast type the model was trained and validated in
        meta |= {"training_precision": str(trainer.precision)}
        meta |= {"multilabel": True, "thresholds": thresholds} if thresholds else {}
        run.finish(module.model, processor, {**processor_facts(processor), **meta}, summary)
        _fit_ood(cfg, module.model, datamodule, trainer.strategy.root_device, run.model_dir)
        _operating_point(cfg, ok_classes, module.model, processor, splits, run.model_dir)
        card = {"classes": splits.classes, "metrics": metrics, "provenance": provenance}
        tracking.publish(run.root, cfg, resolved, loggers, **card)
        log.info("run dir: %s", run.root)
    objects = {"trainer": trainer, "module": module, "datamodule": datamodule, "cfg": cfg}
    return metrics, {**objects, "summary": summary}


def _fit(cfg: DictConfig, trainer, callbacks, module, datamodule, run: Run, ckpt_path) -> str:
    """Fit (``cfg.train``; the batch size found first when it is auto), or load ``ckpt_path``'s
    weights without training; the module ends with the weights of the best checkpoint that
    ``callbacks`` kept, whose path is returned ("" when there is none)."""
    training = cfg.get("train", True)
    if cfg.data.batch_size == AUTO and training:
        max_size = cfg.data.get("max_batch_size", 256)
        auto_batch_size(trainer, module, datamodule, max_size, run.root, bool(ckpt_path))
    if training:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    elif ckpt_path:
        load_weights(module, ckpt_path)
    best = next((cb.best_model_path for cb in callbacks if isinstance(cb, ModelCheckpoint)), "")
    if best and training:
        load_weights(module, best)
    return best


def _fit_ood(cfg: DictConfig, model, datamodule, device, model_dir: Path) -> None:
    """The unknown-defect scorer (``cfg.ood``) on the best weights' features, into ``model_dir``:
    on the training ``device``, from the datamodule's loader (its workers), each step one eval
    batch's worth of forward passes (images x views)."""
    ood = cfg.get("ood") or {}
    if not ood.get("method"):
        return
    if datamodule.splits.multilabel:
        log.info("ood: skipped, the unknown flag is for single-label models")
        return
    views = views_for(str(ood.get("views", "auto")), cfg.data.get("augment"))
    size = datamodule.eval_batch_size
    size = max(1, (size if isinstance(size, int) else 64) // VIEWS[views])
    scorer = fit_scorer(
        model,
        datamodule.features_loader("train", size),
        datamodule.features_loader("val", size),
        device=device,
        method=str(ood.method),
        acceptance=float(ood.get("acceptance", 0.95)),
        k=int(ood.get("k", 5)),
        views=views,
        progress=True,
    )
    save_ood(scorer, model_dir)


def _operating_point(cfg: DictConfig, ok_classes, model, processor, splits, model_dir) -> None:
    """The inspection threshold (``task.ok_classes``, ``max_escape``) on val, into ``model_dir``."""
    if not ok_classes or cfg.get("max_escape") is None or splits.multilabel:
        return
    if not splits.split("val"):
        log.warning("operating point: no val images to choose the threshold on; none stored")
        return
    point = fit_operating_point(model, processor, splits.split("val"), ok_classes, cfg.max_escape)
    if point is not None:
        save_operating_point(point, model_dir)


def _summary(
    metrics: dict, splits, module, trainer, run: Run, best: str, ckpt_path, rid: str, thresholds
) -> dict[str, Any]:
    return {
        **metrics,
        "classes": splits.classes,
        "multilabel": splits.multilabel,
        "thresholds": thresholds,
        "confusion_matrix": module.confusion_matrices,
        "best_checkpoint": best or None,
        "last_checkpoint": str(run.last_checkpoint) if run.last_checkpoint.is_file() else None,
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "params": module.param_counts,
        "resumed_from": ckpt_path,
        "run_dir": str(run.root),
        "model_dir": str(run.model_dir),
        "wandb_run_id": rid,
    }


def objective(cfg: DictConfig) -> float | None:
    """Train, then return ``cfg.optimized_metric`` (what a Hydra sweeper minimises/maximises)."""
    metrics, _ = train(cfg)
    name = cfg.get("optimized_metric")
    return metrics.get(name) if name else None
