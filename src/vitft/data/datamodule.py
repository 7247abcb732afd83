"""FolderDataModule: scanned folder splits -> batches of ``(pixel_values, label)``."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from vitft.data.folder import DatasetSplits, Sample
from vitft.data.images import load_image
from vitft.data.transforms import ImageTransform


class ImageDataset(Dataset):
    def __init__(self, samples: list[Sample], transform: Callable):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[idx]
        return self.transform(load_image(path)), label


class FolderDataModule(L.LightningDataModule):
    def __init__(
        self,
        splits: DatasetSplits,
        processor,
        augment: str | None = "none",
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
    ):
        super().__init__()
        self.splits = splits
        self.classes = splits.classes
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.loader_kwargs = {
            "num_workers": num_workers,
            "pin_memory": pin_memory,
            "persistent_workers": persistent_workers and num_workers > 0,
        }
        self.train_transform = ImageTransform(processor, augment)
        self.eval_transform = ImageTransform(processor, None)

    def dataset(self, split: str) -> ImageDataset:
        transform = self.train_transform if split == "train" else self.eval_transform
        return ImageDataset(self.splits.split(split), transform)

    def train_label_counts(self) -> torch.Tensor:
        return torch.tensor(list(self.splits.counts("train").values()), dtype=torch.float)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        size = self.batch_size if split == "train" else self.eval_batch_size
        return DataLoader(
            self.dataset(split), batch_size=size, shuffle=shuffle, **self.loader_kwargs
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
