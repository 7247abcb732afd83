"""train(cfg): the story of one training run, top to bottom.

files -> scan (classes, splits) -> backbone + head -> Lightning module -> fit -> best checkpoint
-> validate + test -> HF export in <run>/model -> summary.json.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
import transformers
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from vitft import checkpoints, tracking
from vitft.batch_size import AUTO, auto_batch_size, initial_batch_size
from vitft.cache import FeatureDataModule, build_cache, use_cache
from vitft.data import doctor
from vitft.data.datamodule import FolderDataModule
from vitft.data.sources import scan_data
from vitft.data.transforms import processor_facts
from vitft.distill import load_teacher
from vitft.errors import VitftError
from vitft.export.hf import save_hf
from vitft.freeze import build_freeze
from vitft.hardware import resolve_precision
from vitft.modelio.card import write_card
from vitft.modelio.hub import push_model_dir
from vitft.models.classifier import build_model
from vitft.module import ClassifierModule
from vitft.multilabel import PROBLEM_TYPE, filled, pos_weights
from vitft.run.provenance import write_provenance
from vitft.seeding import StepSeed

log = logging.getLogger(__name__)

LAST_CKPT = Path("checkpoints") / "last.ckpt"


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


def _start_fresh(output_dir: Path) -> None:
    """A fresh run in a used run dir replaces the old run's metrics and checkpoints."""
    if (output_dir / LAST_CKPT).is_file():
        log.warning(
            "%s already holds checkpoints of an earlier run; starting fresh overwrites them "
            "(use resume=auto to continue that run instead)",
            output_dir,
        )
    for old in checkpoints.candidates(output_dir):  # else resume=auto could pick them up later
        if old.name != LAST_CKPT.name:
            old.unlink()
    (output_dir / "metrics.csv").unlink(missing_ok=True)
    (output_dir / tracking.RUN_ID_FILE).unlink(missing_ok=True)
    (output_dir / "load_failures.tsv").unlink(missing_ok=True)


def resolve_class_weights(spec: Any, counts: torch.Tensor) -> list[float] | None:
    """``loss.class_weights``: null, ``auto`` (inverse class frequency) or one weight per class."""
    if spec is None:
        return None
    if spec == "auto":
        weights = counts.sum() / (len(counts) * counts.clamp(min=1))
        return [round(float(w), 6) for w in weights]
    weights = [float(w) for w in spec]
    if len(weights) != len(counts):
        raise VitftError(
            f"loss.class_weights has {len(weights)} values but the data has {len(counts)} classes"
        )
    return weights


def _check_multilabel(cfg: DictConfig) -> None:
    """Options whose maths assume one class per image."""
    loss = cfg.loss
    if loss.get("mixup_alpha") or loss.get("cutmix_alpha"):
        raise VitftError(
            "loss.mixup_alpha / loss.cutmix_alpha mix one-class targets; set them to 0 for "
            "multi-label data"
        )
    if (cfg.get("distill") or {}).get("teacher"):
        raise VitftError("distill.teacher (softmax distillation) is single-label; unset it")


def _instantiate_all(cfg: DictConfig | None) -> list[Any]:
    return [instantiate(c) for c in (cfg or {}).values() if c and "_target_" in c]


def _scalars(results: list[dict]) -> dict[str, float]:
    return {k: float(v) for r in results for k, v in r.items()}


def open_run(cfg: DictConfig) -> tuple[Path, str | None]:
    """Seed, create the run dir, and find the checkpoint to continue from (or None)."""
    transformers.utils.logging.disable_progress_bar()
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    return output_dir, resolve_ckpt_path(cfg, output_dir)


