"""prune(cfg): score heads on training images, remove the least important, save an HF model dir."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from vitft.data.transforms import processor_facts
from vitft.deploy.parity import load_images, run_data
from vitft.modelio.hf import load_model, save_hf
from vitft.models.pruning import head_counts, head_importance, lowest_heads, prune_heads


def prune(cfg) -> dict:
    """Score heads on training images, remove ``cfg.heads`` per layer, save an HF model dir."""

    model_dir = Path(cfg.model_dir).expanduser()
    model, processor = load_model(model_dir)
    data = run_data(model_dir, cfg.get("data_dir"))
    images = load_images(data["data_dir"], model.labels, processor, "train", cfg.importance_images)
    x, y = torch.from_numpy(images.x), torch.from_numpy(images.y)
    bs = int(cfg.batch_size)
    scores = head_importance(model, [(x[i : i + bs], y[i : i + bs]) for i in range(0, len(y), bs)])
    before = sum(p.numel() for p in model.parameters())
    remove = lowest_heads(scores, int(cfg.heads))
    prune_heads(model.backbone, remove)
    after = sum(p.numel() for p in model.parameters())
    out = Path(cfg.output_dir).expanduser()
    save_hf(
        model,
        processor,
        out / "model",
        meta={**processor_facts(processor), "pruned_from": str(model_dir)},
    )
    (out / "config.yaml").write_text(yaml.safe_dump({"data": data}))
    report = {
        "heads_removed": {str(k): v for k, v in remove.items()},
        "heads_per_layer": head_counts(model.backbone),
        "importance": scores.tolist(),
        "params_before": before,
        "params_after": after,
    }
    (out / "pruning.json").write_text(json.dumps(report, indent=2))
    print(
        f"pruned {cfg.heads} heads per layer: heads per layer {report['heads_per_layer']}, "
        f"params {before / 1e6:.2f}M -> {after / 1e6:.2f}M ({after / before:.1%}); "
        f"wrote {out / 'model'}"
    )
    return report
