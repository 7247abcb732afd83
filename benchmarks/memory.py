"""Peak memory and step time of training steps: fp32, gradient checkpointing, bf16-mixed,
torch.compile.

Each configuration runs in its own subprocess (so no allocation of one run shows in another):
vitft's ``ClassifierModule`` (full fine-tuning, ``freeze=none``) in a Lightning ``Trainer`` with
``trainer.precision`` as configured, built by ``build_model`` with ``model.gradient_checkpointing``
/ ``model.compile``. Step 1 warms up (allocates gradients and AdamW state); then the process's
peak resident set (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``) is measured over
the timed steps. This is CPU memory as the OS sees it: every torch allocation, weights and
optimizer state included. (tracemalloc would not see torch's allocations.)

The RESULT is the *training* peak: peak RSS minus the RSS of the imported runtime before any
model exists (Python, torch, transformers, Lightning: ~0.5-0.9 GB that no training option can
change), the CPU counterpart of ``torch.cuda.max_memory_allocated``, which likewise leaves out
the CUDA context. The children run with ``MALLOC_MMAP_THRESHOLD_`` fixed at 128 KiB: by default
glibc raises its mmap threshold after large frees and then keeps freed tensors in its heap, so
RSS would count memory torch already released (gradients freed by ``zero_grad``, activations
freed by backward) and the measured peak would depend on allocation history, not on the step.

    python benchmarks/memory.py [--quick] [--configs fp32,checkpointing,bf16,compile]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import machine_note, median, set_threads, table

CONFIGS = {
    "fp32": {"precision": "32-true"},
    "checkpointing": {"precision": "32-true", "gradient_checkpointing": True},
    "bf16-mixed": {"precision": "bf16-mixed"},
    "bf16-mixed + checkpointing": {"precision": "bf16-mixed", "gradient_checkpointing": True},
    "compile": {"precision": "32-true", "compile": True},
    # The same effective batch as two half batches (trainer.accumulate_grad_batches=2).
    "accumulate 2": {"precision": "32-true", "accumulate": 2},
}


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(spec: dict) -> dict:
    """One configuration, in this (fresh) process."""
    import lightning as L
    import torch
    from _common import model_config
    from lightning.pytorch.callbacks import Callback
    from torch.utils.data import DataLoader, TensorDataset

    from vitft.models.classifier import build_model
    from vitft.training.module import ClassifierModule

    set_threads()
    # Python + torch + transformers + Lightning, before any model exists.
    runtime_kb = _status_kb("VmRSS")
    L.seed_everything(0, verbose=False)
    mcfg = {
        "config": model_config(spec["model"]),
        "gradient_checkpointing": spec.get("gradient_checkpointing", False),
        "compile": spec.get("compile", False),
    }
    model, _ = build_model(mcfg, {"name": "linear"}, ["a", "b", "c"])
    size, steps, accumulate = mcfg["config"]["image_size"], spec["steps"], spec.get("accumulate", 1)
    batch = spec["batch"] // accumulate  # the same images per optimizer step
    x = torch.randn(batch * accumulate * (steps + 1), 3, size, size)
    y = torch.randint(0, 3, (len(x),))
    loader = DataLoader(TensorDataset(x, y), batch_size=batch)
    module = ClassifierModule(
        model, optimizer={"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-4}
    )

    class Probe(Callback):
        def __init__(self):
            self.times, self.rest, self.peak = [], None, None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == accumulate:  # after the warm-up step: weights, AdamW state exist
                self.rest = _status_kb("VmRSS")
                Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM)
            if batch_idx % accumulate == 0:
                self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx % accumulate == accumulate - 1:  # an optimizer step is complete
                self.times.append(time.perf_counter() - self.t0)
            if batch_idx >= accumulate:
                self.peak = _status_kb("VmHWM")

    probe = Probe()
    trainer = L.Trainer(
        accelerator="cpu",
        precision=spec["precision"],
        max_steps=steps + 1,
        accumulate_grad_batches=accumulate,
        callbacks=[probe],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=loader)
    return {
        "first_step_s": probe.times[0],
        "step_s": median(probe.times[1:]),
        "peak_mb": probe.peak / 1024,
        "rest_mb": probe.rest / 1024,
        "runtime_mb": runtime_kb / 1024,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="vit_tiny, batch 4, two configs")
    p.add_argument("--model", default=None, choices=["tiny", "base"])
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--steps", type=int, default=1, help="timed steps after the warm-up step")
    p.add_argument("--configs", default=None, help=f"comma list of {list(CONFIGS)}")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print("CHILD " + json.dumps(child(json.loads(args.child))))
        return
    model = args.model or ("tiny" if args.quick else "base")
    batch = args.batch or (4 if args.quick else 16)
    names = (args.configs or ("fp32,checkpointing" if args.quick else ",".join(CONFIGS))).split(",")
    set_threads()
    print(machine_note())
    results = {}
    for name in names:
        spec = {**CONFIGS[name], "model": model, "batch": batch, "steps": args.steps}
        out = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(spec)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore", "MALLOC_MMAP_THRESHOLD_": "131072"},
        )
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("CHILD ")]
        if out.returncode or not line:
            print(out.stdout[-2000:], out.stderr[-4000:])
            raise SystemExit(f"{name}: child failed")
        results[name] = json.loads(line[0][6:])
        print(f"{name}: {results[name]}", flush=True)
    base = results[names[0]]
    rows = [
        [
            name,
            model,
            batch,
            r["rest_mb"],
            r["peak_mb"],
            r["peak_mb"] - r["rest_mb"],
            1 - r["peak_mb"] / base["peak_mb"],
            r["peak_mb"] - r["runtime_mb"],
            1 - (r["peak_mb"] - r["runtime_mb"]) / (base["peak_mb"] - base["runtime_mb"]),
            r["step_s"],
            r["step_s"] / base["step_s"],
            r["first_step_s"],
        ]
        for name, r in results.items()
    ]
    print()
    print(
        table(
            [
                "config",
                "model",
                "batch",
                "resting RSS MB",
                "peak RSS MB (step)",
                "step extra MB",
                "peak reduction",
                "training peak MB",
                "training peak reduction",
                "step s",
                "slowdown",
                "1st step s",
            ],
            rows,
        )
    )
    print(
        "(peak = Linux VmHWM of the process over the timed step(s), one subprocess per config; "
        "training peak = peak minus the RSS of the freshly imported runtime, i.e. weights, "
        "gradients, optimizer state and activations; RESULT = training peak reduction)"
    )
    ckpt = "checkpointing" if "checkpointing" in results else names[-1]
    r, b = results[ckpt], base
    reduction = 1 - (r["peak_mb"] - r["runtime_mb"]) / (b["peak_mb"] - b["runtime_mb"])
    print(f"RESULT memory {reduction:.3f}")


if __name__ == "__main__":
    main()
