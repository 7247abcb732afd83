"""What training needs to be right under DDP, kept in one place for every freeze strategy.

- ``keep_unused_frozen``: parameters a classifier never uses (DINOv2's mask token, used only for
  masked-image pretraining) stay frozen; DDP stops on a trainable parameter that gets no gradient.
- ``resync_ddp``: DDP registers the parameters that require grad when it wraps the model, and
  all-reduces only those. A strategy that unfreezes later (freeze_unfreeze, unfreeze_milestones)
  calls this after the trainable set changed: the model is wrapped again, which broadcasts rank
  0's weights and all-reduces the new set's gradients from then on.
"""

from __future__ import annotations

import logging

from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vitft.errors import VitftError

log = logging.getLogger(__name__)

# Names (suffixes) of parameters that image classification never feeds into the loss.
UNUSED_IN_CLASSIFICATION = ("mask_token",)


def keep_unused_frozen(model: nn.Module) -> None:
    for name, p in model.named_parameters():
        if name.endswith(UNUSED_IN_CLASSIFICATION):
            p.requires_grad = False


def trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def check_staged_strategy(trainer, name: str) -> None:
    """Refuse strategies whose wrapper can't take parameters unfrozen after it was built."""
    strategy = trainer.strategy
    if isinstance(strategy, (DDPStrategy, SingleDeviceStrategy)) or trainer.world_size == 1:
        return
    raise VitftError(
        f"freeze={name} unfreezes parameters during training, which "
        f"{type(strategy).__name__} cannot follow; use trainer.strategy=ddp or a static freeze"
    )


def resync_ddp(trainer) -> None:
    """Wrap the module in a new DistributedDataParallel for its current trainable parameters."""
    strategy = trainer.strategy
    if not isinstance(strategy, DDPStrategy) or not isinstance(
        strategy.model, DistributedDataParallel
    ):
        return
    strategy.model = strategy.model.module  # the LightningModule, as configure_ddp expects it
    strategy.configure_ddp()
    log.info("DDP: rewrapped the model for its new trainable parameters (rank 0's weights)")
