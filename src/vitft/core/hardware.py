"""What the machine decides: CPU flags, the training precision, data loader processes.

Imports nothing of vitft but its errors: training, deploy, the benchmarks and
scripts/gpu_check.py share it.
"""

from __future__ import annotations

import logging
import os

import torch

from vitft.core.errors import VitftError

log = logging.getLogger(__name__)

AUTO = "auto"
# CPU flags (Linux /proc/cpuinfo names) that benchmarks report next to their figures.
REPORTED_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)
# Native bf16 matrix instructions: bf16-mixed pays off on these CPUs (AMX, AVX-512 BF16).
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
# More loader processes than this rarely feed one device faster and each holds a dataset copy.
MAX_WORKERS = 16


def cpu_flags() -> set[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is unavailable)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def flags_note() -> str:
    """``cpu flags: avx2=yes avx512f=yes ... amx_bf16=no``, for benchmark output."""
    have = cpu_flags()
    return "cpu flags: " + " ".join(f"{f}={'yes' if f in have else 'no'}" for f in REPORTED_FLAGS)


def device_type(accelerator: str | None) -> str:
    """``cuda``, ``cpu`` or another torch device type for a Lightning ``accelerator`` value."""
    acc = str(accelerator or AUTO).lower()
    if acc in ("gpu", "cuda"):
        return "cuda"
    if acc == AUTO:
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    return acc


def auto_precision(device: str) -> tuple[str, str]:
    """(Lightning precision, why) for ``trainer.precision=auto`` on a device type."""
    if device == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16-mixed", f"{torch.cuda.get_device_name()} supports bf16"
        return "32-true", "this GPU has no bf16 (TF32 is used where the GPU has it)"
    if device == "cpu":
        native = sorted(cpu_flags() & set(BF16_CPU_FLAGS))
        if native:
            return "bf16-mixed", f"the CPU has native bf16 ({', '.join(native)})"
        return "32-true", "the CPU has no native bf16 (AMX or AVX-512 BF16)"
    return "32-true", f"device {device}"


def resolve_precision(precision: object, accelerator: str | None) -> str | object:
    """``trainer.precision``: ``auto`` becomes the choice for this machine (logged); any other
    value is the user's and is kept. On a CUDA GPU fp32 matmuls may use TF32 either way."""
    device = device_type(accelerator)
    if device == "cuda":
        torch.set_float32_matmul_precision("high")
    if precision != AUTO:
        return precision
    chosen, why = auto_precision(device)
    log.info(
        "trainer.precision=auto: %s (%s); set trainer.precision=32-true to override", chosen, why
    )
    return chosen


def cpus_per_process(local_processes: int = 1) -> int:
    """CPUs this training process may use: SLURM's cpus-per-task (one task per process) where
    set, else the CPUs this process may run on, shared by the node's training processes."""
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        return int(slurm)
    if hasattr(os, "sched_getaffinity"):
        cpus = len(os.sched_getaffinity(0))
    else:
        cpus = os.cpu_count() or 1
    return max(1, cpus // max(1, local_processes))


def auto_workers(local_processes: int = 1) -> int:
    """Loader processes: one CPU is left to the training process itself."""
    return max(0, min(MAX_WORKERS, cpus_per_process(local_processes) - 1))


def worker_start(num_workers: int) -> dict:
    """DataLoader start method: ``forkserver`` inside a distributed process group. A worker forked
    from a process whose gloo or NCCL threads hold a lock can hang at its first batch."""
    dist = torch.distributed
    if num_workers > 0 and dist.is_available() and dist.is_initialized():
        return {"multiprocessing_context": "forkserver"}
    return {}


def loader_options(
    num_workers: int | str,
    pin_memory: bool | str,
    persistent_workers: bool = False,
    local_processes: int = 1,
    device: str = "cpu",
) -> dict:
    """DataLoader options for ``data.num_workers`` / ``data.pin_memory`` (``auto``: from the CPUs
    of this process and whether batches go to a CUDA GPU)."""
    if num_workers == AUTO:
        num_workers = auto_workers(local_processes)
    elif isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise VitftError(f"data.num_workers={num_workers!r} must be auto or an integer >= 0")
    if pin_memory == AUTO:
        pin_memory = device == "cuda"
    elif not isinstance(pin_memory, bool):
        raise VitftError(f"data.pin_memory={pin_memory!r} must be auto, true or false")
    return {
        "num_workers": num_workers,
        "pin_memory": pin_memory,
        "persistent_workers": bool(persistent_workers) and num_workers > 0,
    }
