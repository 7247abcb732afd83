"""Accuracy levers on the graded inspection proxy (benchmarks/inspection_proxy.py), side by side.

Each variant is a recipe with a few overrides, except ``handmade``, the anchor a real set's
hand-made-feature baseline gives (an SVM on HOG and LBP descriptors); every variant runs on the same
proxy split and the same seeds, and reports test accuracy, macro F1, the mean absolute grade
error, the escape rate (a part of the two worst grades called one of the two best: it ships)
and how many of the worst grade were called the best, with the training time per run.

    python benchmarks/inspection.py                                   # every variant, seeds 0 1 2
    python benchmarks/inspection.py --variants fast accurate --seeds 0
    python benchmarks/inspection.py --scale 0.5 --max-epochs 10      # a cheaper, reduced sweep
    python benchmarks/inspection.py --quick                           # tiny, 1 epoch (the test)

Writes benchmarks/results/inspection.csv (one row per run; a run appends to the rows of other
variants already there, so a sweep can be spread over sessions) and ends with
``RESULT inspection <mean test accuracy of experiment=accurate>`` (or of the first variant run).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import ROOT, cpu_flags, machine_note, quickstart_cfg, set_threads, table
from inspection_proxy import GRADES, build
from PIL import Image

from vitft.apps.train import train

# The two worst grades are the defective parts; a defective part called one of the two best ships.
DEFECTIVE = (2, 3)
VARIANTS = {
    "fast": ("small_data", []),
    "fast_224px": ("small_data", ["model.image_size=224"]),
    "fast_ordinal": ("small_data", ["task.ordinal=true"]),
    "fast_balanced": ("small_data", ["loss.class_weights=auto"]),
    "fast_ema": ("small_data", ["ema_decay=0.998"]),
    "fast_lr_floor": ("small_data", ["scheduler.schedule.min_lr_rate=0.3"]),
    "accurate": ("accurate", []),
    "accurate_ordinal": ("accurate", ["task.ordinal=true"]),
    # A time cap that allows about half the recipe's epochs (15 minutes allow a third on 2 cores
    # for a few thousand 300 px images): the schedule fitted to the time left, or cut off by it.
    "fast_capped": (
        "small_data",
        ["trainer.max_time=00:00:08:00", "callbacks.time_budget.enabled=true"],
    ),
    "fast_capped_cutoff": ("small_data", ["trainer.max_time=00:00:08:00"]),
    # Not a recipe: the anchor of the held-out set's 2019 baseline, hand-made features and an SVM.
    "handmade": (None, []),
}
HEADERS = ["variant", "seed", "scale", "max_epochs", "test_acc", "test_f1_macro", "mae_grade",
           "escape_rate", "worst_called_best", "train_s", "test_acc_tta",
           "escape_rate_tta", "machine"]  # fmt: skip


def grade_errors(confusion: list[list[int]]) -> tuple[float, float, int]:
    """From a true x predicted confusion matrix of grades: the mean absolute grade error, the share
    of defective parts predicted as a non-defective grade, and how many worst were called best."""
    cm = torch.tensor(confusion, dtype=torch.float)
    grades = torch.arange(len(cm), dtype=torch.float)
    mae = float((cm * (grades[:, None] - grades[None, :]).abs()).sum() / cm.sum())
    ok = [g for g in range(len(cm)) if g not in DEFECTIVE]
    defective = cm[list(DEFECTIVE)]
    shipped = float(defective[:, ok].sum())
    return mae, shipped / max(1.0, float(defective.sum())), int(cm[-1, 0])


@torch.no_grad()
def tta_confusion(objects: dict) -> list[list[int]]:
    """Test confusion with test-time augmentation: softmax averaged over the 8 d4 views (the
    symmetries the industrial augmentation trains the model to ignore)."""
    from vitft.models.ood import image_views

    model = objects["module"].model.eval()
    n = model.config.num_labels
    cm = torch.zeros(n, n, dtype=torch.long)
    for x, y in objects["datamodule"].test_dataloader():
        probs = model(image_views(x, "d4")).softmax(-1).view(8, len(x), n).mean(0)
        cm += torch.bincount(y * n + probs.argmax(-1), minlength=n * n).view(n, n)
    return cm.tolist()


def handmade_features(path: Path) -> np.ndarray:
    """Texture and edge descriptors of one grayscale image: HOG at half size (edge directions in
    15 px cells), uniform LBP histograms at radii 1-3 (fine texture: thin lines, spots) and
    intensity quantiles (dark areas)."""
    from skimage.feature import hog, local_binary_pattern

    img = np.asarray(Image.open(path).convert("L"))
    parts = [hog(img[::2, ::2] / 255.0, orientations=9, pixels_per_cell=(15, 15),
                 cells_per_block=(2, 2))]  # fmt: skip
    for radius, points in ((1, 8), (2, 16), (3, 16)):
        lbp = local_binary_pattern(img, points, radius, "uniform").astype(int)
        parts.append(np.bincount(lbp.ravel(), minlength=points + 2) / lbp.size)
    parts.append(np.quantile(img / 255.0, [0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9]))
    return np.concatenate(parts)


def handmade_run(data: Path, seed: int) -> dict:
    """An RBF SVM on ``handmade_features``, C and gamma chosen on val (deterministic: the seed
    only names the row)."""
    from sklearn.metrics import f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    t0 = time.perf_counter()
    split = {}
    for name in ("train", "val", "test"):
        pairs = [(handmade_features(p), g) for g, grade in enumerate(GRADES)
                 for p in sorted((data / name / grade).glob("*.png"))]  # fmt: skip
        split[name] = np.stack([f for f, _ in pairs]), np.array([g for _, g in pairs])
    (x, y), (xv, yv), (xt, yt) = split["train"], split["val"], split["test"]
    fits = [make_pipeline(StandardScaler(), SVC(C=c, gamma=g / x.shape[1])).fit(x, y)
            for c in (0.3, 1, 3, 10, 30, 100) for g in (0.3, 1, 3)]  # fmt: skip
    best = max(fits, key=lambda m: (m.predict(xv) == yv).mean())
    pred = best.predict(xt)
    n = len(GRADES)
    cm = np.bincount(yt * n + pred, minlength=n * n).reshape(n, n)
    mae, rate, worst = grade_errors(cm.tolist())
    return {
        "variant": "handmade",
        "seed": seed,
        "test_acc": round(float((pred == yt).mean()), 4),
        "test_f1_macro": round(float(f1_score(yt, pred, average="macro")), 4),
        "mae_grade": round(mae, 4),
        "escape_rate": round(rate, 4),
        "worst_called_best": worst,
        "train_s": round(time.perf_counter() - t0, 1),
    }


def one_run(data: Path, variant: str, seed: int, tmp: Path, extra: list[str]) -> dict:
    experiment, overrides = VARIANTS[variant]
    if experiment is None:
        return handmade_run(data, seed)
    cfg = quickstart_cfg(
        tmp / f"{variant}_{seed}",
        data,
        list(GRADES),
        seed,
        "ood.method=null",  # the unknown flag is measured by benchmarks/unknown_defect.py
        *overrides,
        *extra,
        experiment=experiment,
    )
    t0 = time.perf_counter()
    metrics, objects = train(cfg)
    seconds = time.perf_counter() - t0
    mae, rate, worst = grade_errors(objects["module"].confusion_matrices["test"])
    tta = torch.tensor(tta_confusion(objects))
    _, tta_rate, _ = grade_errors(tta.tolist())
    return {
        "variant": variant,
        "seed": seed,
        "test_acc": round(metrics["test/acc"], 4),
        "test_f1_macro": round(metrics["test/f1_macro"], 4),
        "mae_grade": round(mae, 4),
        "escape_rate": round(rate, 4),
        "worst_called_best": worst,
        "train_s": round(seconds, 1),
        "test_acc_tta": round(float(tta.diag().sum() / tta.sum()), 4),
        "escape_rate_tta": round(tta_rate, 4),
    }


def _key(row: dict) -> tuple[str, ...]:
    return tuple(str(row[k]) for k in ("variant", "seed", "scale", "max_epochs"))


def append_rows(rows: list[dict]) -> None:
    """Add ``rows`` to the CSV, replacing earlier rows of the same variant, seed and setting
    (``VITFT_RESULTS_DIR`` redirects it, as for every benchmark)."""
    folder = os.environ.get("VITFT_RESULTS_DIR") or ROOT / "benchmarks" / "results"
    results = Path(folder) / "inspection.csv"
    keep = []
    if results.is_file():
        with results.open() as f:
            new = {_key(r) for r in rows}
            for r in csv.DictReader(f):
                if _key(r) not in new:
                    keep.append(r)
    note = f"{machine_note()} {cpu_flags()}"
    with results.open("w", newline="") as f:
        writer = csv.DictWriter(f, HEADERS, restval="")
        writer.writeheader()
        writer.writerows([*keep, *({**r, "machine": note} for r in rows)])
    print(f"wrote {results}")


def summarise(rows: list[dict]) -> list[list]:
    out = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        runs = [r for r in rows if r["variant"] == variant]
        accs = [r["test_acc"] for r in runs]
        spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
        out.append([
            variant, len(runs), f"{statistics.mean(accs):.3f} ± {spread:.3f}",
            f"{statistics.mean(r['test_f1_macro'] for r in runs):.3f}",
            f"{statistics.mean(r['mae_grade'] for r in runs):.3f}",
            f"{statistics.mean(r['escape_rate'] for r in runs):.3f}",
            f"{statistics.mean(r['train_s'] for r in runs):.0f}",
        ])  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--scale", type=float, default=1.0, help="shrink every split")
    parser.add_argument("--max-epochs", type=int, default=None, help="cap every recipe's epochs")
    parser.add_argument("--quick", action="store_true", help="tiny subset, 1 epoch, 1 seed")
    parser.add_argument("--data", type=Path, default=None, help="reuse a built proxy folder")
    args = parser.parse_args()
    threads = set_threads()
    extra: list[str] = []
    if args.quick:
        args.seeds, args.scale, args.max_epochs = args.seeds[:1], 0.02, 1
        args.variants = ["fast", "accurate", "handmade"]
        extra += ["data.batch_size=8", "model.image_size=64"]
    if args.max_epochs:  # the time cap lifted too: a loaded machine then runs the same epochs
        extra += [f"trainer.max_epochs={args.max_epochs}", "trainer.max_time=null"]
    print(machine_note(), cpu_flags(), f"torch threads={threads}", flush=True)

    rows = []
    with tempfile.TemporaryDirectory(prefix="vitft_inspection_") as tmp:
        data = args.data or build(Path(tmp) / "proxy", scale=args.scale)
        for seed in args.seeds:
            for variant in args.variants:
                row = one_run(data, variant, seed, Path(tmp), extra)
                row |= {"scale": args.scale, "max_epochs": args.max_epochs or ""}
                print(row, flush=True)
                rows.append(row)
                append_rows([row])  # each run as it ends: a sweep may be stopped or spread out
    print(table(["variant", "seeds", "test acc", "macro F1", "grade MAE", "escapes", "train s"],
                summarise(rows)))  # fmt: skip
    main_variant = "accurate" if "accurate" in args.variants else args.variants[0]
    accs = [r["test_acc"] for r in rows if r["variant"] == main_variant]
    print(f"RESULT inspection {statistics.mean(accs):.4f}")


if __name__ == "__main__":
    main()
