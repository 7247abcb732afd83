"""Turn a finished pretraining run into vitft's shipped backbone (src/vitft/weights/<name>).

    python scripts/ship_backbone.py --run outputs/fractal_pretrain --name vit_fractal

Keeps the encoder only (the pretraining classifier is of no use downstream), in fp16, with the
image processor, the run's training log and config, and pretraining.json (what made it, and the
weights' sha256). It then writes that sha256 into conf/model/<name>.yaml, which load_backbone
checks before every load.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
from pathlib import Path

import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification

from vitft.training.pretraining.encoder import save_encoder

ROOT = Path(__file__).resolve().parents[1]
LOG_COLUMNS = ("epoch", "step", "train/loss", "train/acc", "val/loss", "val/acc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, type=Path, help="run dir with model/ and summary")
    parser.add_argument("--name", required=True, help="the shipped name, e.g. vit_fractal")
    parser.add_argument("--recipe", default="", help="the commands that made the run")
    args = parser.parse_args()

    model_dir = args.run / "model"
    hf_model = AutoModelForImageClassification.from_pretrained(model_dir, dtype=torch.float32)
    processor = AutoImageProcessor.from_pretrained(model_dir)
    summary = json.loads((args.run / "summary.json").read_text())
    last = torch.load(args.run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    out = ROOT / "src" / "vitft" / "weights" / args.name
    if out.exists():
        shutil.rmtree(out)
    info = {
        "name": args.name,
        "method": (
            "supervised classification of formula-driven images "
            "(vitft.training.pretraining.formula)"
        ),
        "recipe": args.recipe,
        "pretraining_classes": len(summary["classes"]),
        "epochs": last["epoch"] + 1,
        "global_step": last["global_step"],
        "metrics": {k: v for k, v in summary.items() if k.endswith(("/acc", "/loss"))},
        "parameters": sum(p.numel() for p in hf_model.base_model.parameters()),
    }
    save_encoder(hf_model.base_model, processor, out, info, dtype=torch.float16)
    with open(args.run / "metrics.csv") as src, open(out / "training_log.csv", "w") as dst:
        rows = csv.DictReader(src)
        keep = [k for k in rows.fieldnames if k in LOG_COLUMNS or k.startswith("lr-")]
        writer = csv.DictWriter(dst, keep, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(r for r in rows if any(r[k] for k in keep if k not in ("epoch", "step")))
    shutil.copy(args.run / "config.yaml", out / "training_config.yaml")
    digest = json.loads((out / "pretraining.json").read_text())["weights_sha256"]

    conf = ROOT / "conf" / "model" / f"{args.name}.yaml"
    if conf.is_file():
        text = re.sub(r"(?m)^sha256: .*$", f"sha256: {digest}", conf.read_text())
        conf.write_text(text)
    print(f"{out}\nsha256 {digest}")


if __name__ == "__main__":
    main()
