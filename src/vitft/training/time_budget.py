"""Fit the epochs and the learning-rate schedule to ``trainer.max_time``.

Lightning's ``max_time`` stops a run wherever it is. A schedule planned for ``max_epochs`` then
ends with the learning rate still high and the weights never annealed: on 2 CPU cores a few
thousand images at 224 px fit a third of the recipe's epochs in its time. After each epoch
(validation included) this callback compares the epochs left with the time left at the mean
time of the last 3 epochs. When they differ it sets ``max_epochs`` to the epochs that fit
(never more than the recipe's) and maps the rest of every schedule onto them, so the run still
decays and ends annealed, also when the machine gets slower or faster mid-run.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, Timer
from torch.optim.lr_scheduler import LambdaLR

log = logging.getLogger(__name__)


def schedule_step(step: int, knots: list[list[int]]) -> float:
    """The planned schedule's step at training step ``step``: the identity up to the first knot,
    then linear between the ``[training step, schedule step]`` knots."""
    if not knots or step <= knots[0][0]:
        return step
    for (s0, p0), (s1, p1) in zip(knots, knots[1:], strict=False):
        if step <= s1:
            return p0 + (step - s0) * (p1 - p0) / max(s1 - s0, 1)
    last_s, last_p = knots[-1]
    return last_p + step - last_s


def remapped(fn: Callable[[int], float], knots: list[list[int]]) -> Callable[[int], float]:
    """``fn`` read at ``schedule_step``. A plain function (a closure), so LambdaLR's state_dict
    leaves it out; the callback's own state rebuilds it on resume."""

    def lr_lambda(step: int) -> float:
        return fn(round(schedule_step(step, knots)))

    return lr_lambda


class TimeBudget(Callback):
    """With ``trainer.max_time``: the epochs that fit in the time left, and the schedule over them.

    ``margin``: the share of the time left kept back, for slower epochs and the last checkpoint.
    Does nothing when not ``enabled``, without ``max_time`` or while every epoch fits.
    """

    def __init__(self, margin: float = 0.1, enabled: bool = True):
        self.margin = margin
        self.enabled = enabled
        self.knots: list[list[int]] = []  # [training step, schedule step]; []: as planned
        self.max_epochs: int | None = None  # the epochs that fit; None: the recipe's
        self._planned: int | None = None  # the recipe's max_epochs
        self._base: dict[int, list[Callable]] = {}  # each scheduler's own lr_lambdas
        self._epoch_s: list[float] = []
        self._t0: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"knots": self.knots, "max_epochs": self.max_epochs, "planned": self._planned}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.knots = [list(k) for k in state_dict.get("knots", [])]
        self.max_epochs = state_dict.get("max_epochs")
        self._planned = state_dict.get("planned")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._planned is None:
            self._planned = trainer.max_epochs
        if self.knots:  # resumed after a plan was made
            self._apply(trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        remaining = timer.time_remaining() if timer is not None else None
        planned = self._planned
        if not self.enabled or self._t0 is None or remaining is None or not planned or planned < 0:
            return
        self._epoch_s.append(time.monotonic() - self._t0)
        done = trainer.current_epoch + 1
        epoch_s = max(statistics.mean(self._epoch_s[-3:]), 1e-6)  # the machine's recent pace
        fit = done + math.floor(max(remaining, 0.0) * (1 - self.margin) / epoch_s)
        fit = int(trainer.strategy.broadcast(min(fit, planned), 0))  # rank 0's clock for all
        if fit == (self.max_epochs or planned):
            return
        steps_per_epoch = max(trainer.global_step // done, 1)
        now = trainer.global_step
        at = round(schedule_step(now, self.knots))
        self.knots = [k for k in self.knots if k[0] < now]
        self.knots += [[now, at], [steps_per_epoch * fit, steps_per_epoch * planned]]
        self.max_epochs = fit
        log.warning(
            "trainer.max_time: %.0f s left at %.0f s an epoch, time for %d of max_epochs=%d "
            "epochs; the rest of the learning-rate schedule is fitted to them",
            remaining, epoch_s, fit, planned,
        )  # fmt: skip
        self._apply(trainer)

    def _apply(self, trainer: L.Trainer) -> None:
        trainer.fit_loop.max_epochs = self.max_epochs
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if not isinstance(scheduler, LambdaLR):
                log.warning("%s is not a LambdaLR: only max_epochs follows max_time", scheduler)
                continue
            base = self._base.setdefault(id(scheduler), list(scheduler.lr_lambdas))
            scheduler.lr_lambdas = [remapped(fn, self.knots) for fn in base]
