"""Few-shot new class: hold one class of data/defect out of training, then add it from 5 and from
10 of its training images with add_class (the backbone untouched).

For each held-out class and seed: the recommended recipe (``experiment=small_data``: the shipped
``model=mobilevit_fractal`` fine-tuned whole) trains on the other classes;
``vitft.apps.add_class`` grows the head from n images of the held-out class (drawn from its train
split, seeded). Scored on the test split: the new class's recall on its test images, and the old
classes' accuracy on theirs, before and after. Target: the old classes lose 1 point or less.
Ends with ``RESULT add_class <mean change of the old classes' test accuracy at 5 images, in
points>``.

    python benchmarks/add_class.py [--seeds 0 1 2] [--shots 5 10] [--experiment quickstart]
        [--quick]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
from pathlib import Path

from _common import (
    CONF,
    ROOT,
    cpu_flags,
    machine_note,
    quickstart_cfg,
    set_threads,
    table,
    write_results,
)
from omegaconf import OmegaConf
from unknown_defect import class_images, split_classes

from vitft.apps.add_class import add_class
from vitft.apps.train import train
from vitft.data.folder import list_images
from vitft.deploy.predictor import Predictor

HEADERS = ["held-out class", "seed", "shots", "new recall", "old acc before", "old acc after",
           "old change (points)"]  # fmt: skip


def _accuracy(model_dir: Path, paths: list[Path], names: list[str]) -> float:
    preds = Predictor.from_path(model_dir, ood=False, batch_size=64).predict(paths)
    return sum(p.predicted == n for p, n in zip(preds, names, strict=True)) / len(names)


def one_run(held_out: str, seed: int, shots: list[int], tmp: Path, args) -> list[list]:
    source = ROOT / "data" / "defect"
    data = tmp / f"{held_out}_{seed}"
    split_classes(source, held_out, data, None)
    known = sorted(p.name for p in (data / "train").iterdir())
    cfg = quickstart_cfg(
        tmp / f"run_{held_out}_{seed}",
        data,
        known,
        seed,
        f"trainer.max_epochs={args.epochs}",
        "test=false",
        "ood.method=null",
        experiment=args.experiment,
    )
    _, objects = train(cfg)
    model_dir = Path(objects["summary"]["model_dir"])

    old_paths, old_idx = class_images(data, "test")
    old_names = [known[i] for i in old_idx]
    new_test = list_images(source / "test" / held_out)[0]
    before = _accuracy(model_dir, old_paths, old_names)
    pool = list_images(source / "train" / held_out)[0]
    rows = []
    for n in shots:
        picked = tmp / f"shots_{held_out}_{seed}_{n}"
        picked.mkdir()
        for f in random.Random(seed).sample(pool, n):
            (picked / f.name).symlink_to(f.resolve())
        out = tmp / f"added_{held_out}_{seed}_{n}"
        add_cfg = OmegaConf.load(CONF / "add_class.yaml")
        add_cfg.merge_with({"model_dir": str(model_dir), "class": held_out,
                            "images": str(picked), "output": str(out)})  # fmt: skip
        add_class(add_cfg)
        after = _accuracy(out, old_paths, old_names)
        recall = _accuracy(out, new_test, [held_out] * len(new_test))
        rows.append([held_out, seed, n, recall, before, after, 100 * (after - before)])
        print(f"{held_out} seed {seed} {n} shots: new recall {recall:.3f}, old accuracy "
              f"{before:.3f} -> {after:.3f}", flush=True)  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", nargs="+", default=["crack", "dent", "normal"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--shots", nargs="+", type=int, default=[5, 10])
    parser.add_argument("--experiment", default="small_data", help="the training recipe")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="1 class, 1 seed, 1 epoch")
    args = parser.parse_args()
    if args.quick:
        args.classes, args.seeds, args.epochs = args.classes[:1], args.seeds[:1], 1
    set_threads()
    print(machine_note(), "|", cpu_flags())
    rows: list[list] = []
    with tempfile.TemporaryDirectory() as tmp:
        for held_out in args.classes:
            for seed in args.seeds:
                rows += one_run(held_out, seed, args.shots, Path(tmp), args)
    print(table(HEADERS, rows))
    summary = []
    for n in args.shots:
        sel = [r for r in rows if r[2] == n]
        summary.append(["all", "mean", n, statistics.mean(r[3] for r in sel),
                        statistics.mean(r[4] for r in sel), statistics.mean(r[5] for r in sel),
                        statistics.mean(r[6] for r in sel)])  # fmt: skip
    print(table(HEADERS, summary))
    print("wrote", write_results("add_class", HEADERS, rows + summary))
    print(f"RESULT add_class {summary[0][6]:.2f}")


if __name__ == "__main__":
    main()
