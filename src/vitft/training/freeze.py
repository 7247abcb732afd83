"""Layer-freezing and parameter-efficient strategies: one Lightning ``BaseFinetuning`` subclass
each, over the shared machinery of ``Freeze`` (freezing, staged unfreezing, LR schedules, DDP).

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

import inspect
import logging

from lightning.pytorch.callbacks import BaseFinetuning
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from vitft.core.errors import VitftError
from vitft.models.classifier import ImageClassifier
from vitft.models.lora import add_lora
from vitft.models.parts import backbone_parts
from vitft.training.distributed import (
    check_staged_strategy,
    keep_unused_frozen,
    resync_ddp,
    trainable,
)

log = logging.getLogger(__name__)


def parameter_counts(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "frozen": total - trainable}


def _check_depth(model: ImageClassifier, n: int | None) -> None:
    depth = len(backbone_parts(model.backbone).blocks)
    if n is None or not 0 <= int(n) <= depth:
        raise VitftError(
            f"freeze.n={n} does not fit: {model.config.model_type} has {depth} blocks, "
            f"so freeze.n must be between 0 and {depth}"
        )


class Freeze(BaseFinetuning):
    """What every strategy shares. A subclass says what is frozen at the start
    (``modules_to_freeze``, ``keeps_training``) and, when staged, what unfreezes when
    (``unfreeze_at``)."""

    name = "backbone"
    n: int | None = None

    def __init__(self, backbone_lr_ratio: float = 0.1):
        super().__init__()
        self.backbone_lr_ratio = float(backbone_lr_ratio)

    # -- checks and model surgery, before any Trainer exists --------------------------------
    def check(self, model: ImageClassifier) -> None:
        """Fail before training when the strategy does not fit the model."""

    def prepare(self, model: ImageClassifier) -> None:
        """Change the model's structure where the strategy needs it (LoRA adapters)."""

    # -- what is frozen -----------------------------------------------------------------------
    def modules_to_freeze(self, model: ImageClassifier) -> list[nn.Module]:
        return [model.backbone]

    def keeps_training(self, name: str) -> bool:
        """Backbone parameters that train although their module is frozen (biases, adapters)."""
        return False

    def apply(self, model: ImageClassifier) -> None:
        """Freeze ``model`` in place as it should be at the start of training."""
        modules = self.modules_to_freeze(model)
        if modules:
            self.freeze(modules, train_bn=False)
        for name, p in model.backbone.named_parameters():
            if self.keeps_training(name):
                p.requires_grad = True
        keep_unused_frozen(model)

    def freeze_before_training(self, pl_module) -> None:
        self.apply(pl_module.model)

    # -- staged unfreezing --------------------------------------------------------------------
    def unfreeze_at(self, model: ImageClassifier, epoch: int) -> list[list[nn.Module]]:
        """The module lists that train from ``epoch`` on (idempotent: also after a resume)."""
        return []

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
        for modules in self.unfreeze_at(model, current_epoch):
            self._unfreeze(modules, optimizer, pl_module)
        if trainable(model) != before:  # also on resume: requires_grad is restored here
            resync_ddp(pl_module.trainer)

    def on_fit_start(self, trainer, pl_module) -> None:
        super().on_fit_start(trainer, pl_module)  # on resume: restores the added param groups
        # Resumed mid-epoch, Lightning skips on_train_epoch_start (so finetune_function): the
        # restored groups' parameters, frozen again by freeze_before_training, must train.
        before = trainable(pl_module.model)
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.requires_grad_(True)
        if trainable(pl_module.model) != before:  # DDP was built for the frozen set: rewrap
            resync_ddp(trainer)
        if type(self).unfreeze_at is not Freeze.unfreeze_at:
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


class NoFreeze(Freeze):
    """Everything trains (Flash: no_freeze)."""

    name = "none"

    def modules_to_freeze(self, model: ImageClassifier) -> list[nn.Module]:
        return []


class FreezeBackbone(Freeze):
    """Only the head trains (Flash: freeze)."""

    name = "backbone"


