"""ClassifierModule: the LightningModule that trains an ImageClassifier.

Loss, metrics, optimizer parameter groups and the LR schedule; no file I/O. The checkpoint also
carries what is needed to rebuild the plain model without the training config (``vitft`` key).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchmetrics.classification import MultilabelPrecisionRecallCurve

from vitft.core.errors import VitftError
from vitft.modelio.checkpoint import BLOCK, vitft_block
from vitft.models.classifier import ImageClassifier
from vitft.models.multilabel import DEFAULT_THRESHOLD, curve_ap, is_multilabel, tune_from_curve
from vitft.models.parts import backbone_parts
from vitft.training.distill import kd_loss
from vitft.training.metrics import BatchMean, build_confusion, build_metrics, flatten

# Parameters that never get weight decay besides norms and biases (timm's rule: all 1-d params).
# loss.name -> criterion: the registry of conf/loss/ (multi-label data: BCE with logits).
LOSSES = {"cross_entropy": nn.CrossEntropyLoss}
NO_DECAY_NAMES = ("cls_token", "position_embeddings", "pos_embed", "mask_token", "register_tokens")


def _plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def layer_ids(model: ImageClassifier) -> tuple[dict[int, int], int]:
    """Parameter id -> layer id (embeddings 0, block i -> i + 1, the rest L + 1), and L."""
    parts = backbone_parts(model.backbone)
    ids = {id(p): len(parts.blocks) + 1 for p in model.parameters()}
    ids.update({id(p): 0 for p in parts.embeddings.parameters()})
    for i, block in enumerate(parts.blocks):
        ids.update({id(p): i + 1 for p in block.parameters()})
    return ids, len(parts.blocks)


def param_groups(
    model: ImageClassifier,
    weight_decay: float,
    layer_decay: float | None = None,
    lr: float | None = None,
) -> list[dict]:
    """Trainable parameters grouped by weight decay (none on norms, biases, tokens) and, with
    ``layer_decay``, by depth: block i gets lr * layer_decay ** (L - i) (timm's rule), the
    embeddings lr * layer_decay ** (L + 1), the head and final norm the full lr."""
    ids, depth = layer_ids(model) if layer_decay else ({}, 0)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not (p.ndim <= 1 or any(k in name for k in NO_DECAY_NAMES))
        layer = ids.get(id(p), depth + 1)
        group = groups.setdefault(
            (layer, decay), {"params": [], "weight_decay": weight_decay if decay else 0.0}
        )
        if layer_decay:
            group["lr"] = lr * layer_decay ** (depth + 1 - layer)
        group["params"].append(p)
    return [groups[k] for k in sorted(groups, key=lambda k: (k[0], not k[1]))]


def ordinal_targets(num_classes: int, alpha: float) -> torch.Tensor:
    """Row y: the soft target of grade y, softmax over k of -alpha * (k - y)^2 (SORD, Diaz and
    Marathe, CVPR 2019). A neighbouring grade costs less than a distant one, and graders' doubt
    between neighbours is part of the target rather than an error."""
    grades = torch.arange(num_classes, dtype=torch.float)
    return torch.softmax(-alpha * (grades[None, :] - grades[:, None]) ** 2, dim=1)


def build_mix(mixup_alpha: float, cutmix_alpha: float, num_classes: int):
    """MixUp and/or CutMix on training batches (torchvision v2), one of them per batch."""
    from torchvision.transforms import v2

    ops = []
    if mixup_alpha:
        ops.append(v2.MixUp(alpha=float(mixup_alpha), num_classes=num_classes))
    if cutmix_alpha:
        ops.append(v2.CutMix(alpha=float(cutmix_alpha), num_classes=num_classes))
    if not ops:
        return None
    return ops[0] if len(ops) == 1 else v2.RandomChoice(ops)


def build_criterion(
    loss: dict, weight: torch.Tensor | None, multilabel: bool, ordinal: bool = False
) -> nn.Module:
    """The criterion of conf/loss/: ``loss.name`` from LOSSES with the class ``weight`` and label
    smoothing (none with ordinal soft targets); multi-label data: BCE with logits, ``weight`` as
    positive weights."""
    name = loss.get("name", "cross_entropy")
    if name not in LOSSES:
        raise VitftError(f"loss.name={name!r} is unknown; use one of {sorted(LOSSES)} (conf/loss/)")
    if multilabel:
        return nn.BCEWithLogitsLoss(pos_weight=weight)
    smoothing = 0.0 if ordinal else float(loss.get("label_smoothing", 0.0))
    return LOSSES[name](weight=weight, label_smoothing=smoothing)


def build_optimizer(opt_cfg: dict, model: ImageClassifier) -> torch.optim.Optimizer:
    """The optimizer of conf/optimizer/ over ``model``'s trainable parameter groups."""
    opt_cfg = dict(_plain(opt_cfg))
    weight_decay = float(opt_cfg.pop("weight_decay", 0.0))
    layer_decay = opt_cfg.pop("layer_decay", None)
    groups = param_groups(model, weight_decay, layer_decay, opt_cfg.get("lr"))
    return instantiate(opt_cfg)(params=groups)


def build_scheduler(sched_cfg: dict | None, optimizer: torch.optim.Optimizer, trainer: L.Trainer):
    """Lightning's optimizer config: conf/scheduler/'s schedule, stepped every optimizer step."""
    if not sched_cfg:
        return optimizer
    total = trainer.estimated_stepping_batches
    if not math.isfinite(total):
        raise VitftError("a scheduler needs trainer.max_epochs or trainer.max_steps to be set")
    epochs = max(1, trainer.max_epochs or 1)
    warmup = round(float(sched_cfg.get("warmup_epochs", 0)) * total / epochs)
    schedule = instantiate(sched_cfg["schedule"])
    accepted = inspect.signature(schedule.func).parameters
    kwargs = {"num_warmup_steps": min(warmup, int(total)), "num_training_steps": int(total)}
    kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    scheduler = schedule(optimizer=optimizer, **kwargs)
    return {
        "optimizer": optimizer,
        "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
    }


class ClassifierModule(L.LightningModule):
    def __init__(
        self,
        model: ImageClassifier,
        optimizer: dict,
        scheduler: dict | None = None,
        loss: dict | None = None,
        class_weights: list[float] | None = None,
        processor: dict | None = None,
        wandb_id: str | None = None,
        distill: dict | None = None,
        teacher: Any = None,
        channels_last: bool = False,
        criterion: Callable = build_criterion,
    ):
        super().__init__()
        self.save_hyperparameters(
            {
                "optimizer": _plain(optimizer),
                "scheduler": _plain(scheduler),
                "loss": _plain(loss) or {},
                "class_weights": class_weights,
            }
        )
        self.model = model
        # NHWC during fit: oneDNN's and cuDNN's fast layout for convolutions (1.3x to 1.6x on a
        # CPU for MobileViT); the model goes back to NCHW after fit, which is what gets saved.
        self.channels_last, self._nhwc = channels_last, False
        self.processor = processor or {}
        self.wandb_id = wandb_id
        # Knowledge distillation (training.distill): a frozen teacher, kept out of the state dict.
        self.teacher = teacher
        self.distill = _plain(distill) or {}
        self.param_counts: dict[str, int] = {}
        self._build_loss(class_weights, criterion)
        self._build_metrics(self.model.config.num_labels)

    def _build_loss(self, class_weights: list[float] | None, criterion: Callable) -> None:
        """The training objective from ``hparams.loss``: the criterion that ``criterion`` builds
        (with ``class_weights``), label smoothing or ordinal soft targets, and MixUp/CutMix."""
        loss = self.hparams.loss
        weight = torch.tensor(class_weights, dtype=torch.float) if class_weights else None
        self.label_smoothing = float(loss.get("label_smoothing", 0.0))
        n = self.model.config.num_labels
        # Ordered grades: soft targets by grade distance replace one-hot targets and smoothing.
        self.ordinal = bool(loss.get("ordinal")) and not is_multilabel(self.model.config)
        if self.ordinal:
            kernel = ordinal_targets(n, float(loss.get("ordinal_alpha", 2.0)))
            self.register_buffer("ordinal_kernel", kernel, persistent=False)
            self.label_smoothing = 0.0
        self.multilabel = is_multilabel(self.model.config)
        self.criterion = criterion(loss, weight, self.multilabel, self.ordinal)
        self.mix = build_mix(loss.get("mixup_alpha", 0.0), loss.get("cutmix_alpha", 0.0), n)

    def _build_metrics(self, n: int) -> None:
        """Per-stage metrics, confusion matrices, PR curves and thresholds (multi-label), and
        epoch-mean losses, for ``n`` classes (multilabel and ordinal as ``_build_loss`` set)."""
        # nn.ModuleDict keys can't be "train" (a Module method): one attribute per stage.
        self.train_metrics = build_metrics(n, "train/", self.multilabel, self.ordinal)
        self.val_metrics = build_metrics(n, "val/", self.multilabel, self.ordinal)
        self.test_metrics = build_metrics(n, "test/", self.multilabel, self.ordinal)
        self.val_confusion = build_confusion(n, self.multilabel)
        self.test_confusion = build_confusion(n, self.multilabel)
        # Multi-label val/test: every score, for average precision and the val-tuned thresholds.
        if self.multilabel:
            self.val_curve = MultilabelPrecisionRecallCurve(n)
            self.test_curve = MultilabelPrecisionRecallCurve(n)
        # Decision thresholds per class (multi-label); not weights, so not in the state dict.
        self.register_buffer("thresholds", torch.full((n,), DEFAULT_THRESHOLD), persistent=False)
        # The F1-maximising thresholds of the last validation (None: a class without positives).
        self.tuned_thresholds: list[float | None] = []
        # Epoch-mean losses are torchmetrics too, synchronised in _epoch_end like the others. With
        # self.log(loss, sync_dist=True) per step, DDP deadlocked: rank 0's progress bar reduces
        # the logged loss in on_train_epoch_end (callbacks run before the module's hook) while
        # the other ranks, whose bars are off, are already gathering metrics in _epoch_end.
        self.train_loss, self.val_loss, self.test_loss = BatchMean(), BatchMean(), BatchMean()
        self.train_kd_loss = BatchMean()
        # Last computed confusion matrices (rows: true class, columns: predicted).
        self.confusion_matrices: dict[str, list[list[int]]] = {}

    @property
    def classes(self) -> list[str]:
        return self.model.labels

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # 2-d batches are cached backbone features (vitft.training.cache): only the head runs.
        if pixel_values.ndim == 2:
            return self.model.head(pixel_values)
        if self._nhwc:
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        return self.model(pixel_values)

    def on_fit_start(self) -> None:
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
            self._nhwc = True

    def on_fit_end(self) -> None:
        if self._nhwc:
            self.model.to(memory_format=torch.contiguous_format)
            self._nhwc = False

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        target = y
        if stage == "train" and self.mix is not None:
            x, target = self.mix(x, y)  # soft targets; metrics use the dominant label
            y = target.argmax(dim=-1)
        logits = self(x)
        if self.multilabel:
            return self._multilabel_step(logits, y, stage)
        if self.ordinal:
            if target.ndim == 1:
                target = nn.functional.one_hot(target, self.ordinal_kernel.shape[0])
            target = target.to(self.ordinal_kernel.dtype) @ self.ordinal_kernel
        loss = self.criterion(logits, target)
        if stage == "train" and self.teacher is not None:
            soft = kd_loss(logits, self.teacher(x), self.distill["temperature"])
            weight = float(self.distill["weight"])
            self.train_kd_loss.update(soft.detach(), len(y))
            loss = (1 - weight) * loss + weight * soft
        preds = logits.argmax(dim=-1)
        getattr(self, f"{stage}_metrics").update(preds, y)
        if stage != "train":
            getattr(self, f"{stage}_confusion").update(preds, y)
        getattr(self, f"{stage}_loss").update(loss.detach(), len(y))
        return loss

    def _multilabel_step(self, logits: torch.Tensor, y: torch.Tensor, stage: str) -> torch.Tensor:
        target = y.float()
        if self.label_smoothing:
            target = target * (1 - self.label_smoothing) + self.label_smoothing / 2
        loss = self.criterion(logits, target)
        probs = logits.detach().float().sigmoid()  # fp32 scores (under bf16 autocast too)
        preds = (probs >= self.thresholds).long()
        getattr(self, f"{stage}_metrics").update(preds, y)
        if stage != "train":
            getattr(self, f"{stage}_confusion").update(preds, y)
            getattr(self, f"{stage}_curve").update(probs, y)
        getattr(self, f"{stage}_loss").update(loss.detach(), len(y))
        return loss

    def _curve_end(self, stage: str, values: dict[str, float]) -> None:
        """Per-class average precision (and on val the tuned thresholds) from all scores."""
        curve = getattr(self, f"{stage}_curve")
        precision, recall, thresholds = curve.compute()
        curve.reset()
        aps = []
        for cls, p, r in zip(self.classes, precision, recall, strict=True):
            ap = curve_ap(p, r)
            if ap is not None:
                values[f"{stage}/ap_{cls}"] = ap
                aps.append(ap)
        if aps:
            values[f"{stage}/map"] = sum(aps) / len(aps)
        if stage == "val":
            self.tuned_thresholds = tune_from_curve(precision, recall, thresholds)

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def _epoch_end(self, stage: str) -> None:
        metrics = getattr(self, f"{stage}_metrics")
        values = flatten(metrics.compute(), self.classes)
        metrics.reset()
        losses = [(f"{stage}/loss", getattr(self, f"{stage}_loss"))]
        if stage == "train" and self.teacher is not None:
            losses.append(("train/kd_loss", self.train_kd_loss))
        for name, mean in losses:
            if mean.update_count:
                values[name] = float(mean.compute())
            mean.reset()
        if stage != "train" and self.multilabel:
            self._curve_end(stage, values)
        # Already reduced over ranks by torchmetrics: sync_dist only tells Lightning so (every
        # rank logs the same numbers; no per-step collectives).
        for name in (f"{stage}/acc", f"{stage}/loss"):
            if name in values:
                self.log(name, values.pop(name), prog_bar=True, sync_dist=True)
        self.log_dict(values, sync_dist=True)
        if stage != "train":
            confusion = getattr(self, f"{stage}_confusion")
            self.confusion_matrices[stage] = confusion.compute().int().tolist()
            confusion.reset()

    def on_train_epoch_end(self) -> None:
        self._epoch_end("train")

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    def configure_optimizers(self):
        optimizer = build_optimizer(self.hparams.optimizer, self.model)
        return build_scheduler(self.hparams.scheduler, optimizer, self.trainer)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Enough to rebuild the plain model from the checkpoint alone (eval, export).
        checkpoint[BLOCK] = vitft_block(
            self.model, self.classes, self.processor, self.wandb_id, self.multilabel
        )
