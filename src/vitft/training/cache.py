"""Feature cache for frozen backbones (conf/cache/).

With ``freeze=backbone`` every epoch pushes the same images through the same frozen ViT: the
backbone's output never changes, so it is computed once per image (and per augmented view), kept
on disk as a memory-mapped ``.npy`` file and only the head trains on it. Training, checkpoints,
metrics and the HF export stay those of the full model: the datamodule yields ``(features, label)``
batches instead of ``(pixel_values, label)``, and ``ClassifierModule`` sends 2-d batches straight
to the head.

A cache entry is keyed by a hash of everything the features depend on: the backbone's weights and
config, the image processor, the augmentation pipeline, the number of views, the storage dtype and
each image file's identity (path, size, mtime; or its content hash). Change any of them and a new
entry is built; nothing stale is ever read. Entries are written to a temporary folder and renamed
into place when complete, so an interrupted build is never mistaken for a cache hit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vitft.core.errors import VitftError
from vitft.core.hardware import loader_options, worker_start
from vitft.data.folder import Sample
from vitft.data.transforms import ImageTransform
from vitft.training.datamodule import FolderDataModule, ImageDataset, ResumableLoader
from vitft.training.seeding import draw_seed

log = logging.getLogger(__name__)

# Bump when the on-disk layout or the way features are computed changes.
CACHE_FORMAT = 2
DTYPES = ("float16", "float32")
IDENTITIES = ("stat", "content")
BUILD_BATCH = 64  # images per forward pass while building an entry


def use_cache(cache_cfg: Any, freeze_cfg: Any) -> bool:
    """Whether this run trains on cached features: ``cache.enabled`` = auto | true | false.

    Safe only when the backbone never changes during training, i.e. ``freeze=backbone``; ``auto``
    turns it on exactly then, ``true`` insists (and fails clearly when it can't apply).
    """
    enabled = (cache_cfg or {}).get("enabled", "auto")
    frozen = (freeze_cfg or {}).get("name") == "backbone"
    if enabled == "auto":
        return frozen
    if enabled is True:
        if not frozen:
            raise VitftError(
                "cache.enabled=true needs freeze=backbone (cached features are only valid while "
                "the backbone does not train); use cache.enabled=auto or freeze=backbone"
            )
        return True
    if enabled is False or enabled is None:
        return False
    raise VitftError(f"cache.enabled={enabled!r} is unknown; use auto, true or false")


def weights_digest(module: nn.Module) -> str:
    """sha256 of a module's state dict: names, dtypes, shapes and bytes of every tensor."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def file_identity(path: Path, mode: str = "stat") -> list:
    """What says "this is the same image file": path + size + mtime, or path + content hash."""
    path = Path(path)
    if mode == "content":
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return [str(path.resolve()), h.hexdigest()]
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


@dataclass
class CachedSplit:
    """The features of one split: ``features`` is ``(views, images, dim)``, memory-mapped."""

    features: np.ndarray
    labels: np.ndarray
    directory: Path
    hit: bool
    seconds: float = 0.0


class FeatureDataset(Dataset):
    """``(features, label)`` items; training draws one of the precomputed views per image.

    Training keys are ``(index, sample seed)`` pairs (``EpochShuffle``): the view is a function
    of the seed, so it is the same in a resumed run. Plain index keys read view 0.
    Whole batches are read at once (``__getitems__``): one fancy-indexed read of the memmap per
    batch rather than one Python call per image.
    """

    def __init__(self, cached: CachedSplit, random_view: bool = False):
        self.features = cached.features
        self.labels = torch.from_numpy(np.asarray(cached.labels, dtype=np.int64))
        self.random_view = random_view and cached.features.shape[0] > 1

    def __len__(self) -> int:
        return self.features.shape[1]

    def _split(self, keys: list) -> tuple[np.ndarray, np.ndarray]:
        """Image indices and the view read for each."""
        idx = np.array([k[0] if isinstance(k, tuple) else k for k in keys], dtype=np.int64)
        views = np.zeros(len(keys), dtype=np.int64)
        if self.random_view:
            n = self.features.shape[0]
            views[:] = [k[1] % n if isinstance(k, tuple) else 0 for k in keys]
        return idx, views

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        (idx,), (view,) = self._split([key])
        label = self.labels[idx]  # a class index, or a 0/1 row for multi-label data
        return torch.from_numpy(np.array(self.features[view, idx], dtype=np.float32)), (
            int(label) if label.ndim == 0 else label
        )

    def __getitems__(self, keys: list) -> tuple[torch.Tensor, torch.Tensor]:
        idx, views = self._split(keys)
        feats = np.asarray(self.features[views, idx], dtype=np.float32)
        return torch.from_numpy(feats), self.labels[idx]


def _batch(items: Any) -> Any:
    """``__getitems__`` already returns a collated batch."""
    return items


class FeatureCache:
    """Computes, stores and finds backbone features for lists of samples."""

    def __init__(
        self,
        model: nn.Module,
        processor: Any,
        directory: str | Path,
        views: int = 4,
        dtype: str = "float16",
        identity: str = "stat",
        batch_size: int = BUILD_BATCH,
        num_workers: int = 0,
    ):
        if int(views) < 1:
            raise VitftError(f"cache.views={views} must be at least 1")
        if dtype not in DTYPES:
            raise VitftError(f"cache.dtype={dtype!r} is unknown; use one of {list(DTYPES)}")
        if identity not in IDENTITIES:
            raise VitftError(
                f"cache.identity={identity!r} is unknown; use one of {list(IDENTITIES)}"
            )
        self.model = model
        self.processor = processor
        self.directory = Path(directory).expanduser()
        self.views = int(views)
        self.dtype = dtype
        self.identity = identity
        self.batch_size = batch_size
        self.num_workers = num_workers
        self._model_digest: str | None = None

    def model_digest(self) -> str:
        """Hash of the backbone (weights + config); computed once, the backbone is frozen."""
        if self._model_digest is None:
            backbone = self.model.backbone
            h = hashlib.sha256(weights_digest(backbone).encode())
            h.update(backbone.config.to_json_string(use_diff=False).encode())
            self._model_digest = h.hexdigest()
        return self._model_digest

    def key(self, samples: list[Sample], augment: str | None) -> tuple[str, dict]:
        """The cache key of ``samples`` seen through ``augment``, and what went into it."""
        transform = ImageTransform(self.processor, augment)
        views = self.views if transform.augment is not None else 1
        parts = {
            "format": CACHE_FORMAT,
            "model": self.model_digest(),
            "processor": json.loads(self.processor.to_json_string()),
            "augment": augment or "none",
            # The pipeline itself, so a preset whose ops or parameters change is a new key.
            "augment_pipeline": repr(transform.augment),
            "views": views,
            "dtype": self.dtype,
            "identity": self.identity,
        }
        files = [[*file_identity(p, self.identity), y] for p, y in samples]
        h = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
        h.update(json.dumps(files).encode())
        return h.hexdigest()[:32], parts

    def get(
        self,
        samples: list[Sample],
        augment: str | None = None,
        device: torch.device | str | None = None,
    ) -> CachedSplit:
        """The cached features of ``samples`` (built now on a miss)."""
        if not samples:
            raise VitftError("the feature cache got an empty split: there are no images to cache")
        key, parts = self.key(samples, augment)
        entry = self.directory / key
        if (entry / "meta.json").is_file():
            log.info("feature cache hit: %s (%d images)", entry, len(samples))
            return self._load(entry, hit=True)
        start = time.perf_counter()
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=self.directory))
        try:
            self._build(tmp, samples, augment, parts, key, device)
            try:
                os.replace(tmp, entry)
            except OSError:  # another process finished the same entry first: use theirs
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        seconds = time.perf_counter() - start
        log.info("feature cache built: %s (%d images, %.1fs)", entry, len(samples), seconds)
        cached = self._load(entry, hit=False)
        cached.seconds = seconds
        return cached

    @staticmethod
    def _load(entry: Path, hit: bool) -> CachedSplit:
        return CachedSplit(
            features=np.load(entry / "features.npy", mmap_mode="r"),
            labels=np.load(entry / "labels.npy"),
            directory=entry,
            hit=hit,
        )

    @torch.inference_mode()
    def _build(
        self,
        out: Path,
        samples: list[Sample],
        augment: str | None,
        parts: dict,
        key: str,
        device: torch.device | str | None,
    ) -> None:
        backbone = self.model.backbone
        home = next(backbone.parameters()).device
        device = torch.device(device) if device is not None else home
        was_training = backbone.training
        backbone.eval().to(device)
        try:
            features = None
            transform = ImageTransform(self.processor, augment)
            for view in range(parts["views"]):
                # Each view of each image from its own seed: the same whatever the workers.
                keys = list(range(len(samples)))
                if transform.augment is not None:
                    keys = [(i, draw_seed(int(key[:8], 16), view, i)) for i in keys]
                loader = DataLoader(
                    ImageDataset(samples, transform.prepare),
                    sampler=keys,
                    batch_size=self.batch_size,
                    num_workers=self.num_workers,
                    collate_fn=transform.collate,
                    **worker_start(self.num_workers),
                )
                i = 0
                for pixels, _ in loader:
                    feats = self.model.features(pixels.to(device)).float().cpu().numpy()
                    if features is None:
                        shape = (parts["views"], len(samples), feats.shape[1])
                        features = np.lib.format.open_memmap(
                            out / "features.npy", mode="w+", dtype=self.dtype, shape=shape
                        )
                    features[view, i : i + len(feats)] = feats
                    i += len(feats)
            features.flush()
            del features
        finally:
            backbone.train(was_training).to(home)
        np.save(out / "labels.npy", np.array([y for _, y in samples], dtype=np.int64))
        meta = {**parts, "images": len(samples), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        # Written last: its presence marks a complete entry.
        (out / "meta.json").write_text(json.dumps(meta, indent=2, default=str))


class FeatureDataModule(FolderDataModule):
    """A ``FolderDataModule`` whose batches are cached backbone features, not images."""

    def __init__(self, splits, processor, cache: FeatureCache, augment: str | None = "none", **kw):
        super().__init__(splits, processor, augment=augment, **kw)
        self.cache = cache
        self.augment = augment
        self.cached: dict[str, CachedSplit] = {}

    def cached_split(self, split: str) -> CachedSplit:
        if split not in self.cached:
            trainer = getattr(self, "trainer", None)
            device = trainer.strategy.root_device if trainer is not None else None
            augment = self.augment if split == "train" else None
            self.cached[split] = self.cache.get(self.splits.split(split), augment, device)
        return self.cached[split]

    def prepare_data(self) -> None:
        # Lightning calls this in one process per node and holds the others at a barrier until
        # it returns: the entries are built once, and every rank's setup() then finds them.
        self.setup(self.trainer.state.fn.value if self.trainer is not None else None)

    def setup(self, stage: str | None = None) -> None:
        # Build the entries up front, where Lightning expects slow preparation to happen.
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}
        for split in needed.get(stage or "", ()):
            self.cached_split(split)

    def dataset(self, split: str) -> FeatureDataset:
        return FeatureDataset(self.cached_split(split), random_view=split == "train")

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        size = self.batch_size if split == "train" else self.eval_batch_size
        dataset = self.dataset(split)
        # Features are a memmap slice per batch: worker processes would only add overhead.
        if shuffle:
            sampler = self.shuffled(len(dataset))
            return ResumableLoader(dataset, batch_size=size, sampler=sampler, collate_fn=_batch)
        return DataLoader(
            dataset, batch_size=size, sampler=self.eval_sampler(dataset), collate_fn=_batch
        )


def build_cache(cache_cfg: Any, model: nn.Module, processor: Any, data_cfg: Any) -> FeatureCache:
    """The FeatureCache of ``cache_cfg`` (conf/cache/); builds use the data loader settings."""
    # With data.batch_size=auto the eval batch is not known before the Tuner has run; building
    # the cache is inference only, so it uses the cache's own default then.
    eval_batch = data_cfg.eval_batch_size
    return FeatureCache(
        model,
        processor,
        cache_cfg.dir,
        views=cache_cfg.get("views", 4),
        dtype=cache_cfg.get("dtype", "float16"),
        identity=cache_cfg.get("identity", "stat"),
        batch_size=eval_batch if isinstance(eval_batch, int) else BUILD_BATCH,
        num_workers=loader_options(data_cfg.num_workers, False)["num_workers"],
    )
