"""One GPU, <= 10 minutes: does vitft use it well? Prints a table, writes benchmarks/results/.

    python scripts/gpu_check.py              # on a GPU machine (timeout 600 s recommended)
    python scripts/gpu_check.py --dry-run    # the same checks, CPU-sized (CI runs this)

Checks: the GPU and ONNX Runtime's providers; vitft's training loop against a plain PyTorch loop
on GPU-resident tensors (ViT-B/16-shaped, random weights, bf16; goal >= 0.95 of the plain loop,
images/s and peak memory); fp32 with and without TF32; the real train() on data/defect with 2
loader workers against data.num_workers=auto, pinning on and off; resume=auto against an
uninterrupted run; benchmark.py device=cuda and ONNX Runtime's CUDA provider (parity: max logit
difference < 1e-3; latency at batch 1 and 32).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

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

ROWS: list[list] = []


def row(check: str, figure: str, value, goal: str = "", ok: bool | None = None) -> None:
    status = "" if ok is None else ("ok" if ok else "MISSED")
    ROWS.append([check, figure, value, goal, status])
    print(f"  {check}: {figure} = {value} {goal} {status}", flush=True)


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_gb(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else float("nan")


def check_machine(device: str) -> None:
    import onnxruntime as ort

    name = torch.cuda.get_device_name() if device == "cuda" else "none (CPU dry run)"
    row("machine", "gpu", name)
    row("machine", "ort providers", " ".join(ort.get_available_providers()))
    row("machine", "cpu", cpu_flags())


def check_loop(device: str, dry: bool, tmp: Path) -> None:
    from vitft.models.classifier import build_model

    model_name, batch, steps, epochs = ("tiny", 8, 4, 2) if dry else ("base", 64, 20, 3)
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

    results: dict[str, tuple[list[float], float]] = {}
    for name, fit in (
        ("plain", lambda m: plain_fit(cfg, m, loader, epochs, device, precision)),
        ("vitft", lambda m: vitft_fit(cfg, m, loader, epochs)),
    ):
        reset_peak(device)
        times = fit(fresh())[1:]
        results[name] = (times, peak_gb(device))
    n = len(x)
    plain_ips = n / median(results["plain"][0])
    vitft_ips = n / median(results["vitft"][0])
    label = f"loop {model_name} {precision} b{batch}"
    row(label, "plain images/s", round(plain_ips, 1))
    row(label, "vitft images/s", round(vitft_ips, 1))
    row(label, "peak GB plain / vitft", f"{results['plain'][1]:.2f} / {results['vitft'][1]:.2f}")
    ratio = vitft_ips / plain_ips
    row(label, "vitft / plain", round(ratio, 3), ">= 0.95", ratio >= 0.95)

    if device != "cuda":
        return
    for tf32 in (False, True):  # fp32: TF32 tensor cores off and on
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        reset_peak(device)
        times = plain_fit(cfg, fresh(), loader, epochs, device, "32-true")[1:]
        row(f"fp32 tf32={'on' if tf32 else 'off'}", "images/s", round(n / median(times), 1))


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
    epochs = 1 if dry else 3
    variants = [("auto", "auto")] if dry else [
        ("2", "false"), ("2", "true"), ("auto", "false"), ("auto", "true")
    ]  # fmt: skip
    model_dir = None
    for workers, pin in variants:
        out = tmp / f"train_w{workers}_p{pin}"
        run, seconds = train_run(
            out, data, *base, f"trainer.max_epochs={epochs}",
            f"data.num_workers={workers}", f"data.pin_memory={pin}",
        )  # fmt: skip
        label = f"train() workers={workers} pin={pin}"
        row(label, "seconds (with val/test/export)", round(seconds, 1))
        model_dir = out / "model"

    # resume=auto: 1 epoch, then continue to 2 in the same run dir, against 2 epochs at once
    whole, _ = train_run(tmp / "whole", data, *base, "trainer.max_epochs=2", "data.num_workers=0")
    split = [*base, "run_name=resumed", "resume=auto", "data.num_workers=0"]
    train_run(tmp / "resumed", data, *split, "trainer.max_epochs=1")
    resumed, _ = train_run(tmp / "resumed", data, *split, "trainer.max_epochs=2")
    a = whole["module"].model.state_dict()
    b = resumed["module"].model.state_dict()
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    # exact on the CPU; GPU kernels (atomics in backward) may differ in the last bits
    row("resume=auto vs uninterrupted", "max |weight diff|", f"{diff:.2e}", "~0")
    return model_dir


def check_deploy(device: str, model_dir: Path, tmp: Path) -> None:
    from omegaconf import OmegaConf

    from vitft.apps.benchmark import benchmark
    from vitft.deploy.runtime import load_exported
    from vitft.modelio.hf import load_model

    cfg = OmegaConf.load(ROOT / "conf" / "benchmark.yaml")
    cfg.pop("defaults", None)
    cfg.pop("hydra", None)
    cfg.merge_with({
        "model_dir": str(model_dir), "device": device, "formats": ["onnx"],
        "export_dir": str(tmp / "export"), "output_dir": str(tmp / "bench"),
        "rounds": 2, "iters": 2, "warmup": 1, "max_images": 16, "threads": 1,
    })  # fmt: skip
    for r in benchmark(cfg):
        row(f"benchmark.py device={device}", f"{r['format']} p50 ms (b=1)", round(r["p50_ms"], 2))

    ort_device = "cuda" if device == "cuda" else "auto"
    predict, meta = load_exported(tmp / "export" / "onnx", device=ort_device)
    model, _ = load_model(model_dir)
    model = model.to(device).eval()
    size = meta["image_size"]
    for batch in (1, 32):
        x = np.random.default_rng(0).standard_normal((batch, 3, *size)).astype(np.float32)
        with torch.inference_mode():
            ref = model(torch.from_numpy(x).to(device)).float().cpu().numpy()
        out = predict(x)
        diff = float(np.abs(out - ref).max())
        times = []
        for _ in range(10):
            start = time.perf_counter()
            predict(x)
            times.append(time.perf_counter() - start)
        label = f"ORT {ort_device} b{batch}"
        row(label, "max |logit diff| vs torch fp32", f"{diff:.1e}", "< 1e-3", diff < 1e-3)
        row(label, "p50 ms", round(median(times) * 1e3, 2))


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
    row("total", "seconds", round(time.perf_counter() - start, 1), "<= 600")
    headers = ["check", "figure", "value", "goal", "status"]
    print()
    print(table(headers, ROWS))
    name = "gpu_check_dry_run" if args.dry_run else "gpu_check"
    print(f"wrote {write_results(name, headers, ROWS, args.results)}")
    missed = [r for r in ROWS if r[4] == "MISSED"]
    print(f"RESULT gpu_check {len(ROWS) - len(missed)}/{len(ROWS)} rows without a missed goal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
