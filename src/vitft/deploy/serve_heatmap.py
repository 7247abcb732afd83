"""/explain's heatmap in `vitft serve`: the PyTorch side (torch, the model's transformers code,
matplotlib's colour map). ``serve_service`` loads it only for a PyTorch model dir, so an export
is served without torch (a deploy-only install has none)."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

from PIL import Image

from vitft.core.plots import overlay
from vitft.deploy.explain import Explainer, methods_for
from vitft.deploy.predictor import Predictor
from vitft.modelio.hf import load_model

__all__ = ["heatmap_explainer", "heatmap_png", "methods_for"]


def heatmap_explainer(model_dir: Path) -> Any:
    """An Explainer on its own copy of the model: eager attention must not slow /predict."""
    model, _ = load_model(model_dir)
    return Explainer(model)


def heatmap_png(explainer: Any, predictor: Predictor, image: Image.Image) -> str:
    """The heatmap of ``image`` over a thumbnail of it: a base64 PNG."""
    pixels = predictor.transform(image)[None]
    method = "gradattn" if "gradattn" in explainer.methods else "gradcam"
    heat = explainer.explain(pixels, [method])[method][0]
    buf = io.BytesIO()
    shown = image.copy()
    shown.thumbnail((384, 384))
    overlay(shown, heat).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()
