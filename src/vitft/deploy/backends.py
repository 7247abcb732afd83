"""Inference backends: float32 pixels ``(N, 3, H, W)`` in, logits ``(N, classes)`` out.

Every backend says what it is (``name``, ``precision``) and what it can do beyond logits:
``scores_ood``: ``scored`` gives the OOD score with the logits (the PyTorch model with its scorer,
or an export whose graph computes it); only a backend with a PyTorch model (``torch_model``) can
explain its answers with heatmaps, which need the model's gradients and attentions. Compiled
exports (ONNX, TorchScript int8, LiteRT, OpenVINO) have none.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from vitft.deploy.ort_backend import BackendInfo, ExportOutputs
from vitft.deploy.runtime import load_outputs
from vitft.models.ood import OODScorer, ScoredClassifier, view_features


def pick_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# Lightning precisions that train in a lower float type: served under autocast to it on CUDA.
AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


class Backend(BackendInfo, ABC):
    """One way of running a model; the Predictor owns everything else (files, preprocessing)."""

    @abstractmethod
    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Logits (float32, on the CPU) of a preprocessed batch."""

    def scored(
        self, pixel_values: torch.Tensor, scorer: OODScorer
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and OOD scores ``(N,)`` of one pass (backends with ``scores_ood``)."""
        raise self.no_ood_score()


class TorchBackend(Backend):
    """The PyTorch model as a backend (eval mode, no grad). On CUDA, fp32 matmuls use TF32 and a
    model trained in ``bf16-mixed``/``16-mixed`` (``precision``, what vitft.json records) runs
    under autocast to that type, as it was validated in training."""

    name = "pytorch"
    scores_ood = True

    def __init__(
        self, model: nn.Module, device: str | torch.device | None = "cpu", precision: str = ""
    ):
        self.device = pick_device(str(device) if device else None)
        self.model = model.eval().to(self.device)
        cuda = self.device.type == "cuda"
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.autocast = AUTOCAST.get(str(precision)) if cuda else None
        self.precision = str(precision) if self.autocast else "fp32"
        mixed = f" {precision}" if self.autocast else ""
        self.providers = [f"pytorch {self.device.type}{mixed}"]

    def _autocast(self):
        if self.autocast is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    @torch.inference_mode()
    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.model(pixel_values.to(self.device)).float().cpu()

    @property
    def torch_model(self) -> nn.Module:
        return self.model

    @torch.inference_mode()
    def features(self, pixel_values: torch.Tensor, views: str | None = None) -> torch.Tensor:
        """Pooled backbone features ``(N, D)``; with OOD ``views``, the scorer's ``(N, V, D')``
        multi-scale features of each image's views (``vitft.models.ood.view_features``)."""
        pixel_values = pixel_values.to(self.device)
        if views is None:
            return self.model.features(pixel_values).float().cpu()
        return view_features(self.model, pixel_values, views).float().cpu()

    @torch.inference_mode()
    def scored(
        self, pixel_values: torch.Tensor, scorer: OODScorer
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and OOD scores of one pass (``ScoredClassifier``, what exports run too); not
        under autocast: the threshold was set on fp32 scores."""
        scorer = scorer.to(self.device)
        logits, scores = ScoredClassifier(self.model, scorer)(pixel_values.to(self.device))
        return logits.float().cpu(), scores.float().cpu()


class ExportedBackend(ExportOutputs, Backend):
    """An export folder written by export.py, run by its own runtime (metadata.json says which).
    With a scorer in its graph (metadata ``ood``), its second output is the OOD score.
    ``device``: see ``vitft.deploy.runtime.load_outputs`` (cuda never falls back to the CPU)."""

    def __init__(self, folder: str | Path, threads: int | None = None, device: str | None = "cpu"):
        self.folder = Path(folder)
        self._run, self.metadata = load_outputs(self.folder, threads=threads, device=device)
        self._describe()

    def _outputs(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self._run(pixel_values.numpy().astype("float32"))
        return {name: torch.from_numpy(o) for name, o in zip(self.outputs, out, strict=True)}
