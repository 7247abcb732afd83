"""The small-data recipe on real images: which offline backbone to fine-tune.

The sample sets in data/ are synthetic and easy; this one is real. scikit-learn ships the UCI
handwritten digits inside its wheel (1,797 scans of 8x8 pixels, CC BY 4.0), and scikit-learn comes
with vitft (iterative-stratification needs it), so the set is on every machine, offline. The
digits are upscaled to 64 px and grouped into four classes with an inspection-like imbalance:
``ok`` (digits 0-4, 57%), ``mild`` (5, 11%), ``rare`` (8, 4%) and ``severe`` (6 and 7, 27%). Each
backbone is fine-tuned with ``experiment=small_data`` as it is (only ``model=`` changes), over the
same seeds, and reports test accuracy and macro F1. The images are 64 px, so the runs fine-tune at
64 px (``--image-size``) rather than upsample them to the recipe's 128.

    python benchmarks/small_data.py                       # every backbone, seeds 0 1 2, at 64 px
    python benchmarks/small_data.py --backbones vit_fractal --seeds 0
    python benchmarks/small_data.py --quick               # 1 epoch, tiny subset (the test)

Writes benchmarks/results/small_data.csv (one row per run) and ends with
``RESULT small_data <mean test accuracy of experiment=small_data's own backbone>``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import cpu_flags, machine_note, quickstart_cfg, set_threads, table, write_results
from PIL import Image

from vitft.apps.train import train

# class -> digits, and its share of the images (57/11/4/27%)
GROUPS = {"ok": (0, 1, 2, 3, 4), "mild": (5,), "rare": (8,), "severe": (6, 7)}
TRAIN = {"ok": 500, "mild": 96, "rare": 35, "severe": 237}
TEST = {"ok": 200, "mild": 39, "rare": 14, "severe": 95}
# "recipe": experiment=small_data exactly as shipped; the others swap its backbone only.
BACKBONES = {
    "recipe": [],
    "vit_fractal": ["model=vit_fractal"],
    "mobilevit_scratch": ["model=mobilevit_tiny"],
}


def build_digits(root: Path, scale: float = 1.0) -> Path:
    """The 4-class real image set as class folders (train/ and test/); ``scale`` shrinks it."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    for name, members in GROUPS.items():
        idx = rng.permutation(np.flatnonzero(np.isin(digits.target, members)))
        n_train, n_test = (max(2, round(n[name] * scale)) for n in (TRAIN, TEST))
        for split, part in (("train", idx[:n_train]), ("test", idx[n_train : n_train + n_test])):
            out = root / split / name
            out.mkdir(parents=True, exist_ok=True)
            for i in part:
                pixels = (digits.images[i] * (255 / 16)).astype(np.uint8)
                img = Image.fromarray(pixels, "L").resize((64, 64), Image.BILINEAR)
                img.convert("RGB").save(out / f"{i:04d}.png")
    return root


def one_run(data: Path, backbone: str, seed: int, tmp: Path, extra: list[str]) -> list:
    cfg = quickstart_cfg(
        tmp / f"{backbone}_{seed}",
        data,
        sorted(GROUPS),
        seed,
        *BACKBONES[backbone],
        *extra,
        experiment="small_data",
    )
    t0 = time.perf_counter()
    metrics, _ = train(cfg)
    row = [
        backbone,
        seed,
        round(metrics["test/acc"], 4),
        round(metrics["test/f1_macro"], 4),
        round(time.perf_counter() - t0, 1),
    ]
    print(" ".join(map(str, row)), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--image-size", type=int, default=64, help="fine-tuning resolution")
    parser.add_argument("--quick", action="store_true", help="tiny subset, 1 epoch, 1 seed")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides")
    args = parser.parse_args()
    threads = set_threads()
    extra = [f"model.image_size={args.image_size}", *args.overrides]
    if args.quick:
        args.seeds = args.seeds[:1]
        extra += ["trainer.max_epochs=1", "data.batch_size=8"]
    print(machine_note(), cpu_flags(), f"torch threads={threads}")

    rows = []
    with tempfile.TemporaryDirectory(prefix="vitft_small_data_") as tmp:
        data = build_digits(Path(tmp) / "digits4", scale=0.1 if args.quick else 1.0)
        for seed in args.seeds:
            for backbone in args.backbones:
                rows.append(one_run(data, backbone, seed, Path(tmp), extra))

    headers = ["backbone", "seed", "test_acc", "test_f1_macro", "train_s"]
    write_results("small_data", headers, rows)
    summary = []
    for backbone in args.backbones:
        accs = [r[2] for r in rows if r[0] == backbone]
        f1s = [r[3] for r in rows if r[0] == backbone]
        secs = [r[4] for r in rows if r[0] == backbone]
        spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
        summary.append(
            [backbone, len(accs), f"{statistics.mean(accs):.3f} ± {spread:.3f}",
             f"{statistics.mean(f1s):.3f}", f"{statistics.mean(secs):.0f}"]
        )  # fmt: skip
    print(table(["backbone", "seeds", "test acc", "macro F1", "train s"], summary))
    recipe = [r[2] for r in rows if r[0] == args.backbones[0]]
    print(f"RESULT small_data {statistics.mean(recipe):.4f}")


if __name__ == "__main__":
    main()
