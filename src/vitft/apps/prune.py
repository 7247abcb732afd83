"""prune(cfg): score heads on training images, remove the least important, save an HF model dir."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from vitft.data.transforms import processor_facts
from vitft.modelio.hf import load_model, multilabel_facts, save_hf
from vitft.models.pruning import head_counts, head_importance, lowest_heads, prune_heads
from vitft.run.provenance import PROVENANCE_FILE
from vitft.run.rundir import Run, model_images


def prune(cfg) -> dict:
    """Score heads on training images, remove ``cfg.heads`` per layer, save an HF model dir."""

    model_dir = Path(cfg.model_dir).expanduser()
    model, processor = load_model(model_dir)
    images = model_images(
        model_dir, model.labels, processor, "train", cfg.get("data_dir"), cfg.importance_images
    )
    x, y = torch.from_numpy(images.x), torch.from_numpy(images.y)
    bs = int(cfg.batch_size)
    scores = head_importance(model, [(x[i : i + bs], y[i : i + bs]) for i in range(0, len(y), bs)])
    # A multi-label model keeps its tuned per-class thresholds.
    label_facts = multilabel_facts(model_dir, model.labels) if images.y.ndim == 2 else {}
    before = sum(p.numel() for p in model.parameters())
    remove = lowest_heads(scores, int(cfg.heads))
    prune_heads(model.backbone, remove)
    after = sum(p.numel() for p in model.parameters())
    out = Path(cfg.output_dir).expanduser()
    save_hf(
        model,
        processor,
        out / "model",
        meta={**processor_facts(processor), **label_facts, "pruned_from": str(model_dir)},
    )
    _inherit_run(model_dir, Run(out), cfg.get("data_dir"))
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


def _inherit_run(model_dir: Path, pruned: Run, data_dir: str | None) -> None:
    """The pruned model keeps its source run's data and split, so export/benchmark of it are
    checked on the same images."""
    source = Run.of(model_dir)
    data = dict((source.config() if source else {}).get("data") or {})
    if data_dir:
        data["data_dir"] = str(data_dir)
    pruned.write_config({"data": data, "pruned_from": str(model_dir)})
    if source and source.split_file.is_file() and not data_dir:
        shutil.copy(source.split_file, pruned.split_file)
        shutil.copy(source.root / PROVENANCE_FILE, pruned.root / PROVENANCE_FILE)
