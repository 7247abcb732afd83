"""Layer-freezing strategies, as Lightning ``BaseFinetuning`` callbacks.

- ``none``: everything trains.
- ``backbone``: only the head trains; the whole backbone, its LayerNorms included, is frozen.
- ``last_n``: the embeddings and the first L-n blocks are frozen; the last n blocks (each with
  its own LayerNorms), the final LayerNorm and the head train. n=0 is ``backbone``; n=L is
  ``none`` but for the embeddings.

LayerNorms follow the block they belong to: a frozen block keeps its pre-trained normalisation,
and a trained block adapts its own. ViTs have no BatchNorm, so there are no running statistics to
keep or update. Frozen parameters are never given to the optimizer, so weight decay cannot move
them; BaseFinetuning keeps the optimizer's parameter groups right across resume.
"""

from __future__ import annotations

import logging

from lightning.pytorch.callbacks import BaseFinetuning
from lightning.pytorch.utilities import rank_zero_info

from vitft.errors import VitftError
from vitft.models.backbone import backbone_parts
from vitft.models.classifier import ImageClassifier

log = logging.getLogger(__name__)

STRATEGIES = ("none", "backbone", "last_n")


def parameter_counts(model) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "frozen": total - trainable}


class Freeze(BaseFinetuning):
    """Freeze part of the backbone before training (static strategies)."""

    def __init__(self, name: str = "backbone", n: int | None = None):
        super().__init__()
        if name not in STRATEGIES:
            raise VitftError(f"freeze={name!r} is unknown; use one of {list(STRATEGIES)}")
        self.name = name
        self.n = n

    def check(self, model: ImageClassifier) -> None:
        """Fail before training when the strategy does not fit the model."""
        if self.name != "last_n":
            return
        depth = len(backbone_parts(model.backbone).blocks)
        if self.n is None or not 0 <= int(self.n) <= depth:
            raise VitftError(
                f"freeze.n={self.n} does not fit: {model.config.model_type} has {depth} blocks, "
                f"so freeze.n must be between 0 and {depth}"
            )

    def modules_to_freeze(self, model: ImageClassifier) -> list:
        if self.name == "none":
            return []
        if self.name == "backbone":
            return [model.backbone]
        self.check(model)
        parts = backbone_parts(model.backbone)
        keep = len(parts.blocks) - int(self.n)
        return [parts.embeddings, *parts.blocks[:keep], *(parts.post if self.n == 0 else [])]

    def apply(self, model: ImageClassifier) -> None:
        """Freeze ``model`` in place (also usable without a Trainer)."""
        modules = self.modules_to_freeze(model)
        if modules:
            self.freeze(modules, train_bn=False)

    def freeze_before_training(self, pl_module) -> None:
        self.apply(pl_module.model)

    def finetune_function(self, pl_module, current_epoch: int, optimizer) -> None:
        """Static strategies unfreeze nothing during training."""

    def on_fit_start(self, trainer, pl_module) -> None:
        super().on_fit_start(trainer, pl_module)
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
    """The freeze callback for ``cfg`` (conf/freeze/), checked against ``model`` now."""
    cb = Freeze(cfg.get("name", "backbone"), cfg.get("n"))
    cb.check(model)
    return cb
