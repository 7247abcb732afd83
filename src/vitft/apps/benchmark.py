"""benchmark(cfg): size, latency, throughput, accuracy and agreement of every export format.

All formats are loaded in one process and timed in alternating rounds (so a busy neighbour on a
shared CPU slows every format alike); figures are medians over rounds, warm-up excluded.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from vitft.apps.export import export
from vitft.core.errors import VitftError
from vitft.core.resolvers import conf_dir
from vitft.deploy.formats import FORMATS
from vitft.deploy.parity import batched, parity
from vitft.deploy.runtime import load_exported
from vitft.modelio.hf import load_model, multilabel_facts
from vitft.models.multilabel import is_multilabel
from vitft.run.rundir import model_images

log = logging.getLogger(__name__)

COLUMNS = [
    "format",
    "status",
    "size_mb",
    "size_x",
    "accuracy",
    "agreement",
    "max_abs_diff",
    "p50_ms",
    "p90_ms",
    "speedup",
    "fps_batch",
    "params_m",
    "gflops",
    "threads",
    "providers",  # what ran each format: ONNX Runtime's session providers, pytorch cuda, ...
]


CUDA_DTYPES = {"pytorch_cuda": torch.float32, "pytorch_cuda_fp16": torch.half}


def torch_runners(
    model: torch.nn.Module, device: str, dtypes: dict[str, torch.dtype]
) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """One predict function per dtype, each with its own copy of ``model`` on ``device``
    (``Module.to(dtype)`` converts in place: a shared module would end up in the last dtype)."""
    runners = {}
    for name, dtype in dtypes.items():
        m = copy.deepcopy(model).to(device=device, dtype=dtype).eval()

        def predict(x: np.ndarray, m=m, dtype=dtype) -> np.ndarray:
            with torch.inference_mode():
                out = m(torch.from_numpy(x).to(device, dtype)).float().cpu().numpy()
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize()  # the timed call ends when the GPU is done
            return out

        runners[name] = predict
    return runners


def model_cost(model: torch.nn.Module, image_size: list[int]) -> tuple[float, float]:
    """(parameters in millions, GFLOPs of one image) of the PyTorch model."""
    params = sum(p.numel() for p in model.parameters()) / 1e6
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.zeros(1, 3, *image_size))
    return params, counter.get_total_flops() / 1e9


def _file_mb(folder: Path, meta: dict) -> float:
    if meta["format"] == "pytorch":
        return sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 1e6
    return (folder / meta["file"]).stat().st_size / 1e6


def _time(predict, x: np.ndarray) -> float:
    start = time.perf_counter()
    predict(x)
    return time.perf_counter() - start


def _ensure_exports(cfg: DictConfig, model_dir: Path, export_dir: Path) -> None:
    """Export the formats that are missing, with conf/export.yaml's settings (parity recorded,
    never fatal: a failing format is a row of the table)."""
    missing = [f for f in cfg.formats if cfg.reexport or not (export_dir / f).is_dir()]
    if not missing:
        return
    export_cfg = OmegaConf.load(conf_dir() / "export.yaml")
    for key in ("defaults", "hydra"):
        export_cfg.pop(key, None)
    export_cfg.merge_with(
        {
            "model_dir": str(model_dir),
            "formats": missing,
            "output_dir": str(export_dir),
            "data_dir": cfg.get("data_dir"),
            "calibration_images": cfg.calibration_images,
            "threads": cfg.threads,
            # Logits only, one backbone pass per image: what the PyTorch side is timed doing.
            "ood": False,
            "parity": {"fail": False, "batch_size": cfg.get("parity_batch_size") or 1},
        }
    )
    export(export_cfg)


def _check_request(cfg: DictConfig) -> None:
    """Refuse an unknown device, a CUDA device torch can't see, and unknown formats."""
    if cfg.device not in ("cpu", "cuda"):
        raise VitftError(f"device={cfg.device!r}: use cpu or cuda")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise VitftError("device=cuda but torch sees no CUDA GPU; use device=cpu")
    unknown = [f for f in cfg.formats if f not in FORMATS]
    if unknown:
        raise VitftError(f"formats={unknown} unknown; choose from {sorted(FORMATS)}")


def _load_runners(
    cfg: DictConfig, model: torch.nn.Module, model_dir: Path, export_dir: Path, threads: int
) -> dict[str, tuple]:
    """Every format to time, by name: (predict, export meta, folder of its files); the PyTorch
    model dir first, then its CUDA dtypes (device=cuda), then the exports."""
    runners: dict[str, tuple] = {"pytorch": (*load_exported(model_dir, threads), model_dir)}
    if cfg.device == "cuda":
        for name, predict in torch_runners(model, "cuda", CUDA_DTYPES).items():
            dtype = str(CUDA_DTYPES[name]).removeprefix("torch.")
            meta = {"format": "pytorch", "file": "", "providers": [f"pytorch cuda {dtype}"]}
            runners[name] = (predict, meta, model_dir)
    for fmt in cfg.formats:
        # device=cuda: ONNX Runtime formats on its GPU providers (or a clear error), the rest
        # on the CPU runtimes they have (the providers column says which)
        device = cfg.device if FORMATS[fmt].runtime == "onnxruntime" else "cpu"
        predict, meta = load_exported(export_dir / fmt, threads, device)
        runners[fmt] = (predict, meta, export_dir / fmt)
    return runners


