"""Run any exported model: ``load_exported(folder) -> (predict, metadata)``.

``predict`` maps float32 numpy ``(N, 3, H, W)`` (already normalised, as in metadata.json) to numpy
logits ``(N, num_labels)``; ``load_outputs`` gives every output of the export instead, in the order
of metadata.json's ``outputs`` (logits, then ``ood_score`` ``(N,)`` when the graph computes it).
Each runtime is imported only when its format is loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from vitft.core.errors import VitftError
from vitft.data.transforms import processor_facts
from vitft.deploy.metadata import METADATA_FILE, output_names_of, read_metadata
from vitft.modelio.hf import load_model

log = logging.getLogger(__name__)

Predict = Callable[[np.ndarray], np.ndarray]
Outputs = Callable[[np.ndarray], tuple[np.ndarray, ...]]


def _torch_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(int(threads))


def torch_outputs(model: Callable) -> Outputs:
    """``model`` (pixels -> logits, or a tuple of outputs) as a numpy ``Outputs`` function."""

    def run(x: np.ndarray) -> tuple[np.ndarray, ...]:
        with torch.inference_mode():
            out = model(torch.from_numpy(np.ascontiguousarray(x, np.float32)))
        return tuple(o.numpy() for o in out) if isinstance(out, tuple) else (out.numpy(),)

    return run


def _pytorch(folder: Path, meta: dict, threads: int | None) -> Outputs:
    _torch_threads(threads)
    return torch_outputs(load_model(folder)[0])


def _torchscript(folder: Path, meta: dict, threads: int | None) -> Outputs:
    _torch_threads(threads)
    return torch_outputs(torch.jit.load(str(folder / meta["file"]), map_location="cpu").eval())


CPU_PROVIDER = "CPUExecutionProvider"
# Best first: TensorRT (engines built for this GPU, cached next to the model), then CUDA.
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
DEVICES = ("cpu", "cuda", "auto")


def ort_providers(device: str = "cpu", available: list[str] | None = None) -> list[str]:
    """ONNX Runtime execution providers for ``device`` (cpu | cuda | auto), best first.

    cuda/auto: TensorRT, then CUDA, whichever this onnxruntime has, then the CPU as ONNX Runtime's
    fallback for ops a GPU provider can't run. cuda without a GPU provider warns and runs on the
    CPU (install onnxruntime-gpu: ``pip install vitft[gpu]``).
    """
    if device not in DEVICES:
        raise VitftError(f"device={device!r} is unknown for ONNX Runtime; use one of {DEVICES}")
    if device == "cpu":
        return [CPU_PROVIDER]
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    gpu = [p for p in GPU_PROVIDERS if p in available]
    if not gpu and device == "cuda":
        log.warning(
            "device=cuda: this onnxruntime has no GPU provider (it has %s); running on the CPU. "
            "For the GPU: pip uninstall onnxruntime && pip install 'vitft[gpu]'",
            ", ".join(available),
        )
    return [*gpu, CPU_PROVIDER]


def _provider_options(providers: list[str], folder: Path) -> list:
    """TensorRT builds an engine per model and GPU (minutes): cache it in the export folder."""
    return [
        (p, {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(folder / "trt_cache")})
        if p == "TensorrtExecutionProvider"
        else p
        for p in providers
    ]


def _onnxruntime(folder: Path, meta: dict, threads: int | None, device: str = "cpu") -> Outputs:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    # Idle ORT threads otherwise busy-wait after each run and starve other work on the same
    # cores (another model, the camera loop, or the other formats in benchmark.py).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ort_providers(device)
    session = ort.InferenceSession(
        str(folder / meta["file"]), opts, providers=_provider_options(providers, folder)
    )
    if session.get_providers()[0] != providers[0]:  # e.g. CUDA libraries missing at run time
        log.warning(
            "ONNX Runtime could not start %s for %s; running on %s",
            providers[0],
            folder,
            session.get_providers()[0],
        )
    name = session.get_inputs()[0].name
    outputs = output_names_of(meta)

    def run(x: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(session.run(outputs, {name: np.ascontiguousarray(x, np.float32)}))

    return run


def _litert(folder: Path, meta: dict, threads: int | None) -> Outputs:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(str(folder / meta["file"]), num_threads=int(threads or 1))
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]["index"]
    # In the order of the PyTorch outputs (litert-torch names them output_0, output_1, ...).
    outs = [d["index"] for d in interpreter.get_output_details()]

    def run(x: np.ndarray) -> tuple[np.ndarray, ...]:
        # The graph has batch 1 (edge devices run one frame at a time).
        rows = []
        for image in np.ascontiguousarray(x, np.float32):
            interpreter.set_tensor(inp, image[None])
            interpreter.invoke()
            rows.append([interpreter.get_tensor(o).copy() for o in outs])
        return tuple(np.concatenate(col, axis=0) for col in zip(*rows, strict=True))

    return run


def _openvino(folder: Path, meta: dict, threads: int | None) -> Outputs:
    import openvino as ov

    config: dict = {"PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    if meta.get("precision") == "fp32":
        # CPUs with bf16/AMX would otherwise run an fp32 model in bf16 by default.
        config["INFERENCE_PRECISION_HINT"] = "f32"
    compiled = ov.Core().compile_model(str(folder / meta["file"]), "CPU", config)
    outputs = [compiled.output(name) for name in output_names_of(meta)]

    def run(x: np.ndarray) -> tuple[np.ndarray, ...]:
        result = compiled(np.ascontiguousarray(x, np.float32))
        return tuple(result[o] for o in outputs)

    return run


RUNTIMES: dict[str, Callable[[Path, dict, int | None], Outputs]] = {
    "pytorch": _pytorch,
    "torchscript": _torchscript,
    "onnxruntime": _onnxruntime,
    "litert": _litert,
    "openvino": _openvino,
}


def load_outputs(
    folder: str | Path, threads: int | None = None, device: str = "cpu"
) -> tuple[Outputs, dict]:
    """Load an export folder (or an HF model dir, run in PyTorch fp32: logits only) for inference;
    ``run(x)`` returns the outputs named in metadata.json's ``outputs``, in that order.

    ``threads``: intra-op threads (torch.set_num_threads / ORT intra_op_num_threads / LiteRT
    num_threads / OpenVINO INFERENCE_NUM_THREADS); None keeps each runtime's default.
    ``device``: cpu, or cuda/auto for ONNX Runtime exports (see ``ort_providers``).
    """
    folder = Path(folder)
    if not (folder / METADATA_FILE).is_file() and (folder / "config.json").is_file():
        model, processor = load_model(folder)
        meta = {
            "format": "pytorch",
            "precision": "fp32",
            "runtime": "pytorch",
            "file": "model.safetensors",
            "labels": model.labels,
            **processor_facts(processor),
        }
        _cpu_only(folder, "pytorch", device)
        return _pytorch(folder, meta, threads), meta
    meta = read_metadata(folder)
    runtime = meta.get("runtime")
    if runtime not in RUNTIMES:
        raise VitftError(
            f"{folder / METADATA_FILE}: runtime {runtime!r} is unknown; known: {sorted(RUNTIMES)}"
        )
    if not (folder / meta["file"]).is_file():
        raise VitftError(f"{folder}: model file {meta['file']} named in {METADATA_FILE} is missing")
    if runtime == "onnxruntime":
        return _onnxruntime(folder, meta, threads, device), meta
    _cpu_only(folder, runtime, device)
    return RUNTIMES[runtime](folder, meta, threads), meta


def load_exported(
    folder: str | Path, threads: int | None = None, device: str = "cpu"
) -> tuple[Predict, dict]:
    """``load_outputs`` for the logits alone: ``predict(x) -> logits``."""
    run, meta = load_outputs(folder, threads, device)
    return (lambda x: run(x)[0]), meta


def _cpu_only(folder: Path, runtime: str, device: str) -> None:
    if device != "cpu":
        raise VitftError(
            f"{folder}: device={device} is for ONNX Runtime exports; {runtime} runs on the CPU"
        )