def train(cfg: DictConfig) -> tuple[dict, dict]:
    """Train, test and export one model. Returns (metrics, objects)."""
    output_dir, ckpt_path = open_run(cfg)

    data = cfg.data
    splits = scan_data(data, cfg.task.get("multilabel"), output_dir)
    splits = doctor.screen(
        splits, data.get("on_bad_file", "skip"), data.get("check", "header"), output_dir
    )
    log.info("dataset %s\n%s", splits.root, splits.summary())
    if ckpt_path:
        checkpoints.check_labels(ckpt_path, splits.classes)

    model, processor = build_model(cfg.model, cfg.head, splits.classes)
    if splits.multilabel:
        _check_multilabel(cfg)
        model.config.problem_type = PROBLEM_TYPE  # HF's own field: saved in config.json
    freeze = build_freeze(cfg.freeze, model)
    loader_kwargs = dict(
        augment=data.augment,
        batch_size=initial_batch_size(data.batch_size),
        eval_batch_size=None if data.eval_batch_size == AUTO else data.eval_batch_size,
        num_workers=data.num_workers,
        pin_memory=data.pin_memory,
        persistent_workers=data.persistent_workers,
        failures_file=output_dir / "load_failures.tsv",
        seed=cfg.seed,
    )
    if use_cache(cfg.get("cache"), cfg.freeze):
        cache = build_cache(cfg.cache, model, processor, data)
        datamodule = FeatureDataModule(splits, processor, cache, **loader_kwargs)
    else:
        datamodule = FolderDataModule(splits, processor, **loader_kwargs)
    if splits.multilabel:
        class_weights = pos_weights(
            cfg.loss.get("class_weights"), datamodule.train_label_counts(), len(splits.train)
        )
    else:
        class_weights = resolve_class_weights(
            cfg.loss.get("class_weights"), datamodule.train_label_counts()
        )

    resolved = OmegaConf.to_container(cfg, resolve=True)
    # Under DDP, Lightning re-runs this script for ranks > 0 once rank 0 is in fit(): only
    # rank 0 writes the run dir (config, fresh-start cleanup, checkpoints, logs, export).
    if rank_zero_only.rank == 0:
        (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(resolved))
        provenance = write_provenance(output_dir, cfg.model, splits)
        if not ckpt_path:
            _start_fresh(output_dir)
    rid = tracking.run_id(output_dir, ckpt_path)
    module = ClassifierModule(
        model,
        optimizer=cfg.optimizer,
        scheduler=cfg.get("scheduler"),
        loss=cfg.loss,
        class_weights=class_weights,
        processor=json.loads(processor.to_json_string()),
        wandb_id=rid,
        distill=cfg.get("distill"),
        teacher=load_teacher(cfg.get("distill"), splits.classes, processor),
    )
    # StepSeed: dropout/drop-path/MixUp draws as a function of the position (exact resume).
    callbacks: list[Callback] = [freeze, StepSeed(cfg.seed)]
    callbacks += _instantiate_all(cfg.get("callbacks"))
    if cfg.get("ema_decay"):
        from lightning.pytorch.callbacks import EMAWeightAveraging

        callbacks.append(EMAWeightAveraging(decay=float(cfg.ema_decay)))
    loggers = tracking.build_loggers(cfg.get("logger"), output_dir, rid, resolved)
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        precision=resolve_precision(cfg.trainer.get("precision"), cfg.trainer.get("accelerator")),
        # Under SLURM (scripts/slurm), Lightning writes hpc_ckpt_N.ckpt on SIGUSR1; once fit ends
        # they are deleted, else validate/test below would load them instead of `best`.
        callbacks=[*callbacks, checkpoints.SpentHpcCheckpoints()],
        logger=loggers or False,
        plugins=[checkpoints.AtomicCheckpointIO()],
    )

    if data.batch_size == AUTO and cfg.get("train", True):
        max_size = data.get("max_batch_size", 256)
        auto_batch_size(trainer, module, datamodule, max_size, output_dir, bool(ckpt_path))
    if cfg.get("train", True):
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    elif ckpt_path:
        # Onto the CPU: the checkpoint may come from a GPU (or another rank's GPU); the Trainer
        # moves the module to this process's device.
        module.load_state_dict(checkpoints.read_checkpoint(ckpt_path)["state_dict"])

    best = next((cb.best_model_path for cb in callbacks if isinstance(cb, ModelCheckpoint)), "")
    if best and cfg.get("train", True):
        # Validate, test and export the best checkpoint, not the last epoch's weights.
        module.load_state_dict(checkpoints.read_checkpoint(best)["state_dict"])
    metrics: dict[str, float] = {}
    metrics.update(_scalars(trainer.validate(module, datamodule=datamodule, verbose=False)))
    thresholds = None
    if splits.multilabel:  # tuned on val; test and the exported model decide with them
        thresholds = dict(zip(splits.classes, filled(module.tuned_thresholds), strict=True))
        untuned = [
            c for c, t in zip(splits.classes, module.tuned_thresholds, strict=True) if t is None
        ]
        if untuned:
            log.warning("no val positives for %s: threshold 0.5 (not tuned)", untuned)
        module.thresholds.copy_(torch.tensor(list(thresholds.values())))
        log.info("per-class thresholds tuned on val (max F1): %s", thresholds)
    if cfg.get("test", True):
        metrics.update(_scalars(trainer.test(module, datamodule=datamodule)))

    if trainer.world_size > 1:  # the same numbers on every rank (torchmetrics syncs them)
        log.info("rank %d of %d: %s", trainer.global_rank, trainer.world_size, json.dumps(metrics))
    summary = {
        **metrics,
        "classes": splits.classes,
        "multilabel": splits.multilabel,
        "thresholds": thresholds,
        "confusion_matrix": module.confusion_matrices,
        "best_checkpoint": best or None,
        "last_checkpoint": str(output_dir / LAST_CKPT)
        if (output_dir / LAST_CKPT).is_file()
        else None,
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "params": module.param_counts,
        "resumed_from": ckpt_path,
        "run_dir": str(output_dir),
        "model_dir": str(output_dir / "model"),
        "wandb_run_id": rid,
    }
    if trainer.is_global_zero:
        save_hf(
            module.model,
            processor,
            output_dir / "model",
            meta={
                **processor_facts(processor),
                "source_checkpoint": best or None,
                "metrics": metrics,
                "task": cfg.task.get("name"),
                **({"multilabel": True, "thresholds": thresholds} if thresholds else {}),
            },
        )
        (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        write_card(
            output_dir / "model",
            task=cfg.task.get("name"),
            classes=splits.classes,
            metrics=metrics,
            config=resolved,
            provenance=provenance,
        )
        tracking.log_to_wandb(loggers, output_dir / "model", output_dir / "metrics.csv", ["best"])
        push_model_dir(output_dir / "model", cfg.get("hub"))
        log.info("run dir: %s", output_dir)
    return metrics, {
        "trainer": trainer,
        "module": module,
        "datamodule": datamodule,
        "summary": summary,
        "cfg": cfg,
    }


def run(cfg: DictConfig) -> float | None:
    """Entry point behind train.py: clear errors, trackers always closed, run dir always logged."""
    try:
        metrics, _ = train(cfg)
    except VitftError as err:
        log.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    finally:
        tracking.finish()
        log.info("outputs: %s", cfg.paths.output_dir)
    name = cfg.get("optimized_metric")
    return metrics.get(name) if name else None
