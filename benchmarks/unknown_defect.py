"""Unknown defects: does the OOD score flag a class the model never saw?

For each dataset (data/defect, data/pest) and each of its classes in turn, that class is held out
entirely: the model (``experiment=small_data``, the recommended recipe: the shipped
``model=mobilevit_fractal`` fine-tuned whole) is trained on the other classes only, and every image
of the held-out class (all splits) is an unknown. Four scores, each with its threshold set on the
known classes' val images for 95% acceptance:

  mahalanobis  the scorer train() stores in model/ (the default; ood.views=auto), read back
               through Predictor like predict.py does
  mahalanobis_class  the same features and views, a covariance per class (ood.method's option)
  knn          cosine distance to the k-th nearest training image, on the same features and views
  max_softmax  1 - the top softmax probability of the image as given (the usual baseline)

Scored on the known classes' test images against the unknowns: AUROC, the false-accept rate of
unknowns at the threshold, and the known test images' acceptance.

    python benchmarks/unknown_defect.py [--datasets defect pest] [--seeds 0 1 2] [--quick]
        [--classes crack aphids] [--experiment quickstart] [--overrides ood.views=none]

Writes benchmarks/results/unknown_defect.csv (per run) and prints medians per method; ends with
``RESULT unknown_defect <mean AUROC of mahalanobis>``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import ROOT, cpu_flags, machine_note, quickstart_cfg, set_threads, table, write_results

from vitft.apps.train import train
from vitft.data.folder import list_images
from vitft.deploy.predictor import Predictor
from vitft.models.ood import OODScorer, auroc

METHODS = ("mahalanobis", "mahalanobis_class", "knn", "max_softmax")


def split_classes(src: Path, held_out: str, dst: Path, limit: int | None) -> list[Path]:
    """``dst`` with every class of ``src`` but ``held_out`` (symlinks); returns the held-out
    class's images of all splits (the unknowns). ``limit``: images per class and split."""
    unknown: list[Path] = []
    for split_dir in sorted(p for p in src.iterdir() if p.is_dir()):
        for cls_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            files = list_images(cls_dir)[0][:limit]
            if cls_dir.name == held_out:
                unknown += files
                continue
            out = dst / split_dir.name / cls_dir.name
            out.mkdir(parents=True, exist_ok=True)
            for f in files:
                (out / f.name).symlink_to(f.resolve())
    return unknown


