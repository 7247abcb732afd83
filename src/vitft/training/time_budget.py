"""Fit the epochs and the learning-rate schedule to ``trainer.max_time``.

Lightning's ``max_time`` stops a run wherever it is. A schedule planned for ``max_epochs`` then
ends with the learning rate still high and the weights never annealed: on 2 CPU cores a few
thousand images at 224 px fit a third of the recipe's epochs in its time. After the first epoch
(validation included) this callback measures an epoch, and when the epochs left do not fit in the
time left it lowers ``max_epochs`` to what fits and stretches the rest of every schedule over
those epochs, so the run still warms up, decays and ends annealed.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, Timer
from torch.optim.lr_scheduler import LambdaLR

log = logging.getLogger(__name__)


def stretched(fn: Callable[[int], float], start: int, old_end: int, new_end: int) -> Callable:
    """``fn`` as it is up to step ``start``, then its steps ``start..old_end`` over ``start..new_end``.

    A plain function (a closure), so LambdaLR's state_dict leaves it out; the callback's own
    state re-applies it on resume.
    """
    ratio = (old_end - start) / max(new_end - start, 1)

    def lr_lambda(step: int) -> float:
        return fn(step if step <= start else start + round((step - start) * ratio))

    return lr_lambda


class TimeBudget(Callback):
    """With ``trainer.max_time``: after the first epoch, the epochs that fit, and the schedule over them.

    ``margin``: the share of the time left kept back, for slower epochs and the final checkpoint.
    Does nothing without ``max_time`` or when every epoch fits.
    """

    def __init__(self, margin: float = 0.1):
        self.margin = margin
        self.plan: dict[str, int] | None = None  # {} when every epoch fits
        self._epoch_t0: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"plan": self.plan}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.plan = state_dict.get("plan")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.plan:  # resumed after the plan was made
            self._apply(trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_t0 = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.plan is not None or self._epoch_t0 is None:
            return
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        remaining = timer.time_remaining() if timer is not None else None
        if remaining is None or trainer.max_epochs is None or trainer.max_epochs < 0:
            self.plan = {}
            return
        done = trainer.current_epoch + 1
        epoch_s = time.monotonic() - self._epoch_t0
        fit = done + math.floor(max(remaining, 0) * (1 - self.margin) / max(epoch_s, 1e-6))
        fit = int(trainer.strategy.broadcast(fit, 0))  # every rank follows rank 0's clock
        if fit >= trainer.max_epochs:
            self.plan = {}
            return
        steps_per_epoch = max(trainer.global_step // done, 1)
        self.plan = {
            "max_epochs": max(fit, done + 1),
            "start": trainer.global_step,
            "old_end": steps_per_epoch * trainer.max_epochs,
            "new_end": steps_per_epoch * max(fit, done + 1),
        }
        log.warning(
            "trainer.max_time leaves time for %d of max_epochs=%d epochs (%.0f s each): "
            "training %d epochs, the learning-rate schedule stretched over them",
            fit, trainer.max_epochs, epoch_s, self.plan["max_epochs"],
        )  # fmt: skip
        self._apply(trainer)

    def _apply(self, trainer: L.Trainer) -> None:
        plan = self.plan
        trainer.fit_loop.max_epochs = plan["max_epochs"]
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if not isinstance(scheduler, LambdaLR):
                log.warning("%s is not a LambdaLR: only max_epochs follows max_time", scheduler)
                continue
            scheduler.lr_lambdas = [
                stretched(fn, plan["start"], plan["old_end"], plan["new_end"])
                for fn in scheduler.lr_lambdas
            ]
