"""Every random draw of training as a function of the run's seed and its position in training.

A resumed run must draw what the uninterrupted run drew, whatever happened in between (a restart,
another number of loader workers, a validation pass that consumed random numbers). So no draw
comes from a generator whose state depends on the past of the process:

- augmentation and the feature cache's view: per sample, from ``draw_seed(seed, epoch, index)``
  (the training sampler yields ``(index, sample_seed)`` pairs; see ``EpochShuffle``);
- shuffling: per epoch, from ``(seed, epoch)``;
- dropout, drop-path, MixUp/CutMix (torch's global generator, in the training step): reseeded
  before every training batch from ``(seed, batch number, rank)`` by ``StepSeed``.

The batch number is part of the checkpoint (Lightning's loop progress), so these are the
"generator states in the checkpoint": a checkpoint pins every later draw.
"""

from __future__ import annotations

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback


def draw_seed(*keys: int) -> int:
    """A 63-bit seed mixed from integer keys (SeedSequence: nearby keys, unrelated seeds)."""
    entropy = [int(k) % (1 << 64) for k in keys]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1)


def batch_number(trainer) -> int:
    """Training batches started so far in this run, the current one included (checkpointed)."""
    return int(trainer.fit_loop.epoch_loop.batch_progress.total.ready)


class StepSeed(Callback):
    """Seeds torch's global generator from ``(seed, batch number, rank)`` before each training
    batch, so the step's dropout, drop-path and MixUp/CutMix draws depend on nothing else."""

    def __init__(self, seed: int):
        self.seed = int(seed)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        torch.manual_seed(draw_seed(self.seed, batch_number(trainer), trainer.global_rank))
