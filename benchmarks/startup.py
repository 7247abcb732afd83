"""Start-up time: process start to first answer, of this checkout against a baseline commit.

Each figure is one fresh process, timed from spawn to exit (``vitft serve``: to the first 200 of
``/ready`` on 127.0.0.1). Measured: ``python -c pass``, ``import torch``, ``import vitft``,
``vitft --help``, ``vitft predict`` of one image on an ONNX export and on a PyTorch model dir,
``vitft serve`` of the ONNX export, and (the floor) an ONNX Runtime session plus one run of the
same model in plain Python. ``--baseline REF`` runs every command also against ``git archive REF``
(src/ and conf/ unpacked in a temp dir, put first on PYTHONPATH), alternating the two sides
rep by rep so that load from other processes falls on both alike.

    python benchmarks/startup.py [--reps 3] [--baseline 06e4a82 [--baseline-only]] [--only predict]

The model is conf/model/vit_tiny (random weights, 3 classes) saved with ``save_hf``; the export is
``vitft export formats=[onnx]`` of it, made once by this checkout. Children run with one OpenMP
thread. Writes benchmarks/results/startup.csv: best and median wall seconds per side, the median
CPU seconds of the process (which a busy machine disturbs less) and the load average; with
``--only``, the rows of the other commands stay as they were. Ends with
``RESULT startup <baseline / this checkout, median wall, vitft predict on the ONNX export>``
(without ``--baseline``: the median seconds).
"""

from __future__ import annotations

import argparse
import csv as csv_module
import os
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from io import BytesIO
from pathlib import Path

from _common import DATA, ROOT, cpu_flags, median, table, write_results

FLOOR = (
    "import numpy as np, onnxruntime as ort, sys; s = ort.InferenceSession(sys.argv[1], "
    "providers=['CPUExecutionProvider']); i = s.get_inputs()[0]; "
    "s.run(None, {i.name: np.zeros([1, *i.shape[1:]], np.float32)})"
)


HEADERS = ["command", "code", "best_s", "median_s", "cpu_s", "reps", "load_avg_1m"]


def make_model(tmp: Path) -> tuple[Path, Path, Path]:
    """(model dir, ONNX export folder, one image) made by this checkout."""
    import torch
    from omegaconf import OmegaConf

    from vitft.modelio.hf import save_hf
    from vitft.models.classifier import build_model

    config = dict(OmegaConf.load(ROOT / "conf/model/vit_tiny.yaml").config)
    torch.manual_seed(0)
    model, processor = build_model(
        {"config": config}, {"name": "linear"}, ["normal", "crack", "dent"]
    )
    model_dir = save_hf(model, processor, tmp / "run" / "model")
    export = tmp / "run" / "export"
    cmd = [sys.executable, "-m", "vitft", "export", f"model_dir={model_dir}", "formats=[onnx]",
           f"output_dir={export}", f"data_dir={DATA}", "parity.max_images=4",
           f"hydra.run.dir={tmp / 'hydra'}"]  # fmt: skip
    subprocess.run(cmd, check=True, env=child_env(ROOT / "src"), capture_output=True)
    image = sorted((DATA / "test").rglob("*.jpg"))[0]
    return model_dir, export / "onnx", image


def child_env(src: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) that process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def time_command(argv: list[str], env: dict, cwd: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run of ``argv`` to its exit."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stderr.read().decode()[-2000:]}")
    return took, usage.ru_utime + usage.ru_stime


def time_serve(argv: list[str], env: dict, cwd: Path, port: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) from spawn to the first 200 of /ready."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    try:
        while True:
            try:
                ready = urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1)
                if ready.status == 200:
                    return time.perf_counter() - t0, process_cpu(proc.pid)
            except OSError as err:
                if proc.poll() is not None:
                    raise SystemExit(
                        f"serve exited: {proc.stderr.read().decode()[-2000:]}"
                    ) from err
                time.sleep(0.02)
    finally:
        proc.terminate()
        proc.wait(30)


