"""Shared by the examples: preprocess one image the way metadata.json / the processor says.

Kept free of vitft so each example runs with only its own framework installed.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image


def args() -> tuple[Path, Path]:
    if len(sys.argv) != 3:
        sys.exit(f"usage: python {sys.argv[0]} <model or export folder> <image>")
    return Path(sys.argv[1]), Path(sys.argv[2])


def preprocess(image_path: Path, meta: dict) -> np.ndarray:
    """(1, 3, H, W) float32: RGB, bilinear resize, /255, (x - mean) / std."""
    height, width = meta["image_size"]
    img = Image.open(image_path).convert("RGB").resize((width, height), Image.BILINEAR)
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - np.array(meta["image_mean"], np.float32)) / np.array(meta["image_std"], np.float32)
    return x.transpose(2, 0, 1)[None].astype(np.float32)


def hf_meta(model_dir: Path) -> dict:
    """labels + image facts of an HF model dir (config.json + preprocessor_config.json)."""
    config = json.loads((model_dir / "config.json").read_text())
    proc = json.loads((model_dir / "preprocessor_config.json").read_text())
    size = proc["size"]
    labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    return {
        "labels": labels,
        "image_size": [size["height"], size["width"]],
        "image_mean": proc["image_mean"],
        "image_std": proc["image_std"],
    }


def report(logits: np.ndarray, labels: list[str], run, x, repeats: int = 20) -> None:
    """Print the top label and the median latency of ``run(x)`` over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - start)
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    top = int(np.argmax(logits))
    print(f"{labels[top]} ({probs[top]:.1%})  latency {np.median(times) * 1e3:.1f} ms (median)")
