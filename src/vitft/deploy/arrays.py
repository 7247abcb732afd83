"""Batch arithmetic on numpy arrays and torch tensors alike: what the Predictor does to pixels and
logits, whichever a backend takes (numpy: an ONNX Runtime export run without torch)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def tta_views(pixel_values: Any) -> list[Any]:
    """The image, its flips and (square images only) its 90/180/270 degree rotations (torch
    tensors or numpy arrays ``(..., H, W)``, views of the same kind)."""
    if isinstance(pixel_values, np.ndarray):
        flip, rot90 = np.flip, (lambda x, k: np.rot90(x, k, axes=(-2, -1)))
    else:
        flip, rot90 = (lambda x, d: x.flip(d)), (lambda x, k: x.rot90(k, dims=(-2, -1)))
    views = [pixel_values, flip(pixel_values, -1), flip(pixel_values, -2)]
    if pixel_values.shape[-1] == pixel_values.shape[-2]:
        views += [rot90(pixel_values, k) for k in (1, 2, 3)]
    return views


def torch_module():
    """torch, for arrays that are torch tensors (so it is loaded already)."""
    import torch

    return torch


def stack(arrays: Sequence[Any]) -> Any:
    """One batch of per-image pixels (or per-view outputs): numpy or torch, as they are."""
    if isinstance(arrays[0], np.ndarray):
        return np.stack(arrays)
    return torch_module().stack(list(arrays))


def normalized(logits: Any, multilabel: bool) -> Any:
    """Softmax (multi-label: per-class sigmoid) of numpy or torch logits, in float32."""
    if not isinstance(logits, np.ndarray):
        logits = torch_module().as_tensor(logits).float()
        return logits.sigmoid() if multilabel else logits.softmax(-1)
    logits = logits.astype(np.float32, copy=False)
    if multilabel:
        return 1 / (1 + np.exp(-logits))
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def contiguous(x: Any) -> Any:
    return np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x.contiguous()
