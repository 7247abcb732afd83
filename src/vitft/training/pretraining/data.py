"""Unlabelled images for pretraining: every image under one or more roots, labels ignored.

Class folders, split folders and flat folders all work: the roots are walked recursively, and
hidden or junk entries are skipped by the same rules as the labelled folder scan.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vitft.core.errors import VitftError
from vitft.core.hardware import worker_start
from vitft.data import doctor
from vitft.data.folder import _is_hidden_or_junk, list_images
from vitft.data.images import load_image
from vitft.training.datamodule import EpochShuffle

log = logging.getLogger(__name__)


def find_images(roots: str | Sequence[str]) -> list[Path]:
    """Every image file under ``roots`` (a folder or a list of folders), sorted, no duplicates."""
    roots = [roots] if isinstance(roots, str | Path) else list(roots)
    if not roots:
        raise VitftError("data.roots is empty: give one or more folders of images")
    found: set[Path] = set()
    for root in roots:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise VitftError(
                f"data.roots: {root} is not a folder. Give folders of images, e.g. "
                "data.roots=[/data/line3/unlabelled]"
            )
        for here, dirs, _ in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not _is_hidden_or_junk(d))
            found.update(p.resolve() for p in list_images(Path(here))[0])
    if not found:
        raise VitftError(f"data.roots={[str(r) for r in roots]} hold no images")
    return sorted(found)


def screen(paths: list[Path], output_dir: Path, check: str = "header") -> list[Path]:
    """Leave out files that are not usable images; list them in ``bad_files.json``."""
    if check == "off":
        return paths
    checks = doctor.inspect_files(paths, decode=check == "decode")
    bad = [fc for fc in checks if fc.problem]
    if bad:
        (output_dir / "bad_files.json").write_text(
            json.dumps([{"path": fc.path, "problem": fc.problem} for fc in bad], indent=2)
        )
        log.warning(
            "%d of %d files are not usable images and are left out (listed in %s), e.g. %s",
            len(bad),
            len(paths),
            output_dir / "bad_files.json",
            ", ".join(str(fc.path) for fc in bad[:3]),
        )
    good = {Path(fc.path) for fc in checks if not fc.problem}
    return [p for p in paths if p in good]


class ViewsDataset(Dataset):
    """The views a pretraining method makes of each image (a tuple of tensors)."""

    def __init__(self, paths: list[Path], views: Callable):
        self.paths, self.views = paths, views

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, ...]:
        # The sampler hands (index, seed): the views depend on the seed, not on the worker or a
        # restart, so a resumed pretraining run draws the same crops.
        idx, seed = key if isinstance(key, tuple) else (key, None)
        image = load_image(self.paths[idx])
        if seed is None:
            return tuple(self.views(image))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            return tuple(self.views(image))


def collate_views(items: list[tuple[torch.Tensor, ...]]) -> list[torch.Tensor]:
    """Per view, a batch: ``[(N, 3, H, W), ...]``."""
    return [torch.stack(v) for v in zip(*items, strict=True)]


class UnlabelledDataModule(L.LightningDataModule):
    """Shuffled batches of views; the order depends only on (seed, epoch), so resume repeats it."""

    def __init__(
        self,
        paths: list[Path],
        views: Callable,
        batch_size: int = 64,
        num_workers: int = 2,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        seed: int = 0,
    ):
        super().__init__()
        self.dataset = ViewsDataset(paths, views)
        self.batch_size, self.num_workers, self.seed = int(batch_size), num_workers, seed
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.dataset,
            batch_size=min(self.batch_size, len(self.dataset)),
            sampler=EpochShuffle(len(self.dataset), self.seed),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            collate_fn=collate_views,
            drop_last=len(self.dataset) > self.batch_size,
            **worker_start(self.num_workers),
        )
