"""Do the heatmaps land on the defect? Localisation of every explain method on data/defect.

Trains the quickstart tiny ViT (or takes --model-dir), then for every crack/dent image of
--split compares each method's heatmap with the defect mask the generator drew
(data/defect_masks):

    inside = fraction of the heatmap's mass inside the mask (heatmap upsampled to 96x96)
    area   = fraction of the image the mask covers (what a flat map, i.e. chance, puts inside)
    lift   = mean(inside) / mean(area);  hit = share of images with inside > area

The class-specific maps (gradattn, gradcam) explain the true class (localisation asks "where is
the crack", not "why this guess"). Also prints the model's accuracy on --split, for context.
Ends with ``RESULT explain_localization <lift>``: the lower all-image lift of the two default maps
(rollout and gradattn), i.e. both put at least that many times chance on the defect.

    PYTHONPATH=$PWD/src python benchmarks/explain_localization.py            # train + measure
    PYTHONPATH=$PWD/src python benchmarks/explain_localization.py --model-dir outputs/x/model
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from PIL import Image

import vitft  # noqa: F401  (registers resolvers)
from vitft.data.images import load_image
from vitft.deploy.explain import METHODS, Explainer, mask_mass
from vitft.deploy.predictor import Predictor

ROOT = Path(__file__).resolve().parents[1]


def train_model(out: Path, epochs: int, extra: list[str]) -> Path:
    from vitft.apps.train import train

    overrides = [
        "experiment=quickstart",
        f"trainer.max_epochs={epochs}",
        "data.num_workers=0",
        "logger=csv",
        "callbacks.progress_bar=null",
        "callbacks.early_stopping.patience=20",
        "+trainer.enable_progress_bar=false",
        *extra,
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    metrics, _ = train(cfg)
    print(f"trained {epochs} epochs: test acc {metrics['test/acc']:.3f}")
    return out / "model"


def accuracy(predictor: Predictor, split: str) -> float:
    """Accuracy of the model on every class of ``split`` (context for the localisation)."""
    right = total = 0
    for cls in predictor.labels:
        for path in sorted((ROOT / "data/defect" / split / cls).glob("*.jpg")):
            probs = predictor.probabilities(predictor.transform(load_image(path))[None])[0]
            right += predictor.labels[int(probs.argmax())] == cls
            total += 1
    return right / max(total, 1)


def measure(
    model_dir: Path, discard_ratio: float, head_fusion: str, split: str = "test"
) -> tuple[dict, float]:
    """({method/class: figures}, accuracy on ``split``)."""
    predictor = Predictor.from_path(model_dir=model_dir, device="cpu")
    explainer = Explainer(predictor.backend.model, discard_ratio, head_fusion)
    labels = predictor.labels
    rows = []
    for cls in ("crack", "dent"):
        for mask_path in sorted((ROOT / "data/defect_masks" / split / cls).glob("*.png")):
            image = load_image(ROOT / "data/defect" / split / cls / f"{mask_path.stem}.jpg")
            mask = np.asarray(Image.open(mask_path)) > 0
            pixels = predictor.transform(image)[None]
            maps = explainer.explain(pixels, METHODS, torch.tensor([labels.index(cls)]))
            for method, m in maps.items():
                inside, area = mask_mass(m[0], mask)
                rows.append({"class": cls, "method": method, "inside": inside, "area": area})
    summary = {}
    for method in METHODS:
        for cls in ("crack", "dent", "all"):
            sel = [r for r in rows if r["method"] == method and cls in (r["class"], "all")]
            inside = np.array([r["inside"] for r in sel])
            area = np.array([r["area"] for r in sel])
            summary[f"{method}/{cls}"] = {
                "images": len(sel),
                "inside": round(float(inside.mean()), 4),
                "area": round(float(area.mean()), 4),
                "lift": round(float(inside.mean() / area.mean()), 2),
                "hit": round(float((inside > area).mean()), 3),
            }
    return summary, accuracy(predictor, split)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, help="skip training, measure this model dir")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--out", type=Path, default=ROOT / "outputs/bench_explain")
    ap.add_argument("--discard-ratio", type=float, default=0.9)
    ap.add_argument("--head-fusion", default="mean")
    ap.add_argument("--split", default="test", choices=["train", "val", "test"])
    ap.add_argument("overrides", nargs="*", help="train config overrides, e.g. data.augment=light")
    args = ap.parse_args()
    torch.manual_seed(0)
    model_dir = args.model_dir or train_model(args.out, args.epochs, args.overrides)
    summary, acc = measure(model_dir, args.discard_ratio, args.head_fusion, args.split)
    print(f"model {model_dir}: {args.split} accuracy {acc:.3f}")
    print(f"discard_ratio {args.discard_ratio}, head_fusion {args.head_fusion}; {args.split} split")
    print(f"{'method/class':<16} {'images':>6} {'inside':>7} {'area':>7} {'lift':>6} {'hit':>6}")
    for key, s in summary.items():
        print(
            f"{key:<16} {s['images']:>6} {s['inside']:>7.3f} {s['area']:>7.3f} "
            f"{s['lift']:>6.2f} {s['hit']:>6.2f}"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"model_dir": str(model_dir), "split": args.split, "accuracy": acc, **summary}
    (out / "localization.json").write_text(json.dumps(record, indent=2))
    result = min(summary["rollout/all"]["lift"], summary["gradattn/all"]["lift"])
    print("(RESULT = the lower all-image lift of rollout and gradattn; chance = 1)")
    print(f"RESULT explain_localization {result:.2f}")


if __name__ == "__main__":
    main()
