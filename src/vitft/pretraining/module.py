"""PretrainModule: the LightningModule around a pretraining method (loss, optimizer, curve).

A method is a plain ``nn.Module`` with ``views`` (image -> tuple of tensors), ``loss(views,
progress)``, ``after_step(progress)`` and ``encoder()``; this module only trains it.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric

from vitft.module import _plain, build_optimizer, build_scheduler


class PretrainModule(L.LightningModule):
    def __init__(self, method: nn.Module, optimizer: dict, scheduler: dict | None = None):
        super().__init__()
        self.method = method
        # plain containers: checkpoints load with weights_only=True
        self.save_hyperparameters({"optimizer": _plain(optimizer), "scheduler": _plain(scheduler)})
        self.epoch_loss = MeanMetric()
        self.loss_curve: list[float] = []  # mean training loss per epoch

    def _progress(self) -> float:
        total = self.trainer.estimated_stepping_batches
        return min(1.0, self.global_step / max(1, total))

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.method.loss(batch, self._progress())
        self.epoch_loss.update(loss.detach())
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch[0]))
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.method.after_step(self._progress())

    def on_train_epoch_end(self) -> None:
        loss = float(self.epoch_loss.compute())
        self.epoch_loss.reset()
        self.loss_curve.append(round(loss, 6))
        self.log("train/epoch_loss", loss)

    def configure_optimizers(self):
        optimizer = build_optimizer(self.hparams.optimizer, self.method)
        return build_scheduler(self.hparams.scheduler, optimizer, self.trainer)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["vitft_pretrain"] = {"method": self.method.name, "loss_curve": self.loss_curve}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.loss_curve = list(checkpoint.get("vitft_pretrain", {}).get("loss_curve", []))
