"""Feature cache (training.cache): hits, misses, invalidation, and that cached training is the same
training. Budget: ~30 s."""

from __future__ import annotations

import json
import os

import lightning as L
import numpy as np
import pytest
import torch

from tests.conftest import TINY_VIT_CONFIG, make_cfg, make_dataset
from vitft.apps.train import train
from vitft.core.errors import VitftError
from vitft.data.folder import scan_dataset
from vitft.data.images import load_image
from vitft.data.transforms import ImageTransform
from vitft.modelio.hf import load_model
from vitft.models.classifier import build_model
from vitft.training.cache import FeatureCache, FeatureDataModule, FeatureDataset, use_cache
from vitft.training.datamodule import FolderDataModule
from vitft.training.module import ClassifierModule
from vitft.training.seeding import draw_seed

SMALL_VIT = {"config": TINY_VIT_CONFIG}


@pytest.fixture
def setup(tmp_path):
    data = make_dataset(tmp_path / "data", counts={"train": 4, "val": 2, "test": 2})
    splits = scan_dataset(data)
    L.seed_everything(0)
    model, processor = build_model(SMALL_VIT, {"name": "linear"}, splits.classes)
    cache = FeatureCache(model, processor, tmp_path / "cache", views=3, dtype="float32")
    return splits, model, processor, cache


def test_use_cache_only_where_safe():
    assert use_cache({"enabled": "auto"}, {"name": "backbone"})
    assert not use_cache({"enabled": "auto"}, {"name": "none"})
    assert not use_cache({"enabled": "auto"}, {"name": "last_n", "n": 2})
    assert not use_cache({"enabled": False}, {"name": "backbone"})
    with pytest.raises(VitftError, match="freeze=backbone"):
        use_cache({"enabled": True}, {"name": "none"})
    with pytest.raises(VitftError, match="cache.enabled"):
        use_cache({"enabled": "sometimes"}, {"name": "backbone"})
    with pytest.raises(VitftError, match="cache.views"):
        FeatureCache(None, None, "/tmp/x", views=0)


def test_miss_then_hit_with_identical_features(setup):
    splits, model, _, cache = setup
    first = cache.get(splits.train, "industrial")
    assert not first.hit and first.features.shape == (3, len(splits.train), 32)
    assert isinstance(first.features, np.memmap)
    again = cache.get(splits.train, "industrial")
    assert again.hit and again.directory == first.directory
    np.testing.assert_array_equal(np.asarray(again.features), np.asarray(first.features))
    # Augmented views really differ; without augmentation there is one view.
    assert not np.allclose(first.features[0], first.features[1])
    assert cache.get(splits.val, None).features.shape[0] == 1
    meta = json.loads((first.directory / "meta.json").read_text())
    assert meta["augment"] == "industrial" and meta["views"] == 3
    # No temporary build folders are left behind.
    assert sorted(p.name for p in cache.directory.iterdir() if p.name.startswith(".")) == []


