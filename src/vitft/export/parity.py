"""Parity of an exported model with the PyTorch fp32 model on the task's images.

Top-1 agreement, accuracy of both, max abs logit difference: written to parity.json per format.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from vitft.data.images import load_image
from vitft.data.sources import infer_source, scan_data
from vitft.data.transforms import ImageTransform
from vitft.errors import VitftError
from vitft.export.metadata import PARITY_FILE

log = logging.getLogger(__name__)


@dataclass
class ImageSet:
    """Preprocessed images (float32 N,3,H,W) and their label indices, from one split."""

    x: np.ndarray
    y: np.ndarray
    split: str
    root: str


def run_data_dir(model_dir: str | Path) -> dict | None:
    """The data section of the run that wrote ``model_dir`` (``<run>/config.yaml``), if any."""
    config = Path(model_dir).resolve().parent / "config.yaml"
    if not config.is_file():
        return None
    data = OmegaConf.to_container(OmegaConf.load(config)).get("data") or {}
    return data if data.get("data_dir") else None


def run_data(model_dir: str | Path, data_dir: str | None = None) -> dict:
    """The data settings to check ``model_dir`` on: its run's, with ``data_dir=`` overriding."""
    data = dict(run_data_dir(model_dir) or {})
    if data_dir:
        data.update(data_dir=data_dir, source=infer_source(data_dir))
    if not data.get("data_dir"):
        raise VitftError(
            f"no images to check the model on: {Path(model_dir).parent}/config.yaml has no "
            "data.data_dir; pass data_dir=/path/to/dataset (with train/ and val/ class folders)"
        )
    return data


def load_images(
    data: dict,
    labels: list[str],
    processor: Any,
    split: str = "val",
    max_images: int | None = None,
    multilabel: bool = False,
) -> ImageSet:
    """Images of ``split`` of ``data`` (a run's data settings, see ``run_data``) preprocessed
    exactly as in training evaluation (no augmentation); multi-label ``y`` is 0/1 per class."""
    splits = scan_data({**data, "classes": list(labels)}, multilabel)
    samples = splits.split(split)
    if not samples:
        raise VitftError(f"{splits.root}: the {split} split has no images to check parity on")
    if max_images:
        # Every k-th sample keeps all classes represented.
        step = max(1, len(samples) // int(max_images))
        samples = samples[::step][: int(max_images)]
    transform = ImageTransform(processor)
    x = torch.stack([transform(load_image(p)) for p, _ in samples]).numpy().astype(np.float32)
    y = np.array([label for _, label in samples], dtype=np.int64)
    return ImageSet(x=x, y=y, split=split, root=str(splits.root))


def batched(predict, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    return np.concatenate([predict(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def parity(
    reference: np.ndarray, logits: np.ndarray, y: np.ndarray, thresholds: list | None = None
) -> dict:
    """Compare ``logits`` of a format with the PyTorch fp32 ``reference`` logits.

    Single-label: top-1 agreement. Multi-label (``y`` is 0/1 per class): agreement is the share
    of images whose label set (sigmoid >= per-class ``thresholds``) is the same, accuracy the
    subset accuracy.
    """
    if y.ndim == 2:
        t = np.asarray(thresholds if thresholds is not None else [0.5] * y.shape[1])
        ref_set = 1 / (1 + np.exp(-reference)) >= t
        got_set = 1 / (1 + np.exp(-logits)) >= t
        return {
            "images": int(len(y)),
            "agreement": float((ref_set == got_set).all(-1).mean()),
            "accuracy": float((got_set == y.astype(bool)).all(-1).mean()),
            "accuracy_pytorch": float((ref_set == y.astype(bool)).all(-1).mean()),
            "max_abs_diff": float(np.abs(reference - logits).max()),
            "label_sets": True,
        }
    ref_top, top = reference.argmax(-1), logits.argmax(-1)
    return {
        "images": int(len(y)),
        "agreement": float((ref_top == top).mean()),
        "accuracy": float((top == y).mean()),
        "accuracy_pytorch": float((ref_top == y).mean()),
        "max_abs_diff": float(np.abs(reference - logits).max()),
    }


def write_parity(folder: str | Path, result: dict) -> Path:
    path = Path(folder) / PARITY_FILE
    path.write_text(json.dumps(result, indent=2))
    return path


def format_row(fmt: str, result: dict) -> str:
    return (
        f"{fmt:<18} agreement {result['agreement']:7.2%}  acc {result['accuracy']:7.2%} "
        f"(pytorch {result['accuracy_pytorch']:7.2%})  max|dlogit| {result['max_abs_diff']:.2e}"
        f"  threshold {result['threshold']:.2%}  {'ok' if result['passed'] else 'FAILED'}"
    )
