"""Small factories that turn the training config into objects: splits, datamodule, module,
trainer. ``vitft.apps.train.train`` calls them in order; each is one step of the story.

Each conf group that vitft builds names its builder in ``_target_``; ``build`` calls it with the
group's own settings and the objects it needs at run time (a model, the splits, the classes).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import get_object, instantiate
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, open_dict

from vitft.core.errors import VitftError
from vitft.core.hardware import resolve_precision
from vitft.data import doctor
from vitft.data.folder import SPLITS, DatasetSplits
from vitft.data.sources import scan_data
from vitft.modelio.checkpoint import read_checkpoint
from vitft.models.classifier import ImageClassifier, build_model
from vitft.models.multilabel import PROBLEM_TYPE, filled, loss_weights, pos_weights
from vitft.training import checkpoints
from vitft.training.batch_size import AUTO, initial_batch_size
from vitft.training.cache import FeatureCache, FeatureDataModule, use_cache
from vitft.training.datamodule import FolderDataModule
from vitft.training.module import ClassifierModule

log = logging.getLogger(__name__)


SCREENED_FILE = "screened.json"
# Each group's builder when its config has no _target_: run dirs and scripts from before the
# groups carried one.
BUILDERS = {
    "model": "vitft.models.backbone.load_backbone",
    "head": "vitft.models.heads.build_head",
    "freeze": "vitft.training.freeze.build_freeze",
    "loss": "vitft.training.module.build_criterion",
    "data": "vitft.training.factory.build_datamodule",
    "cache": "vitft.training.cache.build_cache",
    "distill": "vitft.training.distill.load_teacher",
}
HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")


def settings(group: Any) -> Any:
    """A conf group without Hydra's keys (``_target_``, ...): what its builder reads. A
    DictConfig stays one, and its ``${...}`` still resolve against the whole config."""
    if not isinstance(group, DictConfig):
        return {k: v for k, v in dict(group or {}).items() if k not in HYDRA_KEYS}
    own = copy.copy(group)
    with open_dict(own):
        for key in HYDRA_KEYS:
            own.pop(key, None)
    return own


def builder(group: Any, name: str) -> Callable:
    """The function or class that conf group ``name``'s ``_target_`` names (BUILDERS[name] when
    it names none)."""
    target = (group or {}).get("_target_") or BUILDERS[name]
    try:
        return get_object(str(target))
    except Exception as err:
        raise VitftError(f"{name}._target_={target!r} does not import: {err}") from err


def build(group: Any, name: str, *args: Any, **kwargs: Any) -> Any:
    """Call conf group ``name``'s builder with its settings and the run-time objects."""
    return builder(group, name)(settings(group), *args, **kwargs)


def build_classifier(model: Any, head: Any, labels: list[str]) -> tuple[ImageClassifier, Any]:
    """The backbone (conf/model/) and head (conf/head/) for ``labels``: (model, processor)."""
    return build_model(
        settings(model),
        settings(head),
        labels,
        backbone=builder(model, "model"),
        head=builder(head, "head"),
    )


def screened_splits(data: DictConfig, multilabel: bool | None, output_dir: Path) -> DatasetSplits:
    """Scan the data source (folders, manifest or HF dataset) of the ``data`` group into
    train/val/test and screen its files (``data.on_bad_file``). Under DDP only rank 0 reads every
    file: Lightning starts the other ranks after it has screened, and they take its result from
    the run dir."""
    splits = scan_data(data, multilabel, output_dir)
    policy, check = data.get("on_bad_file", "skip"), data.get("check", "header")
    files = [(s, str(p)) for s in SPLITS for p, _ in splits.split(s)]
    key = hashlib.sha256(json.dumps([files, policy, check]).encode()).hexdigest()
    record = Path(output_dir) / SCREENED_FILE
    saved = json.loads(record.read_text()) if record.is_file() else {}
    if rank_zero_only.rank > 0 and saved.get("key") == key:
        dropped = set(saved["dropped"])
        kept = {s: [(p, y) for p, y in splits.split(s) if str(p) not in dropped] for s in SPLITS}
        return replace(splits, **kept)
    screened = doctor.screen(splits, policy, check, output_dir)
    if rank_zero_only.rank == 0:
        left = {str(p) for s in SPLITS for p, _ in screened.split(s)}
        dropped = sorted({p for _, p in files} - left)
        record.write_text(json.dumps({"key": key, "dropped": dropped}))
    log.info("dataset %s\n%s", splits.root, screened.summary())
    return screened


def build_datamodule(
    data: Any,
    splits: DatasetSplits,
    processor: Any,
    out: Path,
    seed: int,
    cache: FeatureCache | None = None,
) -> FolderDataModule:
    """conf/data/'s batches: images, or with a ``cache`` the frozen backbone's features."""
    loader_kwargs = dict(
        augment=data.augment,
        batch_size=initial_batch_size(data.batch_size),
        eval_batch_size=None if data.eval_batch_size == AUTO else data.eval_batch_size,
        num_workers=data.num_workers,
        pin_memory=data.pin_memory,
        persistent_workers=data.persistent_workers,
        failures_file=out / "load_failures.tsv",
        seed=seed,
    )
    if cache is not None:
        return FeatureDataModule(splits, processor, cache, **loader_kwargs)
    return FolderDataModule(splits, processor, **loader_kwargs)


def feature_cache(
    cache: Any, freeze: Any, model: ImageClassifier, processor: Any, data: Any
) -> FeatureCache | None:
    """conf/cache/'s feature cache when this run can use one (``use_cache``), else None."""
    if not use_cache(cache, freeze):
        return None
    return build(cache, "cache", model, processor, settings(data))


