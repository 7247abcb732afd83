"""Layer-freezing and parameter-efficient strategies, as Lightning ``BaseFinetuning`` callbacks.

Static (the same trainable set for the whole run):
- ``none``: everything trains (Flash: no_freeze).
- ``backbone``: only the head trains; the whole backbone, its LayerNorms included, is frozen
  (Flash: freeze).
- ``last_n``: the embeddings and the first L-n blocks are frozen; the last n blocks (each with
  its own LayerNorms), the final norm and the head train. n=0 is ``backbone``.
- ``bitfit``: only the backbone's biases and the head train (Ben Zaken et al., 2022).
- ``lora``: LoRA adapters (peft) on the attention projections; only adapters and head train.
  The HF export merges the adapters, so the deployed model is a plain model.

Staged (Flash's names and semantics):
- ``freeze_unfreeze``: backbone frozen, then unfrozen at ``unfreeze_epoch`` as a new optimizer
  param group with lr = ``backbone_lr_ratio`` x the head's lr at that moment.
- ``unfreeze_milestones``: the top ``n`` blocks (and the final norm) at ``milestones[0]``, the
  rest of the backbone at ``milestones[1]``, each as a new param group like above.

LayerNorms follow the block they belong to. ViTs have no BatchNorm, so there are no running
statistics to keep. Frozen parameters are never given to the optimizer, so weight decay cannot move
them. The unfrozen groups keep their lr (the LR schedule covers the groups that exist when training
starts). Unfreezing is idempotent per epoch, so a run resumed after an unfreeze epoch gets the same
trainable set and optimizer groups back (BaseFinetuning restores the groups, we restore
requires_grad).
"""

from __future__ import annotations

import logging

from lightning.pytorch.callbacks import BaseFinetuning
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from vitft.distributed import check_staged_strategy, keep_unused_frozen, resync_ddp, trainable
from vitft.errors import VitftError
from vitft.models.backbone import backbone_parts
from vitft.models.classifier import ImageClassifier

log = logging.getLogger(__name__)

STATIC = ("none", "backbone", "last_n", "bitfit", "lora")
STAGED = ("freeze_unfreeze", "unfreeze_milestones")
STRATEGIES = STATIC + STAGED


def parameter_counts(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "frozen": total - trainable}


