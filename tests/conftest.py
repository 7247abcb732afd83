"""Shared fixtures: tiny synthetic folder datasets in tmp_path and composed real configs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict
from PIL import Image

import vitft  # noqa: F401  (registers resolvers)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
CLASSES = ("red", "green", "blue")
# A 2-layer ViT small enough for any CPU test (built from this config, random weights).
TINY_VIT_CONFIG = {
    "model_type": "vit",
    "image_size": 32,
    "patch_size": 8,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}

# Under pytest-xdist each worker gets its share of the cores (torch would take them all in each
# worker, and its subprocesses inherit the setting).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def make_image(label: int, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """An easy, learnable image: one dominant colour channel per class plus noise."""
    arr = rng.integers(0, 90, size=(size, size, 3)).astype(np.uint8)
    arr[..., label % 3] += 150
    return Image.fromarray(arr)


def make_dataset(
    root: Path,
    classes=CLASSES,
    counts: dict[str, int] | None = None,
    seed: int = 0,
    ext: str = ".png",
) -> Path:
    """root/{split}/{class}/img_XXX.png with `counts[split]` images per class."""
    counts = counts or {"train": 8, "val": 3, "test": 3}
    rng = np.random.default_rng(seed)
    for split, n in counts.items():
        for label, cls in enumerate(classes):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                make_image(label, rng).save(d / f"{cls}_{split}_{i:03d}{ext}")
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("tiny_data"))


def make_cfg(output_dir: Path, data_dir: Path | None, *overrides: str) -> DictConfig:
    """The real train config, shrunk for a CPU test, writing into ``output_dir``."""
    base = [
        "model=vit_tiny",
        "freeze=none",
        "trainer=cpu",
        # The same numbers on every CPU (precision=auto picks bf16 where the CPU has it).
        "trainer.precision=32-true",
        "trainer.max_epochs=1",
        "data.num_workers=0",
        "data.batch_size=8",
        "+trainer.enable_model_summary=false",
    ]
    if data_dir is not None:
        base += ["task=folder", f"task.data_dir={data_dir}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[*base, *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        # Feature caches of tests stay in the test's tmp dir, never in the repo.
        cfg.cache.dir = str(Path(output_dir).parent / "feature_cache")
    return cfg


def save_tiny_vit(folder: Path, labels) -> Path:
    """A seeded tiny ViT with a linear head, saved as an HF model dir at ``folder``."""
    import torch

    from vitft.modelio.hf import save_hf
    from vitft.models.classifier import build_model

    torch.manual_seed(0)
    model, processor = build_model({"config": TINY_VIT_CONFIG}, {"name": "linear"}, list(labels))
    return save_hf(model, processor, folder)


MULTI_CLASSES = ("scratch", "stain")


def make_multilabel_manifest(root: Path, n: int = 40, seed: int = 0) -> Path:
    """root/images/*.png + root/labels.csv (path,labels): none, one or both of MULTI_CLASSES,
    each class a bright colour channel of its own, so a tiny model can learn them."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = ["path,labels"]
    for i in range(n):
        present = [c for k, c in enumerate(MULTI_CLASSES) if (i >> k) & 1]
        arr = rng.integers(0, 90, size=(32, 32, 3)).astype(np.uint8)
        for c in present:
            arr[..., MULTI_CLASSES.index(c)] += 150
        Image.fromarray(arr).save(root / "images" / f"img_{i:03d}.png")
        rows.append(f"images/img_{i:03d}.png,{';'.join(present)}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


# Files whose tests start several training processes at once (DDP ranks, SLURM job steps, runs
# killed and resumed two at a time): one xdist worker runs them one after another, so they never
# compete with each other for the cores (their per-run timeouts) or for free ports.
MULTIPROCESS = {"test_kill_resume.py", "test_ddp.py", "test_multinode.py", "test_slurm.py"}


def pytest_collection_modifyitems(config, items) -> None:
    """The long system tests (marked slow) first, so that no xdist worker runs a many-minute test
    alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.hookimpl(optionalhook=True)  # a plain pytest (-p no:xdist) has no such hook
def pytest_xdist_make_scheduler(config, log):
    """Each test file is one unit of work for a worker (its module fixtures run once); the
    multi-process files are one unit together."""
    from xdist.scheduler import LoadScopeScheduling

    class ByFile(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = nodeid.split("::", 1)[0]
            return "multiprocess" if Path(file).name in MULTIPROCESS else file

    return ByFile(config, log)
