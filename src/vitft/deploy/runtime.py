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
from vitft.core.files import sha256
from vitft.data.transforms import processor_facts
from vitft.deploy.metadata_file import METADATA_FILE, model_file, output_names_of, read_metadata
from vitft.deploy.ort_backend import check_device, ort_session
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
    path = folder / meta["file"]
    check_file_sha256(path, meta)  # TorchScript is code: only the file that export.py wrote runs
    return torch_outputs(torch.jit.load(str(path), map_location="cpu").eval())


def check_file_sha256(path: Path, meta: dict) -> None:
    """Refuse ``path`` unless its sha256 is the ``file_sha256`` its metadata.json records."""
    expected = meta.get("file_sha256")
    if not expected:
        raise VitftError(
            f"{path.parent / METADATA_FILE} records no file_sha256 for {path.name}, so it cannot "
            "be checked before loading: re-export it with export.py"
        )
    actual = sha256(path)
    if actual != expected:
        raise VitftError(
            f"{path} has sha256 {actual[:16]}..., not the {expected[:16]}... that "
            f"{METADATA_FILE} records: the file was changed or replaced; re-export it"
        )


def _onnxruntime(folder: Path, meta: dict, threads: int | None, device: str = "cpu") -> Outputs:
    """An ORT session on ``device``; ``meta["providers"]``: the providers it really has."""
    session = ort_session(folder, meta, threads, device)
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
    folder: str | Path, threads: int | None = None, device: str | None = "cpu"
) -> tuple[Outputs, dict]:
    """Load an export folder (or an HF model dir, run in PyTorch fp32: logits only) for inference;
    ``run(x)`` returns the outputs named in metadata.json's ``outputs``, in that order. The
    metadata returned also has ``providers``: what runs the model in this process.

    ``threads``: intra-op threads (torch.set_num_threads / ORT intra_op_num_threads / LiteRT
    num_threads / OpenVINO INFERENCE_NUM_THREADS); None keeps each runtime's default.
    ``device``: cpu | cuda | cuda:N | auto (None). ONNX Runtime exports run on its TensorRT or
    CUDA provider for cuda (an error when it has neither) and auto (the CPU when it has neither);
    the other runtimes run on the CPU, and refuse cuda.
    """
    folder = Path(folder)
    device = check_device(device)
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
        return _on_cpu(folder, meta, device, lambda: _pytorch(folder, meta, threads))
    meta = read_metadata(folder)
    runtime = meta.get("runtime")
    if runtime not in RUNTIMES:
        raise VitftError(
            f"{folder / METADATA_FILE}: runtime {runtime!r} is unknown; known: {sorted(RUNTIMES)}"
        )
    model_file(folder, meta)
    if runtime == "onnxruntime":
        return _onnxruntime(folder, meta, threads, device), meta
    return _on_cpu(folder, meta, device, lambda: RUNTIMES[runtime](folder, meta, threads))


def load_exported(
    folder: str | Path, threads: int | None = None, device: str | None = "cpu"
) -> tuple[Predict, dict]:
    """``load_outputs`` for the logits alone: ``predict(x) -> logits``."""
    run, meta = load_outputs(folder, threads, device)
    return (lambda x: run(x)[0]), meta


def _on_cpu(folder: Path, meta: dict, device: str, load: Callable[[], Outputs]):
    """A runtime without a GPU path: cpu or auto run it on the CPU; cuda is refused."""
    runtime = meta["runtime"]
    if device not in ("cpu", "auto"):
        raise VitftError(
            f"{folder}: device={device} is for ONNX Runtime exports; {runtime} runs on the CPU "
            "(use device=cpu, or export format onnx for the GPU)"
        )
    meta["providers"] = [f"{runtime} cpu"]
    return load(), meta
