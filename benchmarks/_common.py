"""Shared helpers of the benchmark scripts: models, data, configs, timing and tables.

Every script compares its A and B side by side in one process run (or in one subprocess per
configuration where peak memory is measured), reports medians and ratios, and ends with one line
``RESULT <name> <ratio>``.
"""

from __future__ import annotations

import logging
import os
import shutil
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # this checkout's vitft, not some other installed copy
os.environ.setdefault("WANDB_MODE", "disabled")
warnings.filterwarnings("ignore")
logging.getLogger("lightning").setLevel(logging.ERROR)
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

DATA = ROOT / "data" / "defect"


def set_threads() -> int:
    """torch intra-op threads for a benchmark: VITFT_BENCH_THREADS, default 1.

    On a shared 2-core machine two threads per process oversubscribe the cores and small per-image
    tensor ops get several times slower while they wait for a descheduled thread; one thread
    measures the code, not the contention. Both sides of every comparison use the same setting.
    """
    import torch

    n = int(os.environ.get("VITFT_BENCH_THREADS", "1"))
    torch.set_num_threads(n)
    return n


CONF = ROOT / "conf"

# ViTConfig defaults = ViT-Base/16 at 224 px (86M parameters); random weights are fine for speed.
VIT_BASE = {
    "model_type": "vit",
    "image_size": 224,
    "patch_size": 16,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}


def model_overrides(name: str) -> list[str]:
    """Hydra overrides for ``tiny`` (conf/model/vit_tiny) or ``base`` (ViT-Base-shaped)."""
    if name == "tiny":
        return ["model=vit_tiny"]
    return ["model=vit_tiny", "model.name=vit_base_shaped"] + [
        f"model.config.{k}={v}" for k, v in VIT_BASE.items()
    ]


def model_config(name: str) -> dict:
    from omegaconf import OmegaConf

    if name == "base":
        return dict(VIT_BASE)
    return dict(OmegaConf.load(CONF / "model" / "vit_tiny.yaml").config)


def subset_data(dst: Path, per_class: dict[str, int]) -> Path:
    """A copy of data/defect with at most ``per_class[split]`` images per class (quick modes)."""
    for split, n in per_class.items():
        for cls_dir in sorted((DATA / split).iterdir()):
            out = dst / split / cls_dir.name
            out.mkdir(parents=True, exist_ok=True)
            for f in sorted(cls_dir.glob("*.jpg"))[:n]:
                shutil.copy2(f, out / f.name)
    return dst


def compose(output_dir: Path, data_dir: Path, *overrides: str):
    """The real train config (like tests/conftest.make_cfg), writing into ``output_dir``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import open_dict

    import vitft  # noqa: F401  (registers resolvers)

    base = [
        "trainer=cpu",
        # fp32 unless a benchmark sets otherwise: figures comparable across CPUs with/without bf16
        "trainer.precision=32-true",
        "logger=none",
        "task=folder",
        f"task.data_dir={data_dir}",
        "task.classes=[normal,crack,dent]",
        "data.num_workers=0",
        "+trainer.enable_model_summary=false",
        "+trainer.enable_progress_bar=false",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose("train", overrides=[*base, *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def quickstart_cfg(
    output_dir: Path,
    data_dir: Path,
    classes: list[str],
    seed: int,
    *overrides: str,
    experiment: str = "quickstart",
):
    """``experiment=quickstart`` (or another ``experiment``) on a class-folder dataset, quiet,
    writing into ``output_dir`` (the recipe the pretraining, unknown-defect, active-learning,
    add-class and small-data runs share)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import open_dict

    quiet = ["logger=none", "callbacks.lr_monitor=null", "callbacks.progress_bar=null",
             "+trainer.enable_model_summary=false", "data.num_workers=0"]  # fmt: skip
    task = ["task=folder", f"task.data_dir={data_dir}", f"task.classes=[{','.join(classes)}]"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose(
            "train",
            overrides=[f"experiment={experiment}", *quiet, *task, f"seed={seed}", *overrides],
        )
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def interleaved(fns: dict[str, Callable[[], float]], reps: int) -> dict[str, list[float]]:
    """Run each measurement ``reps`` times, alternating A, B, A, B... so that load from other
    processes on a shared machine falls on both sides alike. Each fn returns one figure."""
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            out[name].append(fn())
    return out


def sync() -> None:
    """Wait for queued GPU work, so a timer stops when the GPU is done (a no-op on the CPU)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn: Callable[[], object]) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def write_results(
    name: str, headers: list[str], rows: list[list], folder: Path | None = None
) -> Path:
    """The table as ``benchmarks/results/<name>.csv`` (with the machine in every row).

    ``VITFT_RESULTS_DIR`` redirects it (the tests' quick runs must not overwrite the figures)."""
    import csv

    default = os.environ.get("VITFT_RESULTS_DIR") or ROOT / "benchmarks" / "results"
    out = Path(folder or default) / f"{name}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    note = f"{machine_note()} {cpu_flags()}"
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*headers, "machine"])
        writer.writerows([*r, note] for r in rows)
    return out


def table(headers: list[str], rows: list[list]) -> str:
    """A plain-text table (also valid Markdown)."""

    def fmt(v) -> str:
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
        return str(v)

    cells = [[fmt(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]

    def line(r: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in cells)])


def machine_note() -> str:
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"cpu cores={os.cpu_count()} torch threads={torch.get_num_threads()} "
        f"load avg(1m)={load:.2f} torch={torch.__version__}"
    )


def cpu_flags() -> str:
    """``cpu flags: avx2=yes ... amx_bf16=no``: the extensions that decide bf16/int8/fp32 speed."""
    from vitft.core.hardware import flags_note

    return flags_note()