def resolve_class_weights(spec: Any, counts: torch.Tensor) -> list[float] | None:
    """``loss.class_weights`` for cross-entropy (``loss_weights``; auto: inverse class
    frequency)."""
    return loss_weights(spec, counts.sum() / (len(counts) * counts.clamp(min=1)))


def check_multilabel(
    loss: Any, distill: Any, model: ImageClassifier, splits: DatasetSplits
) -> None:
    """Multi-label data: refuse options whose maths assume one class per image, and record the
    problem type in the model's config (HF's own field: saved in config.json)."""
    if not splits.multilabel:
        return
    if loss.get("mixup_alpha") or loss.get("cutmix_alpha"):
        raise VitftError(
            "loss.mixup_alpha / loss.cutmix_alpha mix one-class targets; set them to 0 for "
            "multi-label data"
        )
    if (distill or {}).get("teacher"):
        raise VitftError("distill.teacher (softmax distillation) is single-label; unset it")
    model.config.problem_type = PROBLEM_TYPE


def _class_weights(loss: Any, datamodule: FolderDataModule) -> list[float] | None:
    spec, counts = loss.get("class_weights"), datamodule.train_label_counts()
    if datamodule.splits.multilabel:
        return pos_weights(spec, counts, len(datamodule.splits.train))
    return resolve_class_weights(spec, counts)


def tune_thresholds(module: ClassifierModule, classes: list[str]) -> dict[str, float] | None:
    """Multi-label: per-class thresholds tuned on val (max F1); test and export use them."""
    if not module.multilabel:
        return None
    thresholds = dict(zip(classes, filled(module.tuned_thresholds), strict=True))
    untuned = [c for c, t in zip(classes, module.tuned_thresholds, strict=True) if t is None]
    if untuned:
        log.warning("no val positives for %s: threshold 0.5 (not tuned)", untuned)
    module.thresholds.copy_(torch.tensor(list(thresholds.values())))
    log.info("per-class thresholds tuned on val (max F1): %s", thresholds)
    return thresholds


def build_module(
    model: ImageClassifier,
    processor: Any,
    datamodule: FolderDataModule,
    wandb_id: str,
    channels_last: Any,
    optimizer: Any,
    scheduler: Any,
    loss: Any,
    distill: Any = None,
) -> ClassifierModule:
    """The LightningModule: conf/loss/'s criterion and class weights, conf/optimizer/ and
    conf/scheduler/, and conf/distill/'s teacher, each built by its group's ``_target_``."""
    return ClassifierModule(
        model,
        optimizer=optimizer,
        scheduler=scheduler,
        loss=settings(loss),
        class_weights=_class_weights(loss, datamodule),
        processor=json.loads(processor.to_json_string()),
        wandb_id=wandb_id,
        distill=settings(distill),
        teacher=build(distill, "distill", model.labels, processor),
        channels_last=use_channels_last(channels_last or False, model),
        criterion=builder(loss, "loss"),
    )


def use_channels_last(spec: Any, model: ImageClassifier) -> bool:
    """``channels_last``: true | false | auto (on for backbones with convolutions past the patch
    embedding: MobileViT, ConvNeXt; a plain ViT has one conv and gains nothing)."""
    if spec == "auto":
        return sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) > 1
    if not isinstance(spec, bool):
        raise VitftError(f"channels_last={spec!r}: use true, false or auto")
    return spec


def warmup_ema(decay: float):
    """AveragedModel's ``avg_fn``: EMA whose decay after n updates is min(decay, (1+n)/(10+n)),
    timm's warmup. With a fixed decay of 0.998, 240 steps (a short run on a few hundred images)
    still leave 62% of the average on the initial weights, and val/test/export use that average."""

    def avg(ema: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        n = num_averaged.to(ema.dtype)
        d = torch.clamp((1 + n) / (10 + n), max=decay)
        return d * ema + (1 - d) * current

    return avg


def ema_callbacks(decay: float | None) -> list[Callback]:
    """``ema_decay``: an exponential moving average of the weights, used for val/test/export."""
    if not decay:
        return []
    from lightning.pytorch.callbacks import EMAWeightAveraging  # only in newer Lightning releases

    ema = EMAWeightAveraging(decay=float(decay))
    ema._kwargs["avg_fn"] = warmup_ema(float(decay))  # the AveragedModel's, at setup
    return [ema]


def build_trainer(trainer: DictConfig, callbacks: list[Callback], loggers: list) -> L.Trainer:
    """The ``trainer`` group's Lightning Trainer with these callbacks and loggers."""
    if not loggers:  # logger=none: LearningRateMonitor refuses to run without a logger
        callbacks = [cb for cb in callbacks if not isinstance(cb, LearningRateMonitor)]
    return instantiate(
        trainer,
        precision=resolve_precision(trainer.get("precision"), trainer.get("accelerator")),
        # Under SLURM (scripts/slurm), Lightning writes hpc_ckpt_N.ckpt on SIGUSR1; once fit ends
        # they are deleted, else validate/test below would load them instead of `best`.
        callbacks=[*callbacks, checkpoints.SpentHpcCheckpoints()],
        logger=loggers or False,
        plugins=[checkpoints.AtomicCheckpointIO()],
    )


def load_weights(module: L.LightningModule, ckpt_path: str | Path) -> None:
    """The module's weights from a checkpoint (weights_only: no code runs), onto the CPU: the
    checkpoint may come from a GPU; the Trainer moves the module to this process's device."""
    module.load_state_dict(read_checkpoint(ckpt_path)["state_dict"])


def scalars(results: list[dict]) -> dict[str, float]:
    return {k: float(v) for r in results for k, v in r.items()}