def _accuracy_rows(
    cfg: DictConfig, runners: dict[str, tuple], images, thresholds, fixed: dict
) -> dict[str, dict]:
    """One row a format with its size, accuracy and agreement with the PyTorch model (``fixed``:
    the columns every row shares); each format is warmed up once scored."""
    reference = batched(runners["pytorch"][0], images.x)
    per_call = int(cfg.get("parity_batch_size") or 1)
    rows = {}
    for name, (predict, meta, folder) in runners.items():
        result = parity(reference, batched(predict, images.x, per_call), images.y, thresholds)
        rows[name] = {
            "format": name,
            "status": "ok",
            "size_mb": _file_mb(folder, meta) if meta.get("file") else float("nan"),
            "accuracy": result["accuracy"],
            "agreement": result["agreement"],
            "max_abs_diff": result["max_abs_diff"],
            **fixed,
            "providers": " ".join(meta.get("providers", [])),
        }
        par = folder / "parity.json"
        if par.is_file() and not json.loads(par.read_text()).get("passed", True):
            rows[name]["status"] = "parity below threshold"
        for _ in range(cfg.warmup):
            predict(images.x[:1])
    return rows


def _time_rounds(cfg: DictConfig, runners: dict[str, tuple], x: np.ndarray) -> tuple[dict, dict]:
    """Per format, the latencies of one image (seconds) and the throughputs of one batch
    (images/s), timed in rounds whose order alternates so a busy neighbour slows all alike."""
    one = x[:1]
    big = np.concatenate([x] * (cfg.batch_size // len(x) + 1))[: cfg.batch_size]
    lat: dict[str, list[float]] = {n: [] for n in runners}
    thr: dict[str, list[float]] = {n: [] for n in runners}
    for r in range(cfg.rounds):
        order = list(runners) if r % 2 == 0 else list(reversed(runners))
        for name in order:
            predict = runners[name][0]
            lat[name] += [_time(predict, one) for _ in range(cfg.iters)]
            thr[name].append(cfg.batch_size / _time(predict, big))
    return lat, thr


def _add_speed(rows: dict[str, dict], lat: dict, thr: dict) -> None:
    """Fill each row's speed and size columns: medians and ratios to the PyTorch row."""
    base_mb = rows["pytorch"]["size_mb"]
    base_p50 = float(np.median(lat["pytorch"])) * 1e3
    for name, row in rows.items():
        p50 = float(np.median(lat[name])) * 1e3
        row.update(
            p50_ms=p50,
            p90_ms=float(np.percentile(lat[name], 90)) * 1e3,
            speedup=base_p50 / p50,
            size_x=row["size_mb"] / base_mb,
            fps_batch=float(np.median(thr[name])),
        )


def benchmark(cfg: DictConfig) -> list[dict]:
    """Benchmark the model dir and its exports; writes benchmark.csv/.md, returns the rows."""
    _check_request(cfg)
    model_dir = Path(cfg.model_dir).expanduser()
    export_dir = Path(cfg.export_dir).expanduser()
    threads = int(cfg.threads) if cfg.threads else torch.get_num_threads()
    torch.set_num_threads(threads)

    model, processor = load_model(model_dir)
    _ensure_exports(cfg, model_dir, export_dir)
    data_dir = cfg.get("data_dir")
    images = model_images(
        model_dir, model.labels, processor, "val", data_dir, cfg.get("max_images")
    )
    multilabel = is_multilabel(model.config)
    facts = multilabel_facts(model_dir, model.labels) if multilabel else {}
    thresholds = [facts["thresholds"][c] for c in model.labels] if multilabel else None
    size = list(images.x.shape[2:])
    params, gflops = model_cost(model, size)

    runners = _load_runners(cfg, model, model_dir, export_dir, threads)
    print(
        f"benchmark: {len(runners)} formats, {threads} threads, {len(images.y)} val images, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"
    )
    fixed = {"params_m": params, "gflops": gflops, "threads": threads}
    rows = _accuracy_rows(cfg, runners, images, thresholds, fixed)
    lat, thr = _time_rounds(cfg, runners, images.x)
    _add_speed(rows, lat, thr)
    table = list(rows.values())
    out = Path(cfg.output_dir).expanduser()
    write_tables(table, out, cfg.batch_size)
    print(markdown(table, cfg.batch_size))
    print(f"wrote {out / 'benchmark.csv'} and {out / 'benchmark.md'}")
    return table


def markdown(rows: list[dict], batch_size: int) -> str:
    head = (
        "| Format | Status | Size (MB) | Size | Accuracy | Agreement | p50 ms (b=1) | p90 ms | "
        f"Speed-up | FPS (b={batch_size}) | Params (M) | GFLOPs | Threads |"
    )
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        lines.append(
            f"| {r['format']} | {r['status']} | {r['size_mb']:.1f} | {r['size_x']:.2f}x | "
            f"{r['accuracy']:.1%} | {r['agreement']:.1%} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | "
            f"{r['speedup']:.2f}x | {r['fps_batch']:.1f} | {r['params_m']:.1f} | "
            f"{r['gflops']:.2f} | {r['threads']} |"
        )
    return "\n".join(lines)


def write_tables(rows: list[dict], out: Path, batch_size: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "benchmark.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: r[k] for k in COLUMNS} for r in rows)
    (out / "benchmark.md").write_text(markdown(rows, batch_size) + "\n")


def translate_argv(argv: list[str]) -> list[str]:
    """Accept ``--model_path X`` / ``--device=cuda`` (the seed's spelling) as Hydra overrides;
    ``model_path`` is an alias of ``model_dir``, the name every other command uses."""
    argv = [
        a.replace("model_path", "model_dir", 1) if a.lstrip("-+").startswith("model_path") else a
        for a in argv
    ]
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") and arg not in ("--help", "--hydra-help", "--cfg", "--info"):
            key = arg[2:]
            if "=" in key:
                out.append(key)
            elif i + 1 < len(argv):
                out.append(f"{key}={argv[i + 1]}")
                i += 1
            else:
                out.append(key)
        else:
            out.append(arg)
        i += 1
    return out
