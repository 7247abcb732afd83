"""Active learning: does select's strategy beat random picks at the same labelling budget?

data/defect's train split is the pool; its labels are hidden until an image is picked. Start
from 10% of it (random, seeded, at least one image per class), then 5 rounds: fine-tune
(``experiment=quickstart``: the shipped ``model=vit_fractal``, whole, --epochs epochs) on the
labelled images, pick the next 10% with ``vitft.apps.select.select`` (the real command's code) or
at random, label them. Test accuracy on the full test split after every round; seeds 0, 1, 2.

    python benchmarks/active_learning.py [--strategies random margin ...] [--seeds 0 1 2] [--quick]

Writes benchmarks/results/active_learning.csv (every round) and ends with
``RESULT active_learning <mean final test acc of margin (the default) minus random>``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from _common import (
    CONF,
    DATA,
    cpu_flags,
    machine_note,
    quickstart_cfg,
    set_threads,
    table,
    write_results,
)
from omegaconf import OmegaConf

from vitft.apps.select import select
from vitft.apps.train import train
from vitft.data.folder import list_images

STRATEGIES = ("random", "margin", "entropy", "coreset", "badge")


def pool_images(limit: int | None) -> list[tuple[Path, str]]:
    out = []
    for cls_dir in sorted(p for p in (DATA / "train").iterdir() if p.is_dir()):
        out += [(f, cls_dir.name) for f in list_images(cls_dir)[0][:limit]]
    return out


def dataset(dst: Path, labelled: list[tuple[Path, str]], limit: int | None) -> Path:
    """train/ = the labelled images; val/ and test/ whole (symlinks)."""
    for f, c in labelled:
        (dst / "train" / c).mkdir(parents=True, exist_ok=True)
        (dst / "train" / c / f.name).symlink_to(f.resolve())
    for split in ("val", "test"):
        for cls_dir in sorted(p for p in (DATA / split).iterdir() if p.is_dir()):
            (dst / split / cls_dir.name).mkdir(parents=True, exist_ok=True)
            for f in list_images(cls_dir)[0][:limit]:
                (dst / split / cls_dir.name / f.name).symlink_to(f.resolve())
    return dst


def fit(data: Path, out: Path, seed: int, epochs: int) -> tuple[float, Path]:
    cfg = quickstart_cfg(
        out,
        data,
        ["normal", "crack", "dent"],
        seed,
        "model.image_size=64",  # as measured: the backbone's pretraining size
        f"trainer.max_epochs={epochs}",
    )
    metrics, objects = train(cfg)
    return float(metrics["test/acc"]), Path(objects["summary"]["model_dir"])


def pick(strategy, model_dir, unlabelled, budget, seed, work: Path) -> list[int]:
    if strategy == "random":
        return random.Random(f"{seed}-{len(unlabelled)}").sample(range(len(unlabelled)), budget)
    pool = work / "pool"
    pool.mkdir(parents=True)
    names = {}
    for i, (f, _) in enumerate(unlabelled):  # flat and unlabelled: the class is not in the path
        link = pool / f"{i:05d}{f.suffix}"
        link.symlink_to(f.resolve())
        names[str(link)] = i
    cfg = OmegaConf.load(CONF / "select.yaml")
    cfg.merge_with(
        {
            "model_dir": str(model_dir),
            "pool": str(pool),
            "budget": budget,
            "strategy": strategy,
            "seed": seed,
            "output": str(work / "selection.csv"),
            "progress": False,
        }
    )
    return [names[r["path"]] for r in select(cfg)]


def run_seed(seed: int, args, tmp: Path) -> list[list]:
    images = pool_images(args.limit)
    rng = random.Random(seed)
    n0 = max(3, round(args.start * len(images)))
    budget = max(1, round(args.step * len(images)))
    by_class: dict[str, list[int]] = {}
    for i, (_, c) in enumerate(images):
        by_class.setdefault(c, []).append(i)
    first = [rng.choice(ix) for ix in by_class.values()]  # every class once
    rest = [i for i in range(len(images)) if i not in first]
    start = first + rng.sample(rest, n0 - len(first))
    rows = []
    t0 = time.perf_counter()
    acc0, model0 = fit(dataset(tmp / f"s{seed}_r0", [images[i] for i in start], args.limit),
                       tmp / f"run_s{seed}_r0", seed, args.epochs)  # fmt: skip
    for strategy in args.strategies:
        labelled, model_dir, acc = list(start), model0, acc0
        rows.append([strategy, seed, 0, len(labelled), round(acc, 4)])
        for r in range(1, args.rounds + 1):
            unlabelled_ix = [i for i in range(len(images)) if i not in set(labelled)]
            work = tmp / f"s{seed}_{strategy}_r{r}"
            chosen = pick(strategy, model_dir, [images[i] for i in unlabelled_ix], budget, seed,
                          work)  # fmt: skip
            labelled += [unlabelled_ix[j] for j in chosen]
            data = dataset(work / "data", [images[i] for i in labelled], args.limit)
            acc, model_dir = fit(data, work / "run", seed, args.epochs)
            rows.append([strategy, seed, r, len(labelled), round(acc, 4)])
            print(" ".join(str(v) for v in rows[-1]), flush=True)
    print(f"seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--start", type=float, default=0.1, help="labelled fraction at round 0")
    parser.add_argument("--step", type=float, default=0.1, help="fraction picked per round")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--limit", type=int, default=None, help="images per class and split")
    parser.add_argument("--quick", action="store_true", help="tiny: 2 rounds, 1 epoch, 1 seed")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.rounds, args.epochs, args.limit = args.seeds[:1], 2, 1, 8
        args.strategies = ["random", "margin", "coreset"]
    set_threads()
    print(machine_note(), "|", cpu_flags())
    rows: list[list] = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            rows += run_seed(seed, args, Path(tmp))
    headers = ["strategy", "seed", "round", "labelled", "test_acc"]
    out = write_results("active_learning", headers, rows)
    summary = []
    final = {}
    for s in args.strategies:
        last = [r[4] for r in rows if r[0] == s and r[2] == args.rounds]
        curve = [r[4] for r in rows if r[0] == s and r[2] > 0]
        final[s] = statistics.mean(last)
        spread = statistics.stdev(last) if len(last) > 1 else 0.0
        summary.append([s, len(last), final[s], spread, statistics.mean(curve)])
    head = ["strategy", "seeds", "final test acc mean", "std", "mean acc over rounds 1-N"]
    print(table(head, summary))
    print(f"per round: {out}")
    base = "margin" if "margin" in final else args.strategies[0]
    print(f"RESULT active_learning {final[base] - final.get('random', 0.0):.4f}")


if __name__ == "__main__":
    main()
