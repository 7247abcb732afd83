"""``data.batch_size=auto``: the largest training batch that fits, found by Lightning's Tuner.

The Tuner doubles the batch size from a small start and runs a few steps per size until one runs
out of accelerator memory (or reaches ``data.max_batch_size`` or the size of the training set),
then keeps the largest size that worked. CPU RAM gives no clean out-of-memory error, so on CPU
the search stops at ``data.max_batch_size``: set it to what your machine holds.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L

from vitft.core.errors import VitftError

log = logging.getLogger(__name__)

AUTO = "auto"
START = 2
# The size found, kept in the run dir so that a resumed run continues with the same batches.
FOUND_FILE = "batch_size.json"


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


def auto_batch_size(
    trainer: L.Trainer,
    module: L.LightningModule,
    datamodule: Any,
    max_batch_size: int,
    output_dir: Path,
    resuming: bool,
) -> int:
    """Tune once per run; a resumed run reuses the size its first start found."""
    found_file = Path(output_dir) / FOUND_FILE
    if resuming and found_file.is_file():
        size = int(json.loads(found_file.read_text())["batch_size"])
        follow_eval = datamodule.eval_batch_size == datamodule.batch_size
        datamodule.batch_size = size
        if follow_eval:
            datamodule.eval_batch_size = size
        log.info("data.batch_size=auto: resuming with the batch size found before, %d", size)
        return size
    size = tune_batch_size(trainer, module, datamodule, max_batch_size)
    if trainer.is_global_zero:
        found_file.write_text(json.dumps({"batch_size": size}))
    return size
