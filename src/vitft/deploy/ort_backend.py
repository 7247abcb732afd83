"""An ONNX Runtime export as a Predictor backend, without torch: numpy pixels in, numpy out.

What a prediction on an export needs and nothing more: the ONNX Runtime session (providers picked
for ``device``; ``vitft.deploy.runtime`` opens its ORT sessions here too), the export's
metadata.json blocks read as plain data (the labels, the unknown flag's threshold: the OOD score
itself is an output of the graph; the operating point), and its own preprocessing
(``vitft.deploy.preprocess``). The PyTorch path (``vitft.deploy.backends``) reads the same blocks
into its torch objects; the two give the same decisions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitft.core.errors import VitftError
from vitft.deploy.metadata_file import (
    OOD_OUTPUT,
    OUTPUT_NAME,
    metadata_operating_point,
    model_file,
    output_names_of,
    read_metadata,
)
from vitft.deploy.preprocess import Preprocess, export_preprocess
from vitft.modelio.ood_file import has_ood

log = logging.getLogger(__name__)


CPU_PROVIDER = "CPUExecutionProvider"
# Best first: TensorRT (engines built for this GPU, cached next to the model), then CUDA.
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
GPU_INSTALL = 'pip uninstall -y onnxruntime && pip install "vitft[gpu]"'


def check_device(device: str | None) -> str:
    """``device`` as given (cpu | auto | cuda | cuda:N), None meaning auto; else a clear error."""
    device = str(device or "auto")
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "auto", "cuda") or (index and (kind != "cuda" or not index.isdigit())):
        raise VitftError(f"device={device!r} is unknown; use cpu, cuda, cuda:N or auto")
    return device


def ort_providers(device: str, available: list[str]) -> list[str]:
    """ONNX Runtime execution providers to ask for on ``device``, best first: TensorRT, then
    CUDA, whichever ``available`` has, then the CPU for the ops a GPU provider can't run.

    cuda without a GPU provider is an error naming the extra to install; auto runs on the CPU.
    """
    if device == "cpu":
        return [CPU_PROVIDER]
    gpu = [p for p in GPU_PROVIDERS if p in available]
    if not gpu and device != "auto":
        raise VitftError(
            f"device={device}: this onnxruntime has no CUDAExecutionProvider or "
            f"TensorrtExecutionProvider (it has {', '.join(available)}); for the GPU: {GPU_INSTALL}"
        )
    return [*gpu, CPU_PROVIDER]


def _provider_options(providers: list[str], folder: Path, device: str) -> list:
    """The GPU index for cuda:N; TensorRT builds an engine per model and GPU (minutes): cache it
    in the export folder."""
    gpu = {"device_id": int(device.partition(":")[2] or 0)}
    trt = {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(folder / "trt_cache")}
    options = {"TensorrtExecutionProvider": {**gpu, **trt}, "CUDAExecutionProvider": gpu}
    return [(p, options[p]) if p in options else p for p in providers]


def ort_session(folder: Path, meta: dict, threads: int | None, device: str | None) -> Any:
    """An ORT session of the export's model file on ``device``; ``meta["providers"]``: the
    providers it really has."""
    import onnxruntime as ort

    device = check_device(device)
    path = model_file(folder, meta)
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    # Idle ORT threads otherwise busy-wait after each run and starve other work on the same
    # cores (another model, the camera loop, or the other formats in benchmark.py).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ort_providers(device, ort.get_available_providers())
    session = ort.InferenceSession(
        str(path), opts, providers=_provider_options(providers, folder, device)
    )
    used = list(session.get_providers())
    if providers[0] != CPU_PROVIDER and not set(used) & set(GPU_PROVIDERS):
        # e.g. onnxruntime-gpu without the CUDA/cuDNN libraries it was built for
        message = f"ONNX Runtime could not start {providers[0]} for {folder} (it has {used})"
        if device != "auto":
            raise VitftError(f"device={device}: {message}: check the CUDA and cuDNN libraries")
        log.warning("device=auto: %s; running on the CPU", message)
    meta["providers"] = used
    return session


class BackendInfo:
    """What every backend says about itself, torch or not: ``name``, ``precision``, the
    providers it really runs on and whether ``scored`` gives the OOD score with the logits."""

    name: str = "backend"
    precision: str = "fp32"
    scores_ood: bool = False
    providers: list[str] = []
    torch_model = None  # a PyTorch backend's model (heatmaps need it); exports have none

    @property
    def description(self) -> str:
        return f"{self.name} ({self.precision})"

    def no_ood_score(self) -> VitftError:
        return VitftError(
            f"the OOD score is not an output of the {self.description} backend: predict with "
            "the PyTorch model dir (<run>/model), or re-export it with export.py ood=true"
        )


class ExportOutputs(BackendInfo):
    """An export folder's named outputs (logits, and the OOD score when its graph has one), on
    whatever arrays ``_outputs`` returns: numpy here, torch in ``vitft.deploy.backends``."""

    folder: Path
    metadata: dict
    outputs: list[str]

    def _describe(self) -> None:
        self.providers = list(self.metadata["providers"])
        self.name = str(self.metadata.get("format", "export"))
        self.precision = str(self.metadata.get("precision", "fp32"))
        self.outputs = output_names_of(self.metadata)
        self.scores_ood = OOD_OUTPUT in self.outputs

    def _outputs(self, pixel_values: Any) -> dict[str, Any]:
        raise NotImplementedError

    def __call__(self, pixel_values: Any) -> Any:
        return self._outputs(pixel_values)[OUTPUT_NAME]

    def scored(self, pixel_values: Any, scorer: Any) -> tuple[Any, Any]:
        """Logits and the graph's OOD scores ``(N,)``; the unknown flag is ``scorer``'s."""
        if not self.scores_ood:
            raise self.no_ood_score()
        out = self._outputs(pixel_values)
        return out[OUTPUT_NAME], out[OOD_OUTPUT].reshape(-1)

    @property
    def source_model(self) -> Path | None:
        """The fp32 model dir this export was made from, when it is still there."""
        source = self.metadata.get("source_model")
        return Path(source) if source and (Path(source) / "config.json").is_file() else None


class OrtBackend(ExportOutputs):
    """An ONNX Runtime export folder: float32 numpy ``(N, 3, H, W)`` in, numpy logits out (the
    interface of ``vitft.deploy.backends.Backend``, on numpy arrays)."""

    def __init__(self, folder: str | Path, threads: int | None = None, device: str | None = "cpu"):
        self.folder = Path(folder)
        self.metadata = read_metadata(self.folder)
        if self.metadata.get("runtime") != "onnxruntime":
            raise VitftError(
                f"{self.folder}: a {self.metadata.get('runtime')} export; OrtBackend runs "
                "onnxruntime exports (Predictor.from_path picks the backend for the others)"
            )
        self.session = ort_session(self.folder, self.metadata, threads, device)
        self.input_name = self.session.get_inputs()[0].name
        self._describe()

    def _outputs(self, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
        feed = {self.input_name: np.ascontiguousarray(pixel_values, np.float32)}
        return dict(zip(self.outputs, self.session.run(self.outputs, feed), strict=True))


@dataclass
class ExportScorer:
    """metadata.json's ``ood`` block: what turns the graph's OOD score into the unknown flag
    (the scorer's tensors are constants in the graph)."""

    method: str
    threshold: float
    views: str | None = None
    k: int = 5
    acceptance: float | None = None
    info: dict = field(default_factory=dict)

    @classmethod
    def from_metadata(cls, meta: dict) -> ExportScorer | None:
        block = meta.get("ood")
        if not block:
            return None
        return cls(
            method=block["method"],
            threshold=float(block["threshold"]),
            views=block["views"],
            k=int(block.get("k", 5)),
            acceptance=block.get("acceptance"),
            info=dict(block.get("facts") or {}),
        )

    def unknown(self, scores: Any) -> np.ndarray:
        return np.asarray(scores) > self.threshold


def export_scorer(backend: Any, meta: dict, ood: bool, read: Callable[[dict], Any]) -> Any:
    """The export's OOD scorer, ``read`` from its ``ood`` block, when ``ood`` asks for it and the
    graph computes the score (else None, with a warning when the model dir it was made from has a
    scorer the export left out); the ONNX and the PyTorch paths each pass their own ``read``."""
    scorer = read(meta) if ood and backend.scores_ood else None
    if ood and scorer is None and has_ood(meta.get("source_model")):
        log.warning(
            "no ood_score: the %s export was made without the OOD scorer of %s; "
            "re-export it with export.py ood=true",
            backend.description,
            meta.get("source_model"),
        )
    return scorer


def lean_export_parts(
    folder: str | Path, device: str | None, ood: bool
) -> tuple[OrtBackend, list[str], Preprocess, dict]:
    """(backend, labels, preprocessing, Predictor arguments) of an ONNX Runtime export, without
    torch: what ``predictor_torch.export_parts`` gives, as numpy-side objects."""
    backend = OrtBackend(folder, device=device)
    meta = backend.metadata
    scorer = export_scorer(backend, meta, ood, ExportScorer.from_metadata)
    args = {"ood": scorer, "operating_point": metadata_operating_point(meta), "meta": meta}
    return backend, meta["labels"], export_preprocess(folder, meta), args
