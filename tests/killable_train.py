"""``train.py`` that SIGKILLs itself at a chosen point, and records the weights after every step.

- ``VITFT_KILL_AT_STEP=N``: SIGKILL when training is about to run the batch after global step N.
- ``VITFT_KILL_IN_VAL=E``: SIGKILL in the middle of epoch E's validation (during fit).
- ``VITFT_SNAPSHOTS=dir``: rank 0 saves the model's state dict to ``dir/step_<global step>.pt``
  after every optimizer step (so each stretch of a resumed run can be compared with a run never
  killed, step by step).

A real SIGKILL (no handler, no cleanup) of the whole process group: under DDP every rank and
every loader worker dies at once, as when a node is lost. The test starts each run in its own
session, so the group is exactly this run.
"""

import os
import runpy
import signal
import sys
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

import vitft.apps.train

ROOT = Path(__file__).resolve().parents[1]


def _die() -> None:
    os.killpg(os.getpgrp(), signal.SIGKILL)


class KillAt(Callback):
    def __init__(self, step: int | None, val_epoch: int | None):
        self.step, self.val_epoch = step, val_epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            _die()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, *args) -> None:
        fitting = trainer.state.fn == "fit"
        if fitting and trainer.current_epoch == self.val_epoch and batch_idx == 1:
            _die()


class Snapshots(Callback):
    def __init__(self, directory: str):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.is_global_zero:
            state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
            torch.save(state, self.directory / f"step_{trainer.global_step}.pt")


def _int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


if __name__ == "__main__":  # loader workers started by forkserver import this module
    extra: list[Callback] = []
    if _int("VITFT_KILL_AT_STEP") is not None or _int("VITFT_KILL_IN_VAL") is not None:
        extra.append(KillAt(_int("VITFT_KILL_AT_STEP"), _int("VITFT_KILL_IN_VAL")))
    if os.environ.get("VITFT_SNAPSHOTS"):
        extra.append(Snapshots(os.environ["VITFT_SNAPSHOTS"]))
    if extra:
        _instantiate_all = vitft.apps.train._instantiate_all
        vitft.apps.train._instantiate_all = lambda cfg: [*_instantiate_all(cfg), *extra]

    sys.argv[0] = str(ROOT / "train.py")
    runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
