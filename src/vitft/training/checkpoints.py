"""Checkpoints that survive kills: atomic writes, safe reads, and which one resume=auto picks.

- ``AtomicCheckpointIO``: every checkpoint is written to a temp file in the same directory,
  fsync'ed, then ``os.replace``d over the old one, so ``last.ckpt`` is always either the old or
  the new complete file. (Lightning's own ``_atomic_save`` writes the temp file with
  ``tempfile.mkstemp()`` in /tmp and ``shutil.move``s it: when /tmp is another filesystem, as on
  most clusters, that move is a plain copy into ``last.ckpt`` and a kill mid-copy truncates it.)
- reads go through ``vitft.modelio.checkpoint.read_checkpoint`` (weights_only, refuses pickles).
- ``newest_checkpoint``: what ``resume=auto`` continues from: the complete checkpoint with the
  highest global step among ``checkpoints/last.ckpt``, ``checkpoints/step.ckpt`` and Lightning's
  SLURM ``hpc_ckpt_*.ckpt``; none on a first run.
- ``SpentHpcCheckpoints``: deletes the ``hpc_ckpt_*.ckpt`` once fit has finished (see there).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from vitft.core.errors import VitftError
from vitft.modelio.checkpoint import read_checkpoint

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose writes are temp file + fsync + os.replace in the same directory."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        # Make the rename itself durable (a power cut right after must not lose it).
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class LastCheckpoint(ModelCheckpoint):
    """``checkpoints/last.ckpt`` after every epoch's validation, whatever the monitored metric did.

    (Lightning 2.6's ``ModelCheckpoint(save_last=True)`` only rewrites last.ckpt in a step where
    it also saved a top-k checkpoint, so with ``monitor`` set, last.ckpt stops at the best epoch.)
    """

    def __init__(self, dirpath: str | Path):
        super().__init__(
            dirpath=dirpath,
            filename="last",
            save_top_k=1,
            every_n_epochs=1,
            save_last=False,
            enable_version_counter=False,
        )


class StepCheckpoint(ModelCheckpoint):
    """``checkpoints/step.ckpt`` every N optimizer steps (mid-epoch preemption); inert when null."""

    def __init__(self, dirpath: str | Path, every_n_train_steps: int | None = None):
        n = int(every_n_train_steps or 0)
        super().__init__(
            dirpath=dirpath,
            filename="step",
            every_n_train_steps=n or None,
            every_n_epochs=None if n else 0,
            save_top_k=1 if n else 0,
            save_last=False,
            enable_version_counter=False,
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Not at an epoch's last batch: Lightning resumes such a checkpoint by skipping that
        # epoch's validation and last.ckpt, and a later resume then meets an early-stopping check
        # with no val metrics. The epoch's last.ckpt, written after validation, covers the point.
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


class SpentHpcCheckpoints(Callback):
    """Once fit has finished, delete the run dir's SLURM ``hpc_ckpt_*.ckpt``: they are spent.

    On SIGUSR1 under SLURM, Lightning writes ``<default_root_dir>/hpc_ckpt_N.ckpt`` and requeues
    the job; the next allocation resumes from it (``resume=auto``). But Lightning's
    ``validate``/``test`` called without ``ckpt_path`` also load the newest ``hpc_ckpt_*.ckpt``
    of ``default_root_dir`` by themselves whenever SLURM is detected, so the final validation,
    test and HF export of a requeued run would silently use the weights of the moment of the
    signal instead of the best checkpoint that vitft loaded. When fit has ended normally,
    ``checkpoints/last.ckpt`` holds more training than any of them. A no-op outside SLURM.
    """

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            for path in Path(trainer.default_root_dir).glob("hpc_ckpt_*.ckpt"):
                log.info("training finished: deleting the spent SLURM checkpoint %s", path)
                path.unlink(missing_ok=True)
        trainer.strategy.barrier("vitft_spent_hpc_checkpoints")


def candidates(output_dir: str | Path) -> list[Path]:
    out = Path(output_dir)
    found = [out / "checkpoints" / "last.ckpt", out / "checkpoints" / "step.ckpt"]
    found += sorted(out.glob("hpc_ckpt_*.ckpt"))
    return [p for p in found if p.is_file()]


def newest_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete checkpoint with the most training done (global step, then mtime)."""
    best: tuple[tuple[int, float], Path] | None = None
    for path in candidates(output_dir):
        try:
            step = int(read_checkpoint(path).get("global_step", -1))
        except VitftError as err:
            log.warning("resume=auto: skipping %s: %s", path, err)
            continue
        key = (step, path.stat().st_mtime)
        if best is None or key > best[0]:
            best = (key, path)
    return best[1] if best else None
