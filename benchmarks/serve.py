"""`vitft serve` vs the same Predictor called in-process: requests/s and p50/p99 latency.

One image per request (a PNG of the defect data, decoded in both paths), at concurrency 1 and 8.
In-process: ``Predictor.predict([image])`` from 1 or 8 threads. Service: ``vitft serve`` in a
subprocess on 127.0.0.1, with 1 or 8 client threads POSTing the PNG (raw image body, keep-alive).
Both sides use the same torch intra-op thread count (VITFT_BENCH_THREADS, default: all cores;
the service runs its forward passes on one thread, so intra-op threads are its only parallelism).
The rounds alternate the sides so that load from other processes falls on both; figures are
medians over rounds.

    python benchmarks/serve.py [--quick] [--model tiny|small]

Ends with ``RESULT serve <service requests/s / in-process requests/s at concurrency 8>``.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from _common import DATA, ROOT, cpu_flags, machine_note, median, table

# A DeiT-Tiny-shaped ViT (5.7 M parameters, 224 px): a realistic small plant model.
SMALL = {
    "model_type": "vit",
    "image_size": 224,
    "patch_size": 16,
    "hidden_size": 192,
    "num_hidden_layers": 12,
    "num_attention_heads": 3,
    "intermediate_size": 768,
}


def make_model(dst: Path, name: str) -> Path:
    import torch
    from omegaconf import OmegaConf

    from vitft.modelio.hf import save_hf
    from vitft.models.classifier import build_model

    config = (
        SMALL if name == "small" else dict(OmegaConf.load(ROOT / "conf/model/vit_tiny.yaml").config)
    )
    torch.manual_seed(0)
    model, processor = build_model(
        {"config": config}, {"name": "linear"}, ["normal", "crack", "dent"]
    )
    return save_hf(model, processor, dst / "model")


def load_images(n: int) -> list[bytes]:
    from PIL import Image

    out = []
    for path in sorted(DATA.rglob("*.jpg"))[:n]:
        buf = io.BytesIO()
        Image.open(path).convert("RGB").save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) that process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drive(
    call, cpu, images: list[bytes], concurrency: int, requests: int
) -> tuple[float, list[float], float]:
    """(requests/s, latencies in ms, CPU ms per request) of ``requests`` calls from
    ``concurrency`` threads; ``cpu()`` is the CPU seconds used so far by the side's processes."""

    def one(i: int) -> float:
        t0 = time.perf_counter()
        call(images[i % len(images)])
        return (time.perf_counter() - t0) * 1000

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(concurrency)))  # warm-up: connections, first passes
        t0, c0 = time.perf_counter(), cpu()
        latencies = list(pool.map(one, range(requests)))
        wall, used = time.perf_counter() - t0, cpu() - c0
    return requests / wall, latencies, used * 1000 / requests


def start_server(
    model_dir: Path, threads: int, batch: int, wait_ms: float, run_dir: Path, *extra: str
):
    """``vitft serve`` on 127.0.0.1 and a free port, with ``extra`` overrides; (process, url)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT / "src")}
    cmd = [
        sys.executable,
        "-m",
        "vitft",
        "serve",
        f"model_dir={model_dir}",
        f"port={port}",
        f"batch.max_size={batch}",
        f"batch.max_wait_ms={wait_ms}",
        "log_level=warning",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "stdout.log"  # a file, not a pipe: a full pipe would stall the server
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600  # start-up takes minutes on a loaded 2-core machine
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(url + "/ready", timeout=1).status == 200:
                return proc, url
        except OSError as err:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:]
                raise SystemExit(f"vitft serve exited: {tail}") from err
            time.sleep(0.1)
    proc.terminate()
    raise SystemExit("vitft serve did not become ready")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer requests and rounds")
    ap.add_argument("--model", default="small", choices=["tiny", "small"])
    ap.add_argument("--batch", type=int, default=8, help="serve batch.max_size")
    ap.add_argument("--wait-ms", type=float, default=5.0, help="serve batch.max_wait_ms")
    args = ap.parse_args()
    import httpx
    import torch
    from PIL import Image

    from vitft.deploy.predictor import Predictor

    threads = int(os.environ.get("VITFT_BENCH_THREADS", os.cpu_count() or 1))
    torch.set_num_threads(threads)
    requests = 24 if args.quick else 96
    rounds = 2 if args.quick else 3
    images = load_images(16)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_model(Path(tmp), args.model)
        predictor = Predictor.from_path(model_dir, device="cpu")
        proc, url = start_server(model_dir, threads, args.batch, args.wait_ms, Path(tmp) / "run")
        local = threading.local()

        def in_process(data: bytes) -> None:
            predictor.predict([Image.open(io.BytesIO(data))])

        def over_http(data: bytes) -> None:
            if not hasattr(local, "client"):
                local.client = httpx.Client(timeout=60)
            r = local.client.post(
                url + "/predict", content=data, headers={"Content-Type": "image/png"}
            )
            r.raise_for_status()

        # CPU of each side: this process (in-process), or the service plus its HTTP client.
        sides = {
            "in-process": (in_process, time.process_time),
            "serve": (over_http, lambda: process_cpu(proc.pid) + time.process_time()),
        }
        results: dict[tuple[str, int], list[tuple[float, list[float], float]]] = {}
        try:
            for _ in range(rounds):
                for conc in (1, 8):
                    for side, (call, cpu) in sides.items():
                        results.setdefault((side, conc), []).append(
                            drive(call, cpu, images, conc, requests)
                        )
        finally:
            proc.terminate()
            proc.wait(30)

    report(results, requests, rounds, args, threads)


def report(results: dict, requests: int, rounds: int, args: argparse.Namespace, threads: int):
    """Print the table and the ratios, write results/serve.csv, end with the RESULT line."""
    rows = []
    for (side, conc), runs in results.items():
        lat = np.concatenate([np.array(r[1]) for r in runs])
        rows.append(
            [
                side,
                conc,
                requests,
                rounds,
                median([r[0] for r in runs]),
                float(np.percentile(lat, 50)),
                float(np.percentile(lat, 99)),
                median([r[2] for r in runs]),
            ]
        )
    rps = {(r[0], r[1]): r[4] for r in rows}
    cpu_ms = {(r[0], r[1]): r[7] for r in rows}
    ratios = {c: rps[("serve", c)] / rps[("in-process", c)] for c in (1, 8)}
    cpu_ratio = cpu_ms[("in-process", 8)] / cpu_ms[("serve", 8)]
    headers = ["side", "concurrency", "requests", "rounds", "req_per_s", "p50_ms", "p99_ms"]
    headers.append("cpu_ms_per_req")
    print(f"model={args.model} batch.max_size={args.batch} batch.max_wait_ms={args.wait_ms}")
    print(machine_note())
    print(cpu_flags())
    print(table(headers, rows))
    print(f"throughput ratio serve / in-process: c=1 {ratios[1]:.3f}, c=8 {ratios[8]:.3f}")
    # On a shared machine wall-clock throughput also measures how much CPU each side wins from
    # the neighbours (8 caller threads win more than one forward thread); CPU per request doesn't.
    print(f"requests per CPU-second, serve / in-process at c=8: {cpu_ratio:.3f}")
    out = ROOT / "benchmarks" / "results" / "serve.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*headers, "model", "torch_threads", "cpu_flags"])
        for r in rows:
            w.writerow([*r, args.model, threads, cpu_flags().removeprefix("cpu flags: ")])
    print(f"table: {out}")
    print(f"RESULT serve {ratios[8]:.3f}")


if __name__ == "__main__":
    main()