def test_invalidation_never_reuses_stale_features(setup, tmp_path):
    splits, model, processor, cache = setup
    entry = cache.get(splits.train, "light").directory

    def fresh(**kw) -> FeatureCache:
        args = {"views": 3, "dtype": "float32"} | kw
        return FeatureCache(
            kw.pop("model", model), kw.pop("processor", processor), cache.directory, **args
        )

    # Different augmentation preset, views or dtype.
    assert not cache.get(splits.train, "industrial").hit
    assert (
        not FeatureCache(model, processor, cache.directory, views=2, dtype="float32")
        .get(splits.train, "light")
        .hit
    )
    assert (
        not FeatureCache(model, processor, cache.directory, views=3).get(splits.train, "light").hit
    )
    # Different preprocessing.
    other = type(processor).from_dict({**processor.to_dict(), "image_mean": [0.4, 0.4, 0.4]})
    assert (
        not FeatureCache(model, other, cache.directory, views=3, dtype="float32")
        .get(splits.train, "light")
        .hit
    )
    # Different model weights (one parameter nudged).
    changed, _ = build_model(SMALL_VIT, {"name": "linear"}, splits.classes)
    changed.load_state_dict(model.state_dict())
    with torch.no_grad():
        changed.backbone.vit.layernorm.bias.add_(1e-3)
    assert (
        not FeatureCache(changed, processor, cache.directory, views=3, dtype="float32")
        .get(splits.train, "light")
        .hit
    )
    # A retrained head alone does not change the backbone's features: still a hit.
    with torch.no_grad():
        changed.load_state_dict(model.state_dict())
        changed.head.fc.weight.add_(1.0)
    assert (
        FeatureCache(changed, processor, cache.directory, views=3, dtype="float32")
        .get(splits.train, "light")
        .hit
    )
    # A changed image file (new content, new mtime).
    path = splits.train[0][0]
    stat = path.stat()
    load_image(path).rotate(90).save(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    miss = cache.get(splits.train, "light")
    assert not miss.hit and miss.directory != entry


def test_content_identity_sees_changes_that_keep_size_and_mtime(setup, tmp_path):
    _, model, processor, _ = setup
    # BMP: uncompressed, so a changed pixel keeps the file size.
    splits = scan_dataset(
        make_dataset(tmp_path / "bmp", counts={"train": 1, "val": 1, "test": 1}, ext=".bmp")
    )
    cache = FeatureCache(model, processor, tmp_path / "cache", views=1, identity="content")
    cache.get(splits.val, None)
    path = splits.val[0][0]
    stat = path.stat()
    raw = bytearray(path.read_bytes())
    raw[-20] ^= 0xFF
    path.write_bytes(bytes(raw))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime
    assert not cache.get(splits.val, None).hit


def test_cached_and_uncached_batches_give_the_same_logits(setup):
    splits, model, processor, cache = setup
    module = ClassifierModule(model, optimizer={"_target_": "torch.optim.SGD", "lr": 0.1})
    module.eval()
    kw = {"augment": "none", "batch_size": 4, "eval_batch_size": 4}
    images = FolderDataModule(splits, processor, **kw).val_dataloader()
    features = FeatureDataModule(splits, processor, cache, **kw).val_dataloader()
    with torch.no_grad():
        for (x, y), (f, fy) in zip(images, features, strict=True):
            assert x.ndim == 4 and f.ndim == 2
            assert torch.equal(y, fy)
            torch.testing.assert_close(module(f), module(x), rtol=1e-4, atol=1e-5)


def test_random_view_per_epoch(setup):
    splits, _, _, cache = setup
    ds = FeatureDataset(cache.get(splits.train, "industrial"), random_view=True)
    # Training keys are (index, sample seed) pairs; each epoch's seeds pick other views.
    epochs = [[(i, draw_seed(0, epoch, i)) for i in range(len(ds))] for epoch in range(4)]
    batches = [ds.__getitems__(keys)[0] for keys in epochs]
    assert any(not torch.equal(batches[0], b) for b in batches[1:])
    assert torch.equal(ds.__getitems__(epochs[1])[0], batches[1])  # a function of the seeds
    x, y = ds[0]
    assert x.shape == (32,) and isinstance(y, int)
    assert torch.equal(ds[epochs[2][0]][0], batches[2][0])


def test_train_uses_cache_and_exports_the_full_model(tmp_path):
    data = make_dataset(tmp_path / "data", counts={"train": 4, "val": 2, "test": 2})
    cfg = make_cfg(tmp_path / "run", data, "freeze=backbone", "trainer.max_epochs=2")
    metrics, objects = train(cfg)
    dm = objects["datamodule"]
    assert isinstance(dm, FeatureDataModule)
    assert {s: c.hit for s, c in dm.cached.items()} == {"train": False, "val": False, "test": False}
    assert objects["summary"]["global_step"] == 2 * 2  # 12 images, batch 8, 2 epochs
    # The export is the whole model: it classifies images, like the module on features.
    exported, processor = load_model(tmp_path / "run" / "model")
    module = objects["module"].eval()
    path, _ = dm.splits.test[0]
    pixels = ImageTransform(processor)(load_image(path))[None]
    with torch.no_grad():
        torch.testing.assert_close(exported(pixels), module(pixels), rtol=1e-4, atol=1e-5)
        feats = torch.from_numpy(np.asarray(dm.cached["test"].features[0, :1], dtype=np.float32))
        # float16 storage (the default) rounds features: logits agree to fp16 precision.
        torch.testing.assert_close(module(feats), exported(pixels), rtol=1e-2, atol=1e-2)
    # A second run reuses every entry.
    _, again = train(make_cfg(tmp_path / "run2", data, "freeze=backbone", "debug=fdr"))
    assert all(c.hit for c in again["datamodule"].cached.values())


def test_prepare_data_builds_the_entries_once_for_every_rank(setup, tmp_path):
    # Lightning runs prepare_data in one process per node, the others wait at a barrier; their
    # setup() must then find complete entries instead of building their own.
    from types import SimpleNamespace

    from lightning.pytorch.trainer.states import TrainerFn

    splits, model, processor, _ = setup
    trainer = SimpleNamespace(
        state=SimpleNamespace(fn=TrainerFn.FITTING),
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
    )
    cache = FeatureCache(model, processor, tmp_path / "cache", views=1)
    rank0 = FeatureDataModule(splits, processor, cache)
    rank0.trainer = trainer
    rank0.prepare_data()
    assert {s: c.hit for s, c in rank0.cached.items()} == {"train": False, "val": False}
    rank1 = FeatureDataModule(splits, processor, cache)
    rank1.trainer = trainer
    rank1.setup("fit")
    assert {s: c.hit for s, c in rank1.cached.items()} == {"train": True, "val": True}
