"""One short run per fine-tuning strategy and per backbone on the sample data.

Prints a table (trainable params, median epoch time, val accuracy of the best epoch) and ends with
`RESULT strategies <n runs>`. Tiny random-init backbones: the accuracy column compares strategies
on equal footing, it is not what pre-trained weights reach.

    python benchmarks/strategies.py [--epochs 8] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import Callback
from omegaconf import open_dict

import vitft  # noqa: F401
from vitft.apps.train import train

ROOT = Path(__file__).resolve().parents[1]
RUNS = [
    ("vit_tiny", "none", []),
    ("vit_tiny", "backbone", []),
    ("vit_tiny", "last_n", ["freeze.n=2"]),
    ("vit_tiny", "bitfit", []),
    ("vit_tiny", "lora", ["freeze.lora.r=8"]),
    ("vit_tiny", "freeze_unfreeze", ["freeze.unfreeze_epoch=2"]),
    ("vit_tiny", "unfreeze_milestones", ["freeze.milestones=[2,4]", "freeze.n=2"]),
    ("vit_tiny", "none", ["optimizer.layer_decay=0.75"]),
    ("deit_tiny", "none", []),
    ("swin_tiny", "none", []),
    ("convnext_tiny", "none", []),
    ("mobilevit_tiny", "none", []),
    ("dinov2_tiny", "none", []),
]


class EpochTimer(Callback):
    def __init__(self):
        self.times: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self._t = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.times.append(time.perf_counter() - self._t)


def run(model: str, freeze: str, extra: list[str], epochs: int, out: Path) -> dict:
    overrides = [
        f"model={model}",
        f"freeze={freeze}",
        "task=defect",
        "trainer=cpu",
        f"trainer.max_epochs={epochs}",
        "data.batch_size=16",
        "data.num_workers=0",
        "optimizer.lr=3e-3",
        "callbacks.early_stopping.patience=1000",
        "callbacks.progress_bar.refresh_rate=0",
        "+trainer.enable_model_summary=false",
        "logger=csv",
        *extra,
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.callbacks.epoch_timer = {"_target_": f"{__name__}.EpochTimer"}
    metrics, objects = train(cfg)
    timer = next(c for c in objects["trainer"].callbacks if isinstance(c, EpochTimer))
    params = objects["module"].param_counts
    return {
        "trainable": params["trainable"],
        "total": params["total"],
        "epoch_s": statistics.median(timer.times),
        "val_acc": metrics["val/acc"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="2 epochs, 3 runs (CI)")
    args = parser.parse_args()
    runs = RUNS[:1] + RUNS[4:5] + RUNS[9:10] if args.quick else RUNS
    epochs = 2 if args.quick else args.epochs
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (model, freeze, extra) in enumerate(runs):
            r = run(model, freeze, extra, epochs, Path(tmp) / str(i))
            rows.append((model, freeze + (" " + " ".join(extra) if extra else ""), r))
    print(f"\n{epochs} epochs on data/defect (120 train / 45 val images), 2-core CPU\n")
    print("| backbone | strategy | trainable / total params | epoch s (median) | val acc |")
    print("|---|---|---|---|---|")
    for model, strategy, r in rows:
        print(
            f"| {model} | {strategy} | {r['trainable']:,} / {r['total']:,} | "
            f"{r['epoch_s']:.2f} | {r['val_acc']:.3f} |"
        )
    print(f"RESULT strategies {len(rows)}")


if __name__ == "__main__":
    main()
