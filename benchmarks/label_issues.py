"""Label issues: does `vitft check-data labels=true` find injected label flips, and does dropping or
correcting what it flags recover test accuracy?

For data/defect, data/pest and the real-image inspection proxy (inspection_proxy.py, 4 grades):
flip 5% and 10% of the training labels at random, seeds 0, 1, 2. ``uniform`` flips move a label to
any other class; ``neighbour`` flips (graded classes only: sorted folder names g0_..., g1_..., as
in the proxy) move it one grade up or down, the error graders really make. The flagged set is
vitft.data.label_issues (out-of-fold probabilities of a logistic-regression probe, 5 folds, on
the backbone's cached features, then cleanlab's find_label_issues): its precision and recall
against the flips. Then test accuracy of a linear probe on the same features (the retrain
figure: fine-tuning per setting is too slow on 2 shared cores), trained on the clean labels
(upper bound), the noisy labels, the noisy labels with the flagged ones dropped, and with them set
to the suggested label.

Features: ``frozen`` is the pretrained backbone (``--models``); ``finetuned`` first fine-tunes it
on the noisy training labels (experiment=small_data, ``--finetune-epochs``) and takes the features
of that model, as ``label_issues.model_dir=<run>/model`` does. That model saw the flips.

The proxy's own labels already carry grader noise between neighbouring grades (its file names
keep the true grade): ``grader_flagged`` counts the flagged images whose label was wrong before
any flip. They count as false alarms in the precision, which is against the injected flips only.

    python benchmarks/label_issues.py [--datasets defect pest proxy] [--proxy-dir DIR]
        [--flips uniform neighbour] [--features frozen finetuned] [--results label_issues]

Writes benchmarks/results/<--results>.csv and ends with
``RESULT label_issues <median recall> <median precision>`` at the top flip rate, last model.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

import numpy as np
from _common import (
    CONF,
    ROOT,
    cpu_flags,
    machine_note,
    median,
    quickstart_cfg,
    set_threads,
    subset_data,
    table,
    write_results,
)

from vitft.data.folder import scan_dataset
from vitft.data.label_issues import find_issues, out_of_fold_probs, probe
from vitft.modelio.hf import load_model
from vitft.models.classifier import build_model
from vitft.training.cache import FeatureCache

HEADERS = ["dataset", "model", "features", "flips", "flip_rate", "seed", "flipped", "flagged",
           "grader_flagged", "precision", "recall", "acc_clean", "acc_noisy", "acc_dropped",
           "acc_corrected"]  # fmt: skip
QUICK_FLIPS = ["uniform", "neighbour"]
FIGURES = HEADERS.index("precision")  # the columns from here on are summarised as medians
GRADE = re.compile(r"^g(\d+)_")
PROXY_GRADE = re.compile(r"^(?:train|val|test)_(\d+)_")  # inspection_proxy's file names


def is_graded(classes: list[str]) -> bool:
    """Whether the sorted class names are grades g0_..., g1_..., ...: neighbours are one apart."""
    found = [GRADE.match(c) for c in classes]
    return all(found) and [int(m.group(1)) for m in found] == list(range(len(classes)))


def flip_labels(
    clean: np.ndarray, rate: float, n_classes: int, rng: np.random.Generator, neighbour: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(noisy labels, flipped indices): ``rate`` of the labels moved to another class, uniformly,
    or (``neighbour``) one grade up or down (the only neighbour at either end)."""
    n = len(clean)
    flipped = rng.choice(n, max(1, round(rate * n)), replace=False)
    noisy = clean.copy()
    if neighbour:
        step = rng.choice([-1, 1], len(flipped))
        moved = clean[flipped] + step
        moved[(moved < 0) | (moved >= n_classes)] -= 2 * step[(moved < 0) | (moved >= n_classes)]
        noisy[flipped] = moved
    else:
        noisy[flipped] = (clean[flipped] + rng.integers(1, n_classes, len(flipped))) % n_classes
    return noisy, flipped


def model_cfg(model: str) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return OmegaConf.to_container(compose("check_data", [f"model={model}"]).model, resolve=True)


def features(splits, net, processor) -> dict[str, np.ndarray]:
    """Train and test features of ``net``'s backbone through the feature cache."""
    cache = FeatureCache(
        net.eval(), processor, ROOT / ".cache" / "features", views=1, dtype="float32"
    )
    return {s: np.asarray(cache.get(splits.split(s)).features[0]) for s in ("train", "test")}


def true_grades(splits) -> np.ndarray | None:
    """The proxy's labels before its grader noise (from the file names); None elsewhere."""
    found = [PROXY_GRADE.match(Path(p).name) for p, _ in splits.train]
    return np.array([int(m.group(1)) for m in found]) if all(found) else None


def finetune(splits, noisy, model: str, epochs: int, seed: int, tmp: Path, tag: str) -> Path:
    """Fine-tune ``model`` on the noisy training labels (experiment=small_data); its model dir."""
    from vitft.apps.train import train

    data = tmp / f"data_{tag}"
    for i, ((path, _), y) in enumerate(zip(splits.train, noisy, strict=True)):
        out = data / "train" / splits.classes[y]
        out.mkdir(parents=True, exist_ok=True)  # the index: two classes may hold one file name
        (out / f"{i:05d}_{Path(path).name}").symlink_to(Path(path).resolve())
    for split in ("val", "test"):
        (data / split).symlink_to((splits.root / split).resolve())
    cfg = quickstart_cfg(
        tmp / f"run_{tag}", data, splits.classes, seed, f"model={model}",
        f"trainer.max_epochs={epochs}", "test=false", "ood.method=null", experiment="small_data",
    )  # fmt: skip
    train(cfg)
    return tmp / f"run_{tag}" / "model"


