"""Inference backends: float32 pixels ``(N, 3, H, W)`` in, logits ``(N, classes)`` out.

Every backend says what it is (``name``, ``precision``) and what it can do beyond logits: only a
backend with a PyTorch model (``torch_model``) can explain its answers with heatmaps, which need
the model's gradients and attentions. Compiled exports (ONNX, TorchScript int8, LiteRT) have none.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import torch
from torch import nn

from vitft.deploy.runtime import load_exported
from vitft.models.ood import OODScorer, ScoredClassifier, view_features


def pick_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Backend(ABC):
    """One way of running a model; the Predictor owns everything else (files, preprocessing)."""

    name: str = "backend"
    precision: str = "fp32"

    @abstractmethod
    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Logits (float32, on the CPU) of a preprocessed batch."""

    @property
    def torch_model(self) -> nn.Module | None:
        """The PyTorch model behind the backend (heatmaps need it), else None."""
        return None

    @property
    def description(self) -> str:
        return f"{self.name} ({self.precision})"


class TorchBackend(Backend):
    """The PyTorch model as a backend (eval mode, no grad)."""

    name = "pytorch"

    def __init__(self, model: nn.Module, device: str | torch.device | None = "cpu"):
        self.device = pick_device(str(device) if device else None)
        self.model = model.eval().to(self.device)

    @torch.inference_mode()
    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values.to(self.device)).float().cpu()

    @property
    def torch_model(self) -> nn.Module:
        return self.model

    @torch.inference_mode()
    def features(self, pixel_values: torch.Tensor, views: str = "none") -> torch.Tensor:
        """``(N, V, D)`` pooled backbone features of each image's OOD ``views``."""
        return view_features(self.model, pixel_values.to(self.device), views).float().cpu()

    @torch.inference_mode()
    def scored(
        self, pixel_values: torch.Tensor, scorer: OODScorer
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and OOD scores of one pass (``ScoredClassifier``, what exports run too)."""
        scorer = scorer.to(self.device)
        logits, scores = ScoredClassifier(self.model, scorer)(pixel_values.to(self.device))
        return logits.float().cpu(), scores.float().cpu()


class ExportedBackend(Backend):
    """An export folder written by export.py, run by its own runtime (metadata.json says which)."""

    def __init__(self, folder: str | Path, threads: int | None = None):
        self.folder = Path(folder)
        self._predict, self.metadata = load_exported(self.folder, threads=threads)
        self.name = str(self.metadata.get("format", "export"))
        self.precision = str(self.metadata.get("precision", "fp32"))

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._predict(pixel_values.numpy().astype("float32")))

    @property
    def source_model(self) -> Path | None:
        """The fp32 model dir this export was made from, when it is still there."""
        source = self.metadata.get("source_model")
        return Path(source) if source and (Path(source) / "config.json").is_file() else None
