"""``train.py`` that SIGKILLs itself when training reaches global step $VITFT_KILL_AT_STEP.

A real SIGKILL (no handler, no cleanup) at a chosen point, for the kill-and-resume test.
"""

import os
import runpy
import signal
import sys
from pathlib import Path

from lightning.pytorch.callbacks import Callback

import vitft.apps.train

ROOT = Path(__file__).resolve().parents[1]


class KillAt(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


if os.environ.get("VITFT_KILL_AT_STEP"):
    _instantiate_all = vitft.apps.train._instantiate_all
    kill = KillAt(int(os.environ["VITFT_KILL_AT_STEP"]))
    vitft.apps.train._instantiate_all = lambda cfg: [*_instantiate_all(cfg), kill]

sys.argv[0] = str(ROOT / "train.py")
runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