def accuracy(x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray) -> float:
    return float(probe().fit(x, y).score(xt, yt))


def scores(feats, clean, noisy, flipped, test_y, graders, seed: int) -> list:
    """flipped, flagged, grader_flagged, precision, recall and the four test accuracies."""
    n, x, xt = len(clean), feats["train"], feats["test"]
    probs = out_of_fold_probs(x, noisy, folds=5, seed=seed)
    classes = [str(c) for c in range(probs.shape[1])]
    issues = find_issues([str(i) for i in range(n)], noisy, probs, x, classes)
    flagged = np.array([int(i.path) for i in issues], dtype=int)
    hits = len(set(flagged) & set(flipped))
    wrong_before = set() if graders is None else set(np.flatnonzero(graders != clean))
    keep = np.setdiff1d(np.arange(n), flagged)
    corrected = noisy.copy()
    corrected[flagged] = probs[flagged].argmax(1)
    return [
        len(flipped), len(flagged), len(set(flagged) & wrong_before - set(flipped)),
        hits / max(1, len(flagged)), hits / len(flipped),
        accuracy(x, clean, xt, test_y), accuracy(x, noisy, xt, test_y),
        accuracy(x[keep], noisy[keep], xt, test_y), accuracy(x, corrected, xt, test_y),
    ]  # fmt: skip


def dataset_root(name: str, args, tmp: Path) -> Path:
    if name != "proxy":
        if args.quick:  # subset_data copies data/defect
            return subset_data(tmp / "defect", {"train": 12, "val": 3, "test": 5})
        return ROOT / "data" / name
    if args.proxy_dir:
        return Path(args.proxy_dir)
    from inspection_proxy import build

    return build(tmp / "proxy", scale=0.1 if args.quick else 0.5)


def run_dataset(name: str, model: str, args, tmp: Path) -> list[list]:
    splits = scan_dataset(dataset_root(name, args, tmp))
    classes, k = splits.classes, len(splits.classes)
    clean = np.array([y for _, y in splits.train])
    test_y = np.array([y for _, y in splits.test])
    graders = true_grades(splits)
    flips = [f for f in args.flips if f == "uniform" or is_graded(classes)]
    frozen = None
    rows = []
    for flip in flips:
        for rate in args.rates:
            for seed in args.seeds:
                noisy, flipped = flip_labels(
                    clean, rate, k, np.random.default_rng(seed), flip == "neighbour"
                )
                for kind in args.features:
                    if kind == "frozen":
                        frozen = frozen or features(
                            splits, *build_model(model_cfg(model), {"name": "linear"}, classes)
                        )
                        feats = frozen
                    else:
                        tag = f"{name}_{flip}_{rate}_{seed}"
                        where = finetune(splits, noisy, model, args.finetune_epochs, seed, tmp, tag)
                        feats = features(splits, *load_model(where))
                    result = scores(feats, clean, noisy, flipped, test_y, graders, seed)
                    row = [name, model, kind, flip, rate, seed, *result]
                    print(dict(zip(HEADERS, row, strict=True)), flush=True)
                    rows.append(row)
    return rows


def summary(rows: list[list]) -> list[list]:
    """Medians over the seeds of each (dataset, model, features, flips, rate)."""
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault(tuple(r[:5]), []).append(r)
    return [
        [*key, *(median([r[i] for r in sel]) for i in range(FIGURES, len(HEADERS)))]
        for key, sel in groups.items()
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="+", default=["defect", "pest"])
    ap.add_argument("--models", nargs="+", default=["vit_fractal", "mobilevit_fractal"])
    ap.add_argument("--rates", nargs="+", type=float, default=[0.05, 0.1])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--flips", nargs="+", default=["uniform"], choices=["uniform", "neighbour"])
    ap.add_argument("--features", nargs="+", default=["frozen"], choices=["frozen", "finetuned"])
    ap.add_argument("--finetune-epochs", type=int, default=30)  # small_data's
    ap.add_argument("--proxy-dir", help="a built inspection proxy; default: build the half proxy")
    ap.add_argument("--results", default="label_issues", help="results/<name>.csv")
    ap.add_argument("--quick", action="store_true", help="tiny defect and proxy subsets")
    args = ap.parse_args()
    if args.quick:  # a defect subset and a tiny proxy, both flip kinds, one seed, 10%
        args.datasets, args.models = ["defect", "proxy"], ["mobilevit_fractal"]
        args.rates, args.seeds, args.flips, args.finetune_epochs = [0.1], [0], QUICK_FLIPS, 1
    set_threads()
    print(machine_note(), cpu_flags())
    rows = []
    with tempfile.TemporaryDirectory(prefix="vitft_label_issues_") as tmp:
        for model in args.models:
            for name in args.datasets:
                rows += run_dataset(name, model, args, Path(tmp))
    out = write_results(args.results, HEADERS, rows)
    print(table([*HEADERS[:5], *HEADERS[FIGURES:]], summary(rows)))
    print(f"-> {out}")
    top = max(args.rates)  # the headline: the last model (default mobilevit_fractal), top rate
    at_top = [r for r in rows if r[4] == top and r[1] == args.models[-1]]
    recall, precision = median([r[10] for r in at_top]), median([r[9] for r in at_top])
    print(f"RESULT label_issues {recall:.3f} {precision:.3f}")


if __name__ == "__main__":
    main()
