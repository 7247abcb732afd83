"""Label issues: does `vitft check-data labels=true` find injected label flips, and does dropping or
correcting what it flags recover test accuracy?

For data/defect and data/pest: flip 5% and 10% of the training labels at random (each to another
class, uniformly), seeds 0, 1, 2. The flagged set is vitft.data.label_issues (out-of-fold
probabilities of a logistic-regression probe, 5 folds, on the frozen backbone's cached features,
then cleanlab's find_label_issues): its precision and recall against the flips. Then test
accuracy of a linear probe on the same frozen features (the retrain figure: fine-tuning per
setting is too slow on 2 shared cores), trained on the clean labels (upper bound), the noisy
labels, the noisy labels with the flagged ones dropped, and with them set to the suggested label.

    python benchmarks/label_issues.py [--models vit_fractal mobilevit_fractal] [--seeds 0 1 2]

Writes benchmarks/results/label_issues.csv and ends with
``RESULT label_issues <median recall> <median precision>`` at 10% flips, last model.
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import CONF, ROOT, cpu_flags, machine_note, median, set_threads, table, write_results

from vitft.data.folder import scan_dataset
from vitft.data.label_issues import find_issues, out_of_fold_probs, probe
from vitft.models.classifier import build_model
from vitft.training.cache import FeatureCache

HEADERS = ["dataset", "model", "flip_rate", "seed", "flipped", "flagged", "precision", "recall",
           "acc_clean", "acc_noisy", "acc_dropped", "acc_corrected"]  # fmt: skip


def features(name: str, model: str) -> tuple[list[str], dict[str, np.ndarray], dict]:
    """(classes, split -> features, split -> labels) of data/<name> through the frozen backbone."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    splits = scan_dataset(ROOT / "data" / name)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        model_cfg = OmegaConf.to_container(
            compose("check_data", [f"model={model}"]).model, resolve=True
        )
    net, processor = build_model(model_cfg, {"name": "linear"}, splits.classes)
    cache = FeatureCache(
        net.eval(), processor, ROOT / ".cache" / "features", views=1, dtype="float32"
    )
    feats = {s: np.asarray(cache.get(splits.split(s)).features[0]) for s in ("train", "test")}
    labels = {s: np.array([y for _, y in splits.split(s)]) for s in ("train", "test")}
    return splits.classes, feats, labels


def accuracy(x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray) -> float:
    return float(probe().fit(x, y).score(xt, yt))


def one_setting(classes, feats, labels, rate: float, seed: int) -> list:
    rng = np.random.default_rng(seed)
    clean, n = labels["train"], len(labels["train"])
    flipped = rng.choice(n, max(1, round(rate * n)), replace=False)
    noisy = clean.copy()
    noisy[flipped] = (clean[flipped] + rng.integers(1, len(classes), len(flipped))) % len(classes)
    x, xt, yt = feats["train"], feats["test"], labels["test"]
    probs = out_of_fold_probs(x, noisy, folds=5, seed=seed)
    issues = find_issues([str(i) for i in range(n)], noisy, probs, x, classes)
    flagged = np.array([int(i.path) for i in issues], dtype=int)
    hits = len(set(flagged) & set(flipped))
    keep = np.setdiff1d(np.arange(n), flagged)
    corrected = noisy.copy()
    corrected[flagged] = probs[flagged].argmax(1)
    return [
        len(flipped), len(flagged), hits / max(1, len(flagged)), hits / len(flipped),
        accuracy(x, clean, xt, yt), accuracy(x, noisy, xt, yt),
        accuracy(x[keep], noisy[keep], xt, yt), accuracy(x, corrected, xt, yt),
    ]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="+", default=["defect", "pest"])
    ap.add_argument("--models", nargs="+", default=["vit_fractal", "mobilevit_fractal"])
    ap.add_argument("--rates", nargs="+", type=float, default=[0.05, 0.1])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = ap.parse_args()
    set_threads()
    print(machine_note(), cpu_flags())
    rows = []
    for model in args.models:
        for name in args.datasets:
            classes, feats, labels = features(name, model)
            for rate in args.rates:
                for seed in args.seeds:
                    result = one_setting(classes, feats, labels, rate, seed)
                    row = [name, model, rate, seed, *result]
                    print(dict(zip(HEADERS, row, strict=True)), flush=True)
                    rows.append(row)
    out = write_results("label_issues", HEADERS, rows)
    summary = []
    for model in args.models:
        for name in args.datasets:
            for rate in args.rates:
                sel = [r for r in rows if r[0] == name and r[1] == model and r[2] == rate]
                medians = [median([r[i] for r in sel]) for i in range(6, 12)]
                summary.append([name, model, rate, *medians])
    print(table(["dataset", "model", "flip_rate", *HEADERS[6:]], summary))
    print(f"-> {out}")
    top = max(args.rates)  # the headline: the last model (default mobilevit_fractal), top rate
    at_top = [r for r in rows if r[2] == top and r[1] == args.models[-1]]
    recall, precision = median([r[7] for r in at_top]), median([r[6] for r in at_top])
    print(f"RESULT label_issues {recall:.3f} {precision:.3f}")


if __name__ == "__main__":
    main()
