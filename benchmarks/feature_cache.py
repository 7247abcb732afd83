"""Head-only training epochs with and without the feature cache (freeze=backbone).

Runs vitft's real ``train()`` three times per model on the same data, seed and config:
uncached (cache=none), cached cold (builds the cache) and cached warm (a second run reusing it).
Epoch time = train + validation of one epoch (Lightning hooks). The speedup compares the median
uncached epoch with the median cached epoch after the first; the one-off build is reported apart.

    python benchmarks/feature_cache.py            # vit_tiny and ViT-Base-shaped
    python benchmarks/feature_cache.py --quick    # vit_tiny on a small subset (CI)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

from _common import (
    DATA,
    compose,
    machine_note,
    median,
    model_overrides,
    set_threads,
    subset_data,
    table,
)
from lightning.pytorch.callbacks import Callback


class EpochTimer(Callback):
    """Wall time of each training epoch (its validation included)."""

    def __init__(self):
        self.times: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.times.append(time.perf_counter() - self._start)


def fit(
    work: Path, data: Path, name: str, epochs: int, cache: list[str], tag: str, views: int
) -> dict:
    """One vitft training run; its per-epoch times, cache build time and accuracy."""
    from omegaconf import open_dict

    from vitft.apps.train import train

    cfg = compose(
        work / tag,
        data,
        *model_overrides(name),
        "freeze=backbone",
        f"trainer.max_epochs={epochs}",
        "callbacks=none",
        "+trainer.enable_checkpointing=false",
        "data.batch_size=16",
        "test=true",
        "seed=0",
        # Head-only training on random-weight backbones needs a larger step than a fine-tune's
        # default to move in a few epochs (the accuracy comparison must learn something).
        "optimizer.lr=3e-2",
        *cache,
        f"cache.views={views}",
        f"cache.dir={work / 'cache'}",
    )
    timer = EpochTimer()
    with open_dict(cfg):
        cfg.callbacks = {}
    import vitft.apps.train as vt

    # The timer rides along with vitft's own callbacks (train() builds them from the config).
    original = vt._instantiate_all
    vt._instantiate_all = lambda c: [*original(c), timer]
    try:
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # Lightning's test-metrics table
            metrics, objects = train(cfg)
        total = time.perf_counter() - start
    finally:
        vt._instantiate_all = original
    dm = objects["datamodule"]
    print(f"{tag}: epochs {[round(t, 3) for t in timer.times]} total {total:.1f}s", flush=True)
    build = sum(c.seconds for c in getattr(dm, "cached", {}).values())
    hits = [c.hit for c in getattr(dm, "cached", {}).values()]
    return {
        "epochs": timer.times,
        "build": build,
        "hit": all(hits) if hits else None,
        "total": total,
        "test_acc": metrics.get("test/acc", float("nan")),
        "val_acc": metrics.get("val/acc", float("nan")),
        "images": len(dm.splits.train) + len(dm.splits.val),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="vit_tiny on a small subset (CI)")
    p.add_argument("--models", default=None, help="comma list of tiny,base")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run")
    p.add_argument("--base-epochs", type=int, default=2, help="uncached ViT-Base epochs")
    p.add_argument("--views", type=int, default=4, help="cache.views (vit_tiny)")
    p.add_argument("--base-views", type=int, default=2, help="cache.views (ViT-Base-shaped)")
    args = p.parse_args()
    models = (args.models or ("tiny" if args.quick else "tiny,base")).split(",")
    epochs = args.epochs or (3 if args.quick else 8)
    set_threads()
    print(machine_note())
    rows, accs, speedups = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = subset_data(work / "data", {"train": 4, "val": 2, "test": 2}) if args.quick else DATA
        for name in models:
            n_uncached = min(epochs, args.base_epochs) if name == "base" else epochs
            v = args.base_views if name == "base" else args.views
            runs = {
                "uncached": fit(work, data, name, n_uncached, ["cache=none"], f"{name}_u", v),
                "cached (cold)": fit(work, data, name, epochs, [], f"{name}_c1", v),
                "cached (warm run)": fit(work, data, name, epochs, [], f"{name}_c2", v),
            }
            base_epoch = median(runs["uncached"]["epochs"])
            for label, r in runs.items():
                # After the first epoch: the first one pays for worker/page-cache warm-up.
                later = r["epochs"][1:] or r["epochs"]
                ep = median(later)
                rows.append(
                    [
                        name,
                        v if label != "uncached" else "-",
                        label,
                        r["images"],
                        len(r["epochs"]),
                        r["build"],
                        r["epochs"][0],
                        ep,
                        base_epoch / ep,
                        r["test_acc"],
                    ]
                )
                if label == "cached (cold)":
                    speedups[name] = base_epoch / ep
            accs.append((name, runs["uncached"]["test_acc"], runs["cached (cold)"]["test_acc"]))
            assert runs["cached (warm run)"]["hit"], "second run did not reuse the cache"
    print()
    print(
        table(
            [
                "model",
                "views",
                "run",
                "train+val imgs",
                "epochs",
                "cache build s",
                "epoch 1 s",
                "median epoch s (after 1st)",
                "speedup vs uncached",
                "test acc",
            ],
            rows,
        )
    )
    print()
    for name, u, c in accs:
        print(f"{name}: test acc uncached {u:.3f} vs cached {c:.3f} (same seed; views differ)")
    key = "base" if "base" in speedups else models[0]
    print(f"RESULT feature_cache {speedups[key]:.1f}")


if __name__ == "__main__":
    main()