class Freeze(BaseFinetuning):
    """Freeze part of the model before training, and unfreeze on schedule (staged strategies)."""

    def __init__(
        self,
        name: str = "backbone",
        n: int | None = None,
        unfreeze_epoch: int = 5,
        milestones: tuple[int, int] = (2, 4),
        backbone_lr_ratio: float = 0.1,
        lora: dict | None = None,
    ):
        super().__init__()
        if name not in STRATEGIES:
            raise VitftError(f"freeze={name!r} is unknown; use one of {list(STRATEGIES)}")
        self.name = name
        self.n = n
        self.unfreeze_epoch = int(unfreeze_epoch)
        self.milestones = tuple(int(m) for m in milestones)
        self.backbone_lr_ratio = float(backbone_lr_ratio)
        self.lora = dict(lora or {})
        if name == "unfreeze_milestones" and not (
            len(self.milestones) == 2 and 0 <= self.milestones[0] <= self.milestones[1]
        ):
            raise VitftError(
                f"freeze.milestones={list(milestones)} must be two epochs [e1, e2] with e1 <= e2"
            )

    # -- checks and model surgery, before any Trainer exists --------------------------------
    def check(self, model: ImageClassifier) -> None:
        """Fail before training when the strategy does not fit the model."""
        if self.name not in ("last_n", "unfreeze_milestones"):
            return
        depth = len(backbone_parts(model.backbone).blocks)
        if self.n is None or not 0 <= int(self.n) <= depth:
            raise VitftError(
                f"freeze.n={self.n} does not fit: {model.config.model_type} has {depth} blocks, "
                f"so freeze.n must be between 0 and {depth}"
            )

    def prepare(self, model: ImageClassifier) -> None:
        """Change the model's structure where the strategy needs it (LoRA adapters)."""
        if self.name == "lora":
            from vitft.models.lora import add_lora

            add_lora(model, **self.lora)

    # -- what is frozen -----------------------------------------------------------------------
    def _top(self, model: ImageClassifier) -> list[nn.Module]:
        parts = backbone_parts(model.backbone)
        return [*parts.blocks[len(parts.blocks) - int(self.n) :], *parts.post]

    def modules_to_freeze(self, model: ImageClassifier) -> list[nn.Module]:
        if self.name == "none":
            return []
        if self.name in ("backbone", "bitfit", "lora", "freeze_unfreeze", "unfreeze_milestones"):
            return [model.backbone]
        self.check(model)
        parts = backbone_parts(model.backbone)
        keep = len(parts.blocks) - int(self.n)
        return [parts.embeddings, *parts.blocks[:keep], *(parts.post if self.n == 0 else [])]

    def apply(self, model: ImageClassifier) -> None:
        """Freeze ``model`` in place as it should be at the start of training."""
        modules = self.modules_to_freeze(model)
        if modules:
            self.freeze(modules, train_bn=False)
        if self.name == "bitfit":
            for name, p in model.backbone.named_parameters():
                p.requires_grad = name.endswith("bias")
        elif self.name == "lora":
            for name, p in model.backbone.named_parameters():
                p.requires_grad = "lora_" in name
        keep_unused_frozen(model)

    def freeze_before_training(self, pl_module) -> None:
        self.apply(pl_module.model)

    # -- staged unfreezing --------------------------------------------------------------------
    def _extend_schedules(self, trainer, optimizer) -> None:
        """Give param groups added after the LR scheduler was built the same schedule, scaled
        by backbone_lr_ratio (torch's LambdaLR zips groups and lambdas strictly)."""
        for config in trainer.lr_scheduler_configs:
            sched = config.scheduler
            if sched.optimizer is not optimizer or not hasattr(sched, "lr_lambdas"):
                continue
            while len(sched.lr_lambdas) < len(optimizer.param_groups):
                sched.lr_lambdas.append(sched.lr_lambdas[0])
            while len(sched.base_lrs) < len(optimizer.param_groups):
                group = optimizer.param_groups[len(sched.base_lrs)]
                sched.base_lrs.append(sched.base_lrs[0] * self.backbone_lr_ratio)
                group.setdefault("initial_lr", sched.base_lrs[-1])

    def _unfreeze(self, modules: list[nn.Module], optimizer, pl_module) -> None:
        lr = optimizer.param_groups[0]["lr"] * self.backbone_lr_ratio
        before = len(optimizer.param_groups)
        # BaseFinetuning.unfreeze_and_add_param_group, with unused parameters kept out.
        self.make_trainable(modules)
        keep_unused_frozen(pl_module.model)
        params = self.filter_params(modules, train_bn=False, requires_grad=True)
        params = self.filter_on_optimizer(optimizer, params)
        if params:
            optimizer.add_param_group({"params": params, "lr": lr})
        self._extend_schedules(pl_module.trainer, optimizer)
        if len(optimizer.param_groups) > before:
            rank_zero_info(f"freeze={self.name}: unfroze {len(modules)} module(s), lr={lr:.2e}")
            pl_module.param_counts = parameter_counts(pl_module.model)

    def finetune_function(self, pl_module, current_epoch: int, optimizer) -> None:
        model = pl_module.model
        before = trainable(model)
        self._finetune(model, current_epoch, optimizer, pl_module)
        if trainable(model) != before:  # also on resume: requires_grad is restored here
            resync_ddp(pl_module.trainer)

    def _finetune(self, model, current_epoch: int, optimizer, pl_module) -> None:
        if self.name == "freeze_unfreeze" and current_epoch >= self.unfreeze_epoch:
            self._unfreeze([model.backbone], optimizer, pl_module)
        elif self.name == "unfreeze_milestones":
            if current_epoch >= self.milestones[0]:
                self._unfreeze(self._top(model), optimizer, pl_module)
            if current_epoch >= self.milestones[1]:
                self._unfreeze([model.backbone], optimizer, pl_module)

    def on_fit_start(self, trainer, pl_module) -> None:
        super().on_fit_start(trainer, pl_module)  # on resume: restores the added param groups
        # Resumed mid-epoch, Lightning skips on_train_epoch_start (so finetune_function): the
        # restored groups' parameters, frozen again by freeze_before_training, must train.
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.requires_grad_(True)
        if self.name in STAGED:
            check_staged_strategy(trainer, self.name)
        for optimizer in trainer.optimizers:
            self._extend_schedules(trainer, optimizer)
        counts = parameter_counts(pl_module.model)
        pl_module.param_counts = counts
        rank_zero_info(
            f"freeze={self.name}{'' if self.n is None else f' (n={self.n})'}: "
            f"{counts['trainable']:,} trainable / {counts['total']:,} parameters "
            f"({counts['frozen']:,} frozen)"
        )
        for lg in trainer.loggers:
            lg.log_hyperparams({f"params/{k}": v for k, v in counts.items()})


def build_freeze(cfg: dict, model: ImageClassifier) -> Freeze:
    """The freeze callback for ``cfg`` (conf/freeze/), checked against ``model`` and applied to
    its structure now (LoRA), before the Lightning module and optimizer exist."""
    cfg = dict(cfg)
    cb = Freeze(
        cfg.pop("name", "backbone"),
        n=cfg.pop("n", None),
        unfreeze_epoch=cfg.pop("unfreeze_epoch", 5),
        milestones=tuple(cfg.pop("milestones", (2, 4))),
        backbone_lr_ratio=cfg.pop("backbone_lr_ratio", 0.1),
        lora=cfg.pop("lora", None),
    )
    if cfg:
        raise VitftError(f"freeze has unknown keys {sorted(cfg)} for freeze={cb.name}")
    cb.check(model)
    cb.prepare(model)
    return cb
