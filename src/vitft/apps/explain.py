"""explain(cfg): one PNG per input image (the image, then one heatmap per method)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from vitft.core.errors import VitftError
from vitft.core.plots import heatmap_figure, save
from vitft.data.images import load_image
from vitft.deploy.explain import Explainer, unknown_map, usable_methods
from vitft.deploy.predictor import Predictor, resolve_inputs

log = logging.getLogger(__name__)


def explain(cfg: Any) -> list[Path]:
    """vitft explain: one PNG per input image (image | one map per method) in ``cfg.output_dir``."""
    if not cfg.get("inputs"):
        raise VitftError("set inputs=<image | folder | glob> (a list works too)")
    device = cfg.get("device", "auto")
    predictor = Predictor.from_path(cfg.get("model_dir"), cfg.get("ckpt_path"), device=device)
    model = predictor.backend.torch_model
    if model is None:
        raise VitftError(
            f"explain needs a PyTorch model; {cfg.model_dir} is a {predictor.backend.description} "
            "export. Pass model_dir=<run>/model (or ckpt_path=) instead"
        )
    explainer = Explainer(model, float(cfg.discard_ratio), str(cfg.head_fusion))
    methods = usable_methods(explainer, cfg.methods)
    target = None
    if cfg.get("target"):
        if cfg.target not in predictor.labels:
            raise VitftError(
                f"target={cfg.target!r} is not a class of the model: {predictor.labels}"
            )
        target = predictor.labels.index(cfg.target)
    inputs = cfg.inputs if isinstance(cfg.inputs, str) else list(cfg.inputs)
    paths, bad = resolve_inputs(inputs)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for path in paths:
        try:
            image = load_image(path)
        except (OSError, ValueError) as err:
            log.warning("skipped %s: %s", path, err)
            continue
        pixels = predictor.transform(image)[None]
        probs, scores = predictor.outputs(pixels)
        probs = probs[0]
        cls = int(probs.argmax()) if target is None else target
        on = next(model.parameters()).device
        title = f"{path.name}: {predictor.labels[int(probs.argmax())]} {float(probs.max()):.2f}"
        if scores is not None and bool(predictor.ood.unknown(scores)[0]) and target is None:
            # Flagged unknown: a class's evidence would explain the wrong thing.
            cam = unknown_map(model, predictor.ood.to(on), pixels.to(on))
            maps, what = {"unknown": cam.detach().cpu()}, None
            threshold = predictor.ood.threshold
            title = f"{path.name}: unknown (ood {float(scores[0]):.3g} > {threshold:.3g})"
        else:
            maps = explainer.explain(pixels.to(on), methods, torch.tensor([cls], device=on))
            maps = {m: v.detach().cpu() for m, v in maps.items()}
            what = predictor.labels[cls]
        fig = heatmap_figure([image], {m: [v[0]] for m, v in maps.items()}, [title], explained=what)
        written.append(save(fig, out_dir / f"{path.stem}_explain.png"))
    for b in bad:
        log.warning("skipped %s: %s", b.path, b.reason)
    print(f"wrote {len(written)} heatmap figure(s) to {out_dir}")
    return written
