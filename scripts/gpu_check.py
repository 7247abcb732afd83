"""One GPU, under 8 minutes: does vitft use it well? Prints a table, writes benchmarks/results/,
exits 1 when any goal is missed (2 without a GPU).

    python scripts/gpu_check.py              # on a GPU machine (run it under `timeout 600`)
    python scripts/gpu_check.py --dry-run    # the same checks, CPU-sized (CI runs this)

Checks: the GPU, driver, CUDA/cuDNN and library versions, and ONNX Runtime's providers; vitft's
training loop against a plain PyTorch loop on GPU-resident tensors (ViT-B/16-shaped, random
weights, bf16), fits interleaved (plain, vitft, vitft, plain, ...) over several reps, medians of
epoch times (goal: vitft >= 0.95 of the plain loop; images/s and peak memory); fp32 with and
without TF32; the real train() on data/defect with 2 loader workers and with data.num_workers=auto;
resume=auto against an uninterrupted run; benchmark.py device=cuda and ONNX Runtime's GPU providers
(the providers each session really has; logit parity against torch fp32 with TF32 off, at fp32's
tolerance with ORT's TF32 off and at TF32's with it on, its default; latency at batch 1 and 32).
Runs offline: HF_HUB_OFFLINE=1 is set before anything imports the hub.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # random weights only: never wait on a network that isn't there

import argparse  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # the loops of benchmarks/loop_overhead.py

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import (  # noqa: E402
    DATA,
    compose,
    cpu_flags,
    median,
    model_overrides,
    subset_data,
    table,
    write_results,
)
from loop_overhead import plain_fit, vitft_fit  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

BUDGET_S = 480  # the whole check, on one H100-class GPU
LOOP_GOAL = 0.95
# Max |logit difference| allowed, relative to the largest |logit| (at least 1): fp32 kernels
# differ in summation order only (~1e-6 of it); TF32 rounds every matmul input to 10 mantissa
# bits (~5e-4 relative each), which over a ViT's 12 blocks reaches 1e-4 to 1e-2 of the logits'
# scale: above fp32's tolerance, so a session with TF32 on is held to TF32's.
FP32_RTOL = 1e-4
TF32_RTOL = 3e-2
ROWS: list[list] = []


def row(check: str, figure: str, value, goal: str = "", ok: bool | None = None) -> None:
    status = "" if ok is None else ("ok" if ok else "MISSED")
    ROWS.append([check, figure, value, goal, status])
    print(f"  {check}: {figure} = {value} {goal} {status}", flush=True)


def exit_code() -> int:
    """1 when any row missed its goal, else 0."""
    return 1 if any(r[4] == "MISSED" for r in ROWS) else 0


def logit_tolerance(reference: np.ndarray, tf32: bool) -> float:
    """The max |logit difference| two fp32 runs may have (TF32 on in either: ``tf32``)."""
    scale = max(1.0, float(np.abs(reference).max()))
    return (TF32_RTOL if tf32 else FP32_RTOL) * scale


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_gb(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else float("nan")


def _driver() -> str:
    """The NVIDIA driver version (nvidia-smi), or why it is unknown."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as err:
        return f"unknown ({type(err).__name__})"
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else "unknown"


def check_machine(device: str) -> None:
    import lightning
    import onnxruntime as ort
    import transformers

    import vitft

    cuda = device == "cuda"
    row("machine", "gpu", torch.cuda.get_device_name() if cuda else "none (CPU dry run)")
    row("machine", "driver", _driver() if cuda else "none")
    row("machine", "cuda / cudnn", f"{torch.version.cuda} / {torch.backends.cudnn.version()}")
    for module in (torch, ort, transformers, lightning, vitft):
        row("machine", module.__name__, module.__version__)
    row("machine", "ort available providers", " ".join(ort.get_available_providers()))
    row("machine", "HF_HUB_OFFLINE", os.environ.get("HF_HUB_OFFLINE"))
    row("machine", "cpu", cpu_flags())


