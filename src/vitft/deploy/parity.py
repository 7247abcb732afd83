"""Parity of an exported model with the PyTorch fp32 model on the task's images.

Top-1 agreement, accuracy of both, max abs logit difference and, for an export with the OOD score,
how far its scores are from PyTorch's and how often the unknown flag agrees: written to
parity.json per format.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitft.core.errors import VitftError
from vitft.data.folder import Sample
from vitft.data.images import load_image
from vitft.data.transforms import ImageTransform
from vitft.deploy.metadata import PARITY_FILE

log = logging.getLogger(__name__)


@dataclass
class ImageSet:
    """Preprocessed images (float32 N,3,H,W) and their label indices, from one split."""

    x: np.ndarray
    y: np.ndarray
    split: str
    root: str


def load_images(
    samples: list[Sample],
    processor: Any,
    split: str,
    root: str | Path,
    max_images: int | None = None,
) -> ImageSet:
    """``samples`` of ``split`` preprocessed exactly as in training evaluation (no augmentation)."""
    if not samples:
        raise VitftError(f"{root}: the {split} split has no images to check the model on")
    if max_images:
        # Every k-th sample keeps all classes represented.
        step = max(1, len(samples) // int(max_images))
        samples = samples[::step][: int(max_images)]
    transform = ImageTransform(processor)
    x = torch.stack([transform(load_image(p)) for p, _ in samples]).numpy().astype(np.float32)
    y = np.array([label for _, label in samples], dtype=np.int64)
    return ImageSet(x=x, y=y, split=split, root=str(root))


def batched(predict, x: np.ndarray, batch_size: int = 32):
    """``predict`` over ``x`` in batches: one array, or a tuple of them when ``predict`` returns
    tuples (every output of an export)."""
    parts = [predict(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    if isinstance(parts[0], tuple):
        return tuple(np.concatenate(out) for out in zip(*parts, strict=True))
    return np.concatenate(parts)


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


def ood_parity(reference: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """An export's OOD ``scores`` against the PyTorch fp32 ``reference`` scores: the largest
    absolute and relative differences, and how often the unknown flag (score > ``threshold``) is
    the same. Relative to the score, or to the threshold for scores below it: what matters is how
    far a score moves towards the decision (a near-zero kNN score's own relative error does not)."""
    ref = reference.astype(np.float64).reshape(-1)
    got = scores.astype(np.float64).reshape(-1)
    diff = np.abs(got - ref)
    scale = np.maximum(np.abs(ref), abs(threshold) if np.isfinite(threshold) else 0.0)
    return {
        "max_abs_diff": float(diff.max()),
        "max_rel_diff": float((diff / np.maximum(scale, 1e-12)).max()),
        "unknown_agreement": float(((ref > threshold) == (got > threshold)).mean()),
        "unknown_pytorch": float((ref > threshold).mean()),
        "unknown": float((got > threshold).mean()),
        "threshold": float(threshold),
    }


def write_parity(folder: str | Path, result: dict) -> Path:
    path = Path(folder) / PARITY_FILE
    path.write_text(json.dumps(result, indent=2))
    return path


def format_row(fmt: str, result: dict) -> str:
    ood = result.get("ood")
    return (
        f"{fmt:<18} agreement {result['agreement']:7.2%}  acc {result['accuracy']:7.2%} "
        f"(pytorch {result['accuracy_pytorch']:7.2%})  max|dlogit| {result['max_abs_diff']:.2e}"
        + (
            f"  ood: max rel diff {ood['max_rel_diff']:.2e} (tolerance {ood['tolerance']:.0e}), "
            f"unknown agreement {ood['unknown_agreement']:7.2%}"
            if ood
            else ""
        )
        + f"  threshold {result['threshold']:.2%}  {'ok' if result['passed'] else 'FAILED'}"
    )
