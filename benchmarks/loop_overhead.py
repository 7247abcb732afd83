"""vitft's training loop vs a plain hand-written PyTorch loop: same model, batch and data.

vitft side: ``ClassifierModule`` in the Lightning ``Trainer`` built from conf/trainer (fp32,
gradient clipping 1.0, torchmetrics and logging per step; no progress bar, checkpoints or logger
files, no validation). Plain side: forward, loss, backward, the same gradient clipping,
optimizer (vitft's parameter groups) and LR schedule step. Both iterate the same ``DataLoader``
over the same pre-processed images (so image decoding, measured in data_pipeline.py, is not part
of either loop). A/B epochs are interleaved; throughput is images / median epoch time, first
epoch of each fit left out.

    python benchmarks/loop_overhead.py [--quick]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from _common import (
    DATA,
    compose,
    cpu_flags,
    machine_note,
    median,
    model_overrides,
    set_threads,
    sync,
    table,
    write_results,
)
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset


class EpochTimer(Callback):
    def __init__(self):
        self.times: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module):
        sync()
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        sync()
        self.times.append(time.perf_counter() - self._start)


def images(cfg, processor, repeat: int, limit: int | None) -> TensorDataset:
    from vitft.data.datamodule import ImageDataset
    from vitft.data.folder import scan_dataset
    from vitft.data.transforms import ImageTransform

    splits = scan_dataset(cfg.data.data_dir, cfg.data.classes)
    samples = splits.train[:limit] if limit else splits.train
    ds = ImageDataset(samples, ImageTransform(processor, None))
    xs, ys = zip(*(ds[i] for i in range(len(ds))), strict=True)
    x, y = torch.stack(xs), torch.tensor(ys)
    return TensorDataset(x.repeat(repeat, 1, 1, 1), y.repeat(repeat))


def vitft_fit(cfg, model, loader: DataLoader, epochs: int) -> list[float]:
    from hydra.utils import instantiate

    from vitft.module import ClassifierModule

    module = ClassifierModule(
        model, optimizer=cfg.optimizer, scheduler=cfg.scheduler, loss=cfg.loss
    )
    timer = EpochTimer()
    trainer_cfg = copy.deepcopy(cfg.trainer)
    trainer_cfg.max_epochs = epochs
    trainer = instantiate(
        trainer_cfg,
        callbacks=[timer],
        logger=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, train_dataloaders=loader)
    return timer.times


def plain_fit(
    cfg, model, loader: DataLoader, epochs: int, device: str = "cpu", precision: str = "32-true"
) -> list[float]:
    """The hand-written loop; ``precision`` bf16-mixed autocasts like Lightning's plugin."""
    from hydra.utils import instantiate

    from vitft.module import build_optimizer

    optimizer = build_optimizer(cfg.optimizer, model)  # the same param groups as vitft
    total = epochs * len(loader)
    schedule = instantiate(cfg.scheduler.schedule)
    scheduler = schedule(optimizer=optimizer, num_warmup_steps=0, num_training_steps=total)
    criterion = torch.nn.CrossEntropyLoss()
    clip = cfg.trainer.gradient_clip_val
    model.to(device).train()
    bf16 = precision == "bf16-mixed"
    times = []
    for _ in range(epochs):
        sync()
        start = time.perf_counter()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(torch.device(device).type, torch.bfloat16, enabled=bf16):
                loss = criterion(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            scheduler.step()
        sync()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--model", default="tiny", choices=["tiny", "base"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeat", type=int, default=None, help="copies of the train file list")
    p.add_argument("--epochs", type=int, default=None, help="epochs per fit (first one dropped)")
    p.add_argument("--reps", type=int, default=None, help="interleaved A/B fits")
    args = p.parse_args()
    import lightning as L

    from vitft.models.classifier import build_model

    threads = set_threads()
    print(machine_note())
    print(cpu_flags())
    repeat = args.repeat or (1 if args.quick else 4)
    epochs = args.epochs or (2 if args.quick else 4)
    reps = args.reps or (1 if args.quick else 3)
    cfg = compose(DATA / "..", DATA, *model_overrides(args.model), "freeze=none")
    _, processor = build_model(cfg.model, cfg.head, list(cfg.data.classes))
    data = images(cfg, processor, repeat, 16 if args.quick else None)
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=True)

    def fresh():
        L.seed_everything(0, verbose=False)
        return build_model(cfg.model, cfg.head, list(cfg.data.classes))[0]

    results: dict[str, list[float]] = {"plain PyTorch": [], "vitft (Lightning)": []}
    for _ in range(reps):  # interleaved: load on the shared machine hits both sides alike
        results["plain PyTorch"] += plain_fit(cfg, fresh(), loader, epochs)[1:]
        results["vitft (Lightning)"] += vitft_fit(cfg, fresh(), loader, epochs)[1:]
    n = len(data)
    plain = n / median(results["plain PyTorch"])
    rows = []
    for name, times in results.items():
        ips = n / median(times)
        rows.append(
            [name, args.model, args.batch_size, n, len(times), median(times), ips, ips / plain]
        )
    headers = [
        "loop",
        "model",
        "batch",
        "images/epoch",
        "epochs timed",
        "median epoch s",
        "images/s",
        "ratio vs plain",
    ]
    print()
    print(table(headers, rows))
    print(f"wrote {write_results('loop_overhead', headers, rows)}")
    print(f"(torch threads={threads}; A/B fits interleaved {reps}x, first epoch of each dropped)")
    print(f"RESULT loop_overhead {rows[1][6] / plain:.3f}")


if __name__ == "__main__":
    main()