def check_loop(device: str, dry: bool, tmp: Path) -> None:
    """vitft's loop against the plain one: interleaved fits, medians of the epoch times (the first
    epoch of each fit, warm-up, left out)."""
    from vitft.models.classifier import build_model

    model_name, batch, steps, epochs, reps = ("tiny", 8, 2, 2, 2) if dry else ("base", 64, 20, 3, 3)
    precision = "bf16-mixed" if device == "cuda" else "32-true"
    accel = "gpu" if device == "cuda" else "cpu"
    cfg = compose(
        tmp / "loop",
        DATA,
        *model_overrides(model_name),
        "freeze=none",
        f"trainer.accelerator={accel}",
        f"trainer.precision={precision}",
    )
    size = cfg.model.config.image_size
    x = torch.randn(batch * steps, 3, size, size, device=device)
    y = torch.randint(0, 3, (batch * steps,), device=device)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=False)

    def fresh():
        torch.manual_seed(0)
        return build_model(cfg.model, cfg.head, ["normal", "crack", "dent"])[0]

    fits = {
        "plain": lambda: plain_fit(cfg, fresh(), loader, epochs, device, precision),
        "vitft": lambda: vitft_fit(cfg, fresh(), loader, epochs),
    }
    times: dict[str, list[float]] = {"plain": [], "vitft": []}
    peak: dict[str, float] = {}
    for rep in range(reps):  # ABBA: load and clock drift fall on both sides alike
        for name in list(fits) if rep % 2 == 0 else list(reversed(fits)):
            reset_peak(device)
            times[name] += fits[name]()[1:]
            peak[name] = max(peak.get(name, 0.0), peak_gb(device))
    n = len(x)
    plain_ips, vitft_ips = n / median(times["plain"]), n / median(times["vitft"])
    label = f"loop {model_name} {precision} b{batch}"
    row(label, "interleaved reps", reps)
    row(label, "plain images/s", round(plain_ips, 2))
    row(label, "vitft images/s", round(vitft_ips, 2))
    if device == "cuda":
        row(label, "peak GB plain / vitft", f"{peak['plain']:.2f} / {peak['vitft']:.2f}")
    ratio = vitft_ips / plain_ips
    row(label, "vitft / plain", round(ratio, 3), f">= {LOOP_GOAL}", ratio >= LOOP_GOAL)

    if device != "cuda":
        return
    for tf32 in (False, True):  # fp32: TF32 tensor cores off and on
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        fp32 = plain_fit(cfg, fresh(), loader, epochs, device, "32-true")[1:]
        row(f"fp32 tf32={'on' if tf32 else 'off'}", "images/s", round(n / median(fp32), 1))


def train_run(out: Path, data: Path, *overrides: str) -> tuple[dict, float]:
    from vitft.apps.train import train

    cfg = compose(out, data, *overrides)
    start = time.perf_counter()
    metrics, objects = train(cfg)
    return {"metrics": metrics, "module": objects["module"]}, time.perf_counter() - start


def check_train(device: str, dry: bool, tmp: Path) -> Path:
    """The real train(): loader workers and pinning, and resume=auto. Returns a model dir."""
    data = subset_data(tmp / "data", {"train": 4, "val": 2, "test": 2}) if dry else DATA
    accel = "gpu" if device == "cuda" else "cpu"
    base = [
        "model=vit_tiny",
        "freeze=none",
        f"trainer.accelerator={accel}",
        "trainer.precision=auto",
        "data.batch_size=8" if dry else "data.batch_size=32",
        "callbacks.early_stopping=null",
        "callbacks.progress_bar=null",
        "logger=csv",
    ]
    epochs = 1 if dry else 2
    variants = [("auto", "auto")] if dry else [("2", "true"), ("auto", "auto")]
    model_dir = None
    for workers, pin in variants:
        out = tmp / f"train_w{workers}_p{pin}"
        run, seconds = train_run(
            out, data, *base, f"trainer.max_epochs={epochs}",
            f"data.num_workers={workers}", f"data.pin_memory={pin}",
        )  # fmt: skip
        label = f"train() workers={workers} pin={pin}"
        row(label, "seconds (with val/test/export/ood fit)", round(seconds, 1))
        model_dir = out / "model"

    # resume=auto: 1 epoch, then continue to 2 in the same run dir, against 2 epochs at once
    whole, _ = train_run(tmp / "whole", data, *base, "trainer.max_epochs=2", "data.num_workers=0")
    split = [*base, "run_name=resumed", "resume=auto", "data.num_workers=0"]
    train_run(tmp / "resumed", data, *split, "trainer.max_epochs=1")
    resumed, _ = train_run(tmp / "resumed", data, *split, "trainer.max_epochs=2")
    a = whole["module"].model.state_dict()
    b = resumed["module"].model.state_dict()
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    # bitwise on the CPU; GPU kernels (atomics in backward) may differ in the last bits, a
    # resume that lost state (optimizer, schedule, data order) differs by far more
    tol = 1e-3 if device == "cuda" else 0.0
    row("resume=auto vs uninterrupted", "max |weight diff|", diff, f"<= {tol:g}", diff <= tol)
    return model_dir