class LastN(Freeze):
    """The last ``n`` blocks, the final norm and the head train."""

    name = "last_n"

    def __init__(self, n: int = 4):
        super().__init__()
        self.n = n

    def check(self, model: ImageClassifier) -> None:
        _check_depth(model, self.n)

    def modules_to_freeze(self, model: ImageClassifier) -> list[nn.Module]:
        self.check(model)
        parts = backbone_parts(model.backbone)
        keep = len(parts.blocks) - int(self.n)
        return [parts.embeddings, *parts.blocks[:keep], *(parts.post if self.n == 0 else [])]


class BitFit(Freeze):
    """Only the backbone's biases and the head train."""

    name = "bitfit"

    def keeps_training(self, name: str) -> bool:
        return name.endswith("bias")


class LoRA(Freeze):
    """LoRA adapters (peft) on the attention projections, and the head, train."""

    name = "lora"

    def __init__(self, lora: dict | None = None):
        super().__init__()
        self.lora = dict(lora or {})

    def prepare(self, model: ImageClassifier) -> None:
        add_lora(model, **self.lora)

    def keeps_training(self, name: str) -> bool:
        return "lora_" in name


class FreezeUnfreeze(Freeze):
    """The head; the whole backbone from ``unfreeze_epoch`` on."""

    name = "freeze_unfreeze"

    def __init__(self, unfreeze_epoch: int = 5, backbone_lr_ratio: float = 0.1):
        super().__init__(backbone_lr_ratio)
        self.unfreeze_epoch = int(unfreeze_epoch)

    def unfreeze_at(self, model: ImageClassifier, epoch: int) -> list[list[nn.Module]]:
        return [[model.backbone]] if epoch >= self.unfreeze_epoch else []


class UnfreezeMilestones(Freeze):
    """The head; the top ``n`` blocks and final norm from ``milestones[0]``, the rest of the
    backbone from ``milestones[1]``."""

    name = "unfreeze_milestones"

    def __init__(
        self, milestones: tuple[int, int] = (2, 4), n: int = 4, backbone_lr_ratio: float = 0.1
    ):
        super().__init__(backbone_lr_ratio)
        self.milestones = tuple(int(m) for m in milestones)
        self.n = n
        if not (len(self.milestones) == 2 and 0 <= self.milestones[0] <= self.milestones[1]):
            raise VitftError(
                f"freeze.milestones={list(milestones)} must be two epochs [e1, e2] with e1 <= e2"
            )

    def check(self, model: ImageClassifier) -> None:
        _check_depth(model, self.n)

    def unfreeze_at(self, model: ImageClassifier, epoch: int) -> list[list[nn.Module]]:
        parts = backbone_parts(model.backbone)
        top = [*parts.blocks[len(parts.blocks) - int(self.n) :], *parts.post]
        return [top] * (epoch >= self.milestones[0]) + [[model.backbone]] * (
            epoch >= self.milestones[1]
        )


# freeze.name -> strategy: the registry of conf/freeze/.
STRATEGIES: dict[str, type[Freeze]] = {
    cls.name: cls
    for cls in (
        NoFreeze,
        FreezeBackbone,
        LastN,
        BitFit,
        LoRA,
        FreezeUnfreeze,
        UnfreezeMilestones,
    )
}


def build_freeze(cfg: dict, model: ImageClassifier) -> Freeze:
    """The freeze callback for ``cfg`` (conf/freeze/), checked against ``model`` and applied to
    its structure now (LoRA), before the Lightning module and optimizer exist."""
    cfg = {k: v for k, v in dict(cfg).items() if not k.startswith("_")}  # _target_: Hydra's
    name = cfg.pop("name", "backbone")
    if name not in STRATEGIES:
        raise VitftError(f"freeze={name!r} is unknown; use one of {list(STRATEGIES)}")
    strategy = STRATEGIES[name]
    accepted = set(inspect.signature(strategy.__init__).parameters) - {"self"}
    unknown = sorted(set(cfg) - accepted)
    if unknown:
        raise VitftError(
            f"freeze has unknown keys {unknown} for freeze={name} (it takes {sorted(accepted)})"
        )
    cb = strategy(**cfg)
    cb.check(model)
    cb.prepare(model)
    return cb
