"""FolderDataModule: scanned folder splits -> batches of ``(pixel_values, label)``."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from vitft.core.hardware import loader_options, worker_start
from vitft.data.folder import DatasetSplits, Sample
from vitft.data.images import load_image
from vitft.data.transforms import ImageTransform
from vitft.training.seeding import draw_seed

log = logging.getLogger(__name__)


class ImageDataset(Dataset):
    """``(prepared image, label)`` per sample.

    Keys are an index, or an ``(index, seed)`` pair from the training sampler: the seed is passed
    on to ``transform`` (the image's augmentation draws from it alone).

    A file that fails to load mid-run (deleted, overwritten, a flaky network share) never kills
    an epoch: the next sample of the same class is used instead, and the failure is logged and
    appended to ``failures_file`` (one line per failure; works from dataloader workers too).
    """

    def __init__(
        self, samples: list[Sample], transform: Callable, failures_file: str | Path | None = None
    ):
        self.samples = samples
        self.transform = transform
        self.failures_file = failures_file

    def __len__(self) -> int:
        return len(self.samples)

    def _record(self, path: Path, err: Exception, used: Path) -> None:
        msg = f"{path}\t{type(err).__name__}: {err}\tused {used} instead"
        log.warning("could not load %s (%s); using %s instead", path, err, used)
        if self.failures_file:
            with open(self.failures_file, "a") as f:
                f.write(msg + "\n")

    def _load(self, path: Path, seed: int | None) -> Any:
        img = load_image(path)
        return self.transform(img) if seed is None else self.transform(img, seed=seed)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, int]:
        idx, seed = key if isinstance(key, tuple) else (key, None)
        path, label = self.samples[idx]
        try:
            return self._load(path, seed), label
        except (OSError, SyntaxError, ValueError) as err:
            n = len(self.samples)
            for k in range(1, n):
                other, other_label = self.samples[(idx + k) % n]
                if other_label != label:
                    continue
                try:
                    item = self._load(other, seed), label
                except (OSError, SyntaxError, ValueError):
                    continue
                self._record(path, err, other)
                return item
            raise


class EpochShuffle(DistributedSampler):
    """The training order: ``(index, sample seed)`` pairs that depend only on (seed, epoch).

    Lightning calls ``set_epoch`` before every epoch, so a resumed run sees the same order and the
    same per-sample seeds (``vitft.training.seeding``) as the same run never
    interrupted. With several
    processes each rank takes its share of the one shuffled order (padded like
    ``DistributedSampler``; being one, Lightning does not wrap it). ``resume_at`` skips the
    samples this rank already trained on in an interrupted epoch.
    """

    def __init__(self, n: int, seed: int = 0, num_replicas: int = 1, rank: int = 0):
        # DistributedSampler.__init__ would need a dataset and an initialised process group.
        self.n, self.seed, self.epoch = n, seed, 0
        self.num_replicas, self.rank = num_replicas, rank
        self.num_samples = math.ceil(n / num_replicas)
        self.resume_at: tuple[int, int] | None = None  # (epoch, samples already trained on)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        order += order[: self.num_samples * self.num_replicas - self.n]
        order = order[self.rank :: self.num_replicas]
        if self.resume_at is not None:
            epoch, done = self.resume_at
            self.resume_at = None
            if epoch == self.epoch:  # the rest of the interrupted epoch, in the same order
                order = order[done:]
        return iter((i, draw_seed(self.seed, self.epoch, i)) for i in order)


class ResumableLoader(DataLoader):
    """The training DataLoader; tells Lightning it resumes mid-epoch (its ``_Stateful`` check).

    The position itself travels in the datamodule's state (``FolderDataModule.state_dict``):
    Lightning hands a loader its saved state only when the loader is built after the checkpoint
    is restored, and it is built before whenever a scheduler asks for
    ``trainer.estimated_stepping_batches`` (ours do), so a loader's own state would be dropped.
    """

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class FolderDataModule(L.LightningDataModule):
    def __init__(
        self,
        splits: DatasetSplits,
        processor,
        augment: str | None = "none",
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int | str = 0,
        pin_memory: bool | str = False,
        persistent_workers: bool = False,
        failures_file: str | Path | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.splits = splits
        self.classes = splits.classes
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.loader_settings = (num_workers, pin_memory, persistent_workers)
        loader_options(*self.loader_settings)  # a bad value fails now, not at the first loader
        self.train_transform = ImageTransform(processor, augment)
        self.eval_transform = ImageTransform(processor, None)
        self.failures_file = failures_file
        self.seed = seed
        self.train_sampler: EpochShuffle | None = None
        self.resume_at: tuple[int, int] | None = None

    def transform(self, split: str) -> ImageTransform:
        return self.train_transform if split == "train" else self.eval_transform

    def dataset(self, split: str) -> ImageDataset:
        """Items ``(prepared image, label)``: the loader's collate runs the processor per batch."""
        return ImageDataset(
            self.splits.split(split), self.transform(split).prepare, self.failures_file
        )

    def train_label_counts(self) -> torch.Tensor:
        return torch.tensor(list(self.splits.counts("train").values()), dtype=torch.float)

    def eval_sampler(self, dataset) -> Sampler | None:
        """Each image exactly once across processes in ``validate``/``test`` of a multi-process run.

        Lightning's default DistributedSampler pads the last batch with repeated images so every
        rank has as many; outside fit no collective runs per step, so ranks may differ by one
        image and the metrics (synchronised by torchmetrics) count every image once. During fit
        Lightning's padding stays (DDP syncs on every forward): up to devices - 1 val images
        are counted twice in the per-epoch val metrics.
        """
        trainer = self.trainer
        if trainer is None or trainer.world_size < 2 or trainer.state.fn == TrainerFn.FITTING:
            return None
        return UnrepeatedDistributedSampler(
            dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
        )

    def shuffled(self, n: int) -> EpochShuffle:
        """The training sampler (kept, so a checkpoint's position can reach it)."""
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        self.train_sampler = EpochShuffle(n, self.seed, world, rank)
        if self.resume_at is not None:  # handed over once
            self.train_sampler.set_epoch(self.resume_at[0])
            self.train_sampler.resume_at, self.resume_at = self.resume_at, None
        return self.train_sampler

    @property
    def loader_kwargs(self) -> dict:
        """num_workers, pin_memory, persistent_workers; ``auto`` follows the trainer's machine."""
        trainer = self.trainer
        if trainer is None:
            return loader_options(*self.loader_settings)
        device = trainer.strategy.root_device.type
        options = loader_options(*self.loader_settings, trainer.num_devices, device)
        return {**options, **worker_start(options["num_workers"])}

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        size = self.batch_size if split == "train" else self.eval_batch_size
        dataset = self.dataset(split)
        kwargs = dict(
            batch_size=size, collate_fn=self.transform(split).collate, **self.loader_kwargs
        )
        if shuffle:
            return ResumableLoader(dataset, sampler=self.shuffled(len(dataset)), **kwargs)
        return DataLoader(dataset, sampler=self.eval_sampler(dataset), **kwargs)

    def features_loader(self, split: str, batch_size: int) -> DataLoader:
        """Every image of ``split`` once, in order, preprocessed as for inference (no
        augmentation), with the training loader's workers: what the OOD fit reads."""
        dataset = ImageDataset(
            self.splits.split(split), self.eval_transform.prepare, self.failures_file
        )
        kwargs = {**self.loader_kwargs, "persistent_workers": False}  # one pass
        return DataLoader(
            dataset, batch_size=batch_size, collate_fn=self.eval_transform.collate, **kwargs
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    # Resume: Lightning saves this in every checkpoint and restores it before training.
    def state_dict(self) -> dict:
        if self.trainer is None:
            return {}
        per_epoch = self.trainer.num_training_batches
        if not 0 < per_epoch < float("inf"):
            return {}
        # The epoch of the next batch and the batches already trained on in it (Lightning's own
        # epoch counter has already moved on when last.ckpt is written, mid-epoch not).
        done = self.trainer.fit_loop.epoch_loop.batch_progress.total.processed
        return {"train_position": list(divmod(int(done), int(per_epoch)))}

    def load_state_dict(self, state: dict) -> None:
        """The epoch and batch that training continues from.

        The epoch is set here, not left to Lightning's ``set_epoch``: on resume Lightning creates
        the loader's iterator before calling it, and with workers the iterator draws its first
        batches' indices (and their augmentation seeds) at once.
        """
        position = state.get("train_position")
        if not position:
            return
        epoch, batches = (int(v) for v in position)
        self.resume_at = (epoch, batches * self.batch_size)
        if self.train_sampler is not None:  # the loader may exist already (see ResumableLoader)
            self.train_sampler.set_epoch(epoch)
            self.train_sampler.resume_at, self.resume_at = self.resume_at, None