def check_deploy(device: str, model_dir: Path, tmp: Path) -> None:
    """benchmark.py on ``device``, and vitft's ONNX Runtime session against torch fp32."""
    from omegaconf import OmegaConf

    from vitft.apps.benchmark import benchmark

    cfg = OmegaConf.load(ROOT / "conf" / "benchmark.yaml")
    cfg.pop("defaults", None)
    cfg.pop("hydra", None)
    cfg.merge_with({
        "model_dir": str(model_dir), "device": device, "formats": ["onnx"],
        "export_dir": str(tmp / "export"), "output_dir": str(tmp / "bench"),
        "rounds": 2, "iters": 2, "warmup": 1, "max_images": 16, "threads": 1,
    })  # fmt: skip
    for r in benchmark(cfg):
        label = f"benchmark.py device={device}"
        row(label, f"{r['format']} p50 ms (b=1)", round(r["p50_ms"], 2))
        row(label, f"{r['format']} providers", r["providers"])
    check_ort(device, model_dir, tmp / "export" / "onnx")


def check_ort(device: str, model_dir: Path, folder: Path) -> None:
    from vitft.deploy.ort_backend import GPU_PROVIDERS
    from vitft.deploy.runtime import load_exported
    from vitft.modelio.hf import load_model

    ort_device = "cuda" if device == "cuda" else "auto"
    predict, meta = load_exported(folder, device=ort_device)
    providers = meta["providers"]
    on_gpu = providers[0] in GPU_PROVIDERS
    goal = "a GPU provider first" if device == "cuda" else ""
    row(f"ORT {ort_device} b32", "session providers", " ".join(providers), goal,
        on_gpu if device == "cuda" else None)  # fmt: skip
    sessions = {f"ORT {ort_device}": (predict, on_gpu)}  # ORT's CUDA provider: TF32 on by default
    if device == "cuda":
        sessions["ORT cuda tf32=off"] = (_strict_cuda_session(folder / meta["file"]), False)
    model = load_model(model_dir)[0].to(device).eval()
    torch.backends.cuda.matmul.allow_tf32 = False  # the reference: plain fp32
    size = meta["image_size"]
    for batch in (1, 32):
        x = np.random.default_rng(0).standard_normal((batch, 3, *size)).astype(np.float32)
        with torch.inference_mode():
            ref = model(torch.from_numpy(x).to(device)).float().cpu().numpy()
        for name, (run, tf32) in sessions.items():
            diff = float(np.abs(run(x) - ref).max())
            tol = logit_tolerance(ref, tf32)
            label = f"{name} b{batch}"
            row(label, "max |logit diff| vs torch fp32", f"{diff:.1e}", f"<= {tol:.1e}",
                diff <= tol)  # fmt: skip
            times = []
            for _ in range(10):
                start = time.perf_counter()
                run(x)
                times.append(time.perf_counter() - start)
            row(label, "p50 ms", round(median(times) * 1e3, 2))


def _strict_cuda_session(path: Path):
    """ONNX Runtime's CUDA provider with TF32 off: parity at fp32's tolerance."""
    import onnxruntime as ort

    cuda = ("CUDAExecutionProvider", {"use_tf32": 0})
    session = ort.InferenceSession(str(path), providers=[cuda, "CPUExecutionProvider"])
    row("ORT cuda tf32=off", "session providers", " ".join(session.get_providers()))
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="CPU-sized, no GPU needed")
    p.add_argument("--results", type=Path, default=None, help="CSV folder (benchmarks/results)")
    args = p.parse_args(argv)
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA GPU visible; --dry-run runs the CPU-safe parts", file=sys.stderr)
        return 2
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vitft-gpu-check-") as tmp:
        tmp = Path(tmp)
        check_machine(device)
        check_loop(device, args.dry_run, tmp)
        model_dir = check_train(device, args.dry_run, tmp)
        check_deploy(device, model_dir, tmp)
    total = time.perf_counter() - start
    row("total", "seconds", round(total, 1), f"<= {BUDGET_S}", total <= BUDGET_S)
    headers = ["check", "figure", "value", "goal", "status"]
    print()
    print(table(headers, ROWS))
    name = "gpu_check_dry_run" if args.dry_run else "gpu_check"
    print(f"wrote {write_results(name, headers, ROWS, args.results)}")
    missed = [r for r in ROWS if r[4] == "MISSED"]
    print(f"RESULT gpu_check {len(ROWS) - len(missed)}/{len(ROWS)} rows without a missed goal")
    for r in missed:
        print(f"MISSED: {r[0]}: {r[1]} = {r[2]} (goal {r[3]})", file=sys.stderr)
    return exit_code()


if __name__ == "__main__":
    sys.exit(main())