def scored(predictor: Predictor, paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """The stored scorer's OOD scores and the class probabilities, as predict.py gets them."""
    results = predictor.predict_files(paths, progress=False)
    assert not results.bad_files, results.bad_files
    preds = results.predictions
    probs = torch.tensor([[p.probs[c] for c in predictor.labels] for p in preds])
    return torch.tensor([p.ood_score for p in preds]), probs


def ood_features(predictor: Predictor, paths: list[Path]) -> torch.Tensor:
    feats, _, bad = predictor.features_files(paths, progress=False, views=predictor.ood.views)
    assert not bad, bad
    return feats


def class_images(root: Path, split: str) -> tuple[list[Path], list[int]]:
    classes = sorted(p.name for p in (root / split).iterdir() if p.is_dir())
    paths, labels = [], []
    for i, c in enumerate(classes):
        files = list_images(root / split / c)[0]
        paths += files
        labels += [i] * len(files)
    return paths, labels


def one_run(dataset: str, held_out: str, seed: int, tmp: Path, args) -> list[list]:
    data = tmp / f"{dataset}_{held_out}_{seed}"
    unknown = split_classes(ROOT / "data" / dataset, held_out, data, args.limit)
    known = sorted(p.name for p in (data / "train").iterdir())
    cfg = quickstart_cfg(
        tmp / f"run_{dataset}_{held_out}_{seed}",
        data,
        known,
        seed,
        f"trainer.max_epochs={args.epochs}",
        "test=false",
        f"ood.acceptance={args.acceptance}",
        *args.overrides,
        experiment=args.experiment,
    )
    t0 = time.perf_counter()
    _, objects = train(cfg)
    train_s = time.perf_counter() - t0
    model_dir = objects["summary"]["model_dir"]
    predictor = Predictor.from_path(model_dir, batch_size=64)
    stored = predictor.ood
    assert stored is not None and stored.method == "mahalanobis", "train() stores the scorer"

    tr_paths, tr_labels = class_images(data, "train")
    va_paths, _ = class_images(data, "val")
    te_paths, te_labels = class_images(data, "test")
    _, va_p = scored(predictor, va_paths)
    te_s, te_p = scored(predictor, te_paths)
    un_s, un_p = scored(predictor, unknown)
    test_acc = float((te_p.argmax(1) == torch.tensor(te_labels)).float().mean())

    feats = {name: ood_features(predictor, paths) for name, paths in
             (("tr", tr_paths), ("va", va_paths), ("te", te_paths), ("un", unknown))}  # fmt: skip
    rows = []
    for method in METHODS:
        if method == "mahalanobis":  # train()'s threshold, set on val at ood.acceptance
            te_m, un_m, threshold = te_s, un_s, stored.threshold
        elif method in ("knn", "mahalanobis_class"):
            scorer = OODScorer.fit(method, feats["tr"], torch.tensor(tr_labels), k=args.k,
                                   views=stored.views)  # fmt: skip
            scorer.calibrate(feats["va"], args.acceptance)
            te_m, un_m = scorer.score(feats["te"]), scorer.score(feats["un"])
            threshold = scorer.threshold
        else:
            va_m, te_m, un_m = (1 - p.max(1).values for p in (va_p, te_p, un_p))
            threshold = float(torch.quantile(va_m.double(), args.acceptance))

        rows.append(
            [
                dataset,
                held_out,
                seed,
                method,
                stored.views,
                round(auroc(te_m, un_m), 4),
                round(float((un_m <= threshold).float().mean()), 4),
                round(float((te_m <= threshold).float().mean()), 4),
                round(test_acc, 4),
                len(te_m),
                len(un_m),
                round(train_s, 1),
            ]
        )
        print(" ".join(str(v) for v in rows[-1]), flush=True)
    return rows


HEADERS = [
    "dataset",
    "held_out",
    "seed",
    "method",
    "views",
    "auroc",
    "false_accept",
    "known_accept",
    "closed_set_test_acc",
    "known_test_images",
    "unknown_images",
    "train_s",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["defect", "pest"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--experiment", default="small_data", help="the training recipe")
    parser.add_argument("--epochs", type=int, default=30, help="fine-tuning epochs per run")
    parser.add_argument("--acceptance", type=float, default=0.95)
    parser.add_argument("--k", type=int, default=5, help="knn: the k-th nearest neighbour")
    parser.add_argument("--limit", type=int, default=None, help="images per class and split")
    parser.add_argument("--classes", nargs="+", default=None, help="hold out only these")
    parser.add_argument(
        "--overrides", nargs="+", default=[], help="train overrides, e.g. model.image_size=96"
    )
    parser.add_argument("--quick", action="store_true", help="one held-out class, tiny, 1 epoch")
    args = parser.parse_args()
    if args.quick:
        args.datasets, args.epochs, args.limit = args.datasets[:1], 1, 8
    set_threads()
    print(machine_note(), "|", cpu_flags())

    rows: list[list] = []
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets:
            classes = sorted(p.name for p in (ROOT / "data" / dataset / "train").iterdir())
            classes = [c for c in classes if not args.classes or c in args.classes]
            for held_out in classes[:1] if args.quick else classes:
                for seed in args.seeds:
                    rows += one_run(dataset, held_out, seed, Path(tmp), args)
    out = write_results("unknown_defect", HEADERS, rows)

    summary = []
    for dataset in [*args.datasets, "all"]:
        for method in METHODS:
            sel = [r for r in rows if r[3] == method and dataset in ("all", r[0])]
            summary.append(
                [
                    dataset,
                    method,
                    len(sel),
                    statistics.mean(r[5] for r in sel),
                    statistics.median(r[5] for r in sel),
                    min(r[5] for r in sel),
                    statistics.median(r[6] for r in sel),
                    statistics.median(r[7] for r in sel),
                ]
            )
    head = ["dataset", "method", "runs", "auroc mean", "auroc median", "auroc min"]
    print(table([*head, "false-accept median", "known-accept median"], summary))
    print(f"per run: {out}")
    mean = statistics.mean(r[5] for r in rows if r[3] == "mahalanobis")
    print(f"RESULT unknown_defect {mean:.4f}")


if __name__ == "__main__":
    main()
