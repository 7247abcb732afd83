"""Unknown defects: does the OOD score flag a class the model never saw?

For each dataset (data/defect, data/pest) and each of its classes in turn, that class is held out
entirely: the model (``experiment=quickstart``: the shipped ``model=vit_fractal`` fine-tuned
whole) is trained on the other classes only, and every image of the held-out class (all splits) is
an unknown. Three scores, each with its threshold set on the known classes' val images for 95%
acceptance:

  mahalanobis  class means + shared shrunk covariance on backbone features (the default)
  knn          cosine distance to the k-th nearest training feature
  max_softmax  1 - the top softmax probability (the baseline: no features)

Scored on the known classes' test images against the unknowns: AUROC, the false-accept rate of
unknowns at the threshold, and the known test images' acceptance.

    python benchmarks/unknown_defect.py [--datasets defect pest] [--seeds 0 1 2] [--quick]
        [--classes crack aphids] [--overrides model.image_size=96]

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

METHODS = ("mahalanobis", "knn", "max_softmax")


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


def features_logits(predictor: Predictor, paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    feats, _, bad = predictor.features_files(paths, progress=False)
    assert not bad, bad
    with torch.inference_mode():
        logits = predictor.backend.torch_model.head(feats)
    return feats, logits.float()


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
        # The measured table is at 64 px, the backbone's pretraining size (the quickstart itself
        # now fine-tunes at 96): --overrides model.image_size=96.
        *(["model.image_size=64"] if not _sets_size(args.overrides) else []),
        *args.overrides,
    )
    t0 = time.perf_counter()
    _, objects = train(cfg)
    train_s = time.perf_counter() - t0
    model_dir = objects["summary"]["model_dir"]
    predictor = Predictor.from_path(model_dir, ood=False, batch_size=64)

    tr_paths, tr_labels = class_images(data, "train")
    va_paths, _ = class_images(data, "val")
    te_paths, te_labels = class_images(data, "test")
    tr_f, _ = features_logits(predictor, tr_paths)
    va_f, va_l = features_logits(predictor, va_paths)
    te_f, te_l = features_logits(predictor, te_paths)
    un_f, un_l = features_logits(predictor, unknown)
    test_acc = float((te_l.argmax(1) == torch.tensor(te_labels)).float().mean())

    rows = []
    for method in METHODS:
        if method == "max_softmax":
            va_s, te_s, un_s = (1 - x.softmax(1).max(1).values for x in (va_l, te_l, un_l))
            threshold = float(torch.quantile(va_s.double(), args.acceptance))
        else:
            scorer = OODScorer.fit(method, tr_f, torch.tensor(tr_labels), k=args.k)
            scorer.calibrate(va_f, args.acceptance)
            te_s, un_s, threshold = scorer.score(te_f), scorer.score(un_f), scorer.threshold
        rows.append(
            [
                dataset,
                held_out,
                seed,
                method,
                round(auroc(te_s, un_s), 4),
                round(float((un_s <= threshold).float().mean()), 4),
                round(float((te_s <= threshold).float().mean()), 4),
                round(test_acc, 4),
                len(te_s),
                len(un_s),
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
    "auroc",
    "false_accept",
    "known_accept",
    "closed_set_test_acc",
    "known_test_images",
    "unknown_images",
    "train_s",
]


def _sets_size(overrides: list[str]) -> bool:
    return any(o.startswith("model.image_size=") for o in overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["defect", "pest"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
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
                    statistics.mean(r[4] for r in sel),
                    statistics.median(r[4] for r in sel),
                    min(r[4] for r in sel),
                    statistics.median(r[5] for r in sel),
                    statistics.median(r[6] for r in sel),
                ]
            )
    head = ["dataset", "method", "runs", "auroc mean", "auroc median", "auroc min"]
    print(table([*head, "false-accept median", "known-accept median"], summary))
    print(f"per run: {out}")
    mean = statistics.mean(r[4] for r in rows if r[3] == "mahalanobis")
    print(f"RESULT unknown_defect {mean:.4f}")


if __name__ == "__main__":
    main()
