"""A ViT-Base/16-224-shaped model with random weights, saved like a run: real ViT-Base sizes and
speeds for benchmark.py without downloading weights (accuracy columns are meaningless for it).

    python benchmarks/vit_base_random.py [out_dir] [image_size]
    python benchmark.py model_dir=outputs/vit_base_random/model threads=2
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import yaml

from vitft.data.folder import scan_dataset
from vitft.data.transforms import processor_facts
from vitft.modelio.hf import save_hf
from vitft.models.classifier import build_model

ROOT = Path(__file__).resolve().parents[1]


def main(out: Path, image_size: int = 224) -> Path:
    data_dir = ROOT / "data" / "defect"
    classes = scan_dataset(data_dir).classes
    torch.manual_seed(0)
    # transformers' ViTConfig defaults are ViT-Base: 12 layers, 12 heads, 768 wide, patch 16.
    cfg = {"model_type": "vit", "image_size": image_size}
    model, processor = build_model({"config": cfg}, {"name": "linear"}, classes)
    save_hf(model, processor, out / "model", meta=processor_facts(processor))
    (out / "config.yaml").write_text(yaml.safe_dump({"data": {"data_dir": str(data_dir)}}))
    return out / "model"


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "outputs" / "vit_base_random")
    print(main(out, int(sys.argv[2]) if len(sys.argv) > 2 else 224))