def commands(model_dir: Path, onnx: Path, image: Path, out: Path) -> dict[str, list[str]]:
    py = sys.executable
    vitft = [py, "-m", "vitft"]  # the console script's own code, on the side's PYTHONPATH

    def predict(model: Path) -> list[str]:
        return [*vitft, "predict", f"model_dir={model}", f"inputs={image}",
                f"output={out / 'p.csv'}", f"hydra.run.dir={out / 'hydra'}"]  # fmt: skip

    return {
        "python -c pass": [py, "-c", "pass"],
        "import torch": [py, "-c", "import torch"],
        "import vitft": [py, "-c", "import vitft"],
        "vitft --help": [*vitft, "--help"],
        "vitft predict, ONNX export": predict(onnx),
        "vitft predict, PyTorch model dir": predict(model_dir),
        "vitft serve /ready, ONNX export": [
            *vitft,
            "serve",
            f"model_dir={onnx}",
            f"hydra.run.dir={out / 'hydra'}",
        ],  # fmt: skip
        "ORT session + 1 run (floor)": [py, "-c", FLOOR, str(onnx / "model.onnx")],
    }


def unpack(ref: str, dst: Path) -> Path:
    """src/ and conf/ of commit ``ref`` in ``dst`` (git archive: the work tree is not touched)."""
    blob = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "src", "conf"],
                          check=True, capture_output=True).stdout  # fmt: skip
    with tarfile.open(fileobj=BytesIO(blob)) as tar:
        tar.extractall(dst, filter="data")
    return dst / "src"


def previous_rows() -> list[list[str]]:
    """The rows of results/startup.csv as they are (machine note included), header first."""
    path = Path(os.environ.get("VITFT_RESULTS_DIR") or ROOT / "benchmarks" / "results")
    path = path / "startup.csv"
    return list(csv_module.reader(path.open())) if path.is_file() else []


def keep_other_rows(path: Path, previous: list[list[str]], timed: set[str]) -> None:
    """Put back the previous rows of the commands this run did not time (``--only``), so that a
    partial run updates its own rows and leaves the others' figures in the table."""
    if len(previous) < 2:
        return
    rows = list(csv_module.reader(path.open()))
    if previous[0] != rows[0]:
        return  # another layout: the old rows would not fit
    old = [r for r in previous[1:] if r[0] not in timed]
    with path.open("w", newline="") as f:
        csv_module.writer(f).writerows([rows[0], *old, *rows[1:]])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--baseline", default=None, help="a git ref to compare against")
    ap.add_argument("--baseline-only", action="store_true", help="time only the baseline")
    ap.add_argument("--only", nargs="*", help="time only the commands whose name has one of these")
    args = ap.parse_args()
    print(cpu_flags(), "load average:", os.getloadavg())
    kept = previous_rows()
    with tempfile.TemporaryDirectory() as tmp_str:
        tmp = Path(tmp_str)
        model_dir, onnx, image = make_model(tmp)
        sides = {} if args.baseline_only else {"this": ROOT / "src"}
        if args.baseline:
            sides[args.baseline] = unpack(args.baseline, tmp / "baseline")
        times: dict[tuple[str, str], list[float]] = {}
        cpu: dict[tuple[str, str], list[float]] = {}
        loads: dict[tuple[str, str], list[float]] = {}
        for name, argv in commands(model_dir, onnx, image, tmp).items():
            if args.only and not any(word in name for word in args.only):
                continue
            for _ in range(args.reps):
                for side, src in sides.items():
                    env, cwd = child_env(src), src.parent
                    if name.startswith("vitft serve"):
                        port = free_port()
                        took, used = time_serve([*argv, f"port={port}"], env, cwd, port)
                    else:
                        took, used = time_command(argv, env, cwd)
                    times.setdefault((name, side), []).append(took)
                    cpu.setdefault((name, side), []).append(used)
                    loads.setdefault((name, side), []).append(os.getloadavg()[0])
            print(name, {s: round(median(times[(name, s)]), 3) for s in sides}, flush=True)
            rows = [
                [*k, min(t), median(t), median(cpu[k]), len(t), round(median(loads[k]), 2)]
                for k, t in times.items()
            ]
            csv = write_results("startup", HEADERS, rows)  # after each command: a slow run
            keep_other_rows(csv, kept, {n for n, _ in times})
    print(table(HEADERS, rows))
    print("csv:", csv)
    onnx_predict = {
        s: median(t) for (n, s), t in times.items() if n == "vitft predict, ONNX export"
    }
    if args.baseline and len(onnx_predict) == 2:
        print(f"RESULT startup {onnx_predict[args.baseline] / onnx_predict['this']:.2f}")
    elif onnx_predict:
        print(f"RESULT startup {next(iter(onnx_predict.values())):.2f}")


if __name__ == "__main__":
    main()
