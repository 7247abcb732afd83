"""``data.batch_size=auto``: the largest training batch that fits, found by Lightning's Tuner.

The Tuner doubles the batch size from a small start and runs a few steps per size until one runs
out of accelerator memory (or reaches ``data.max_batch_size`` or the size of the training set),
then keeps the largest size that worked. CPU RAM gives no clean out-of-memory error, so on CPU
the search stops at ``data.max_batch_size``: set it to what your machine holds.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L

from vitft.errors import VitftError

log = logging.getLogger(__name__)

AUTO = "auto"
START = 2


def initial_batch_size(batch_size: Any) -> int:
    """The batch size to build the datamodule with: the Tuner's start for ``auto``."""
    if batch_size == AUTO:
        return START
    if not isinstance(batch_size, int) or batch_size < 1:
        raise VitftError(f"data.batch_size={batch_size!r} must be a positive integer or auto")
    return batch_size


def tune_batch_size(
    trainer: L.Trainer, module: L.LightningModule, datamodule: Any, max_batch_size: int
) -> int:
    """Find and set ``datamodule.batch_size`` (and the eval batch size when it followed it)."""
    if trainer.world_size > 1:
        raise VitftError(
            "data.batch_size=auto runs on one device only; set data.batch_size for DDP runs"
        )
    from lightning.pytorch.tuner import Tuner

    follow_eval = datamodule.eval_batch_size == datamodule.batch_size
    found = Tuner(trainer).scale_batch_size(
        module,
        datamodule=datamodule,
        mode="power",
        init_val=START,
        steps_per_trial=3,
        max_val=int(max_batch_size),
    )
    if found is None:  # the Tuner skips itself, e.g. under fast_dev_run
        log.warning("data.batch_size=auto: the batch-size search did not run; using %d", START)
        return datamodule.batch_size
    datamodule.batch_size = int(found)
    if follow_eval:
        datamodule.eval_batch_size = int(found)
    log.info("data.batch_size=auto: using batch size %d", found)
    return int(found)
