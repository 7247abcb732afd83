"""Label efficiency: fine-tuning from scratch vs each pretraining route, same fine-tuning budget.

Routes (all the same ViT architecture as model=vit_fractal):
  scratch       random init
  formula       the shipped model=vit_fractal (supervised on formula-driven fractals)
  mae, dino     self-supervised on the dataset's own train images (labels ignored), from random
  formula+dino  DINO on the own images, continued from the shipped backbone (domain adaptation)
Each is fine-tuned with the quickstart recipe (experiment=quickstart: whole model, AdamW, cosine)
for the same budget of --epochs epochs on 10%, 25% and 100% of the train labels (stratified,
seeded), and scored on the full test split; mean and spread over seeds. The quickstart itself
(all labels of data/defect) runs once per seed for the RESULT line.

    python benchmarks/pretraining.py [--datasets defect pest] [--seeds 0 1 2] [--quick]

Writes benchmarks/results/pretraining.csv and ends with
``RESULT pretraining <mean quickstart test accuracy with the shipped backbone>``.
"""

from __future__ import annotations

import argparse
import csv
import random
import statistics
import tempfile
import time
from pathlib import Path

from _common import CONF, ROOT, cpu_flags, machine_note, set_threads, table
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from vitft.apps.pretrain import pretrain
from vitft.apps.train import train

ROUTES = ("scratch", "formula", "mae", "dino", "formula+dino")
FRACTIONS = (0.1, 0.25, 1.0)
QUIET = [
    "logger=none",
    "callbacks.lr_monitor=null",
    "callbacks.progress_bar=null",
    "+trainer.enable_model_summary=false",
]


def subset(src: Path, dst: Path, fraction: float, seed: int) -> Path:
    """``src`` with ``fraction`` of each class's train images (symlinks); val/test whole."""
    for split_dir in sorted(p for p in src.iterdir() if p.is_dir()):
        for cls_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            files = sorted(cls_dir.iterdir())
            if split_dir.name == "train":
                random.Random(f"{seed}-{cls_dir.name}").shuffle(files)
                files = sorted(files[: max(1, round(fraction * len(files)))])
            out = dst / split_dir.name / cls_dir.name
            out.mkdir(parents=True, exist_ok=True)
            for f in files:
                (out / f.name).symlink_to(f.resolve())
    return dst


def architecture() -> list[str]:
    """model=vit_tiny overrides that build vit_fractal's architecture with random weights."""
    shipped = Path(OmegaConf.to_container(compose_train([])["model"], resolve=True)["pretrained"])
    cfg = OmegaConf.create((shipped / "config.json").read_text())
    keys = (
        "image_size",
        "patch_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
    )
    return ["model=vit_tiny"] + [f"model.config.{k}={cfg[k]}" for k in keys]


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=["experiment=quickstart", *QUIET, *overrides])


def ssl_pretrain(route: str, data_dir: Path, out: Path, epochs: int) -> Path:
    method = route.split("+")[-1]
    start = ["model=vit_fractal"] if route.startswith("formula") else architecture()
    overrides = [
        *start,
        f"pretraining={method}",
        "trainer=cpu",
        f"trainer.max_epochs={epochs}",
        f"data.roots=[{data_dir / 'train'}]",
        "data.num_workers=0",
        "data.batch_size=32",
        *QUIET,
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("pretrain", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    pretrain(cfg)
    return out / "model"


def finetune(
    route: str,
    task: str,
    data_dir: Path,
    out: Path,
    seed: int,
    ssl: dict,
    epochs: int | None,
    image_size: int | None = None,
):
    if route == "scratch":
        model = architecture()
    elif route == "formula":
        model = []  # the quickstart's own model=vit_fractal
    else:
        model = [f"model.pretrained={ssl[route]}", "model.sha256=null"]
    extra = [f"trainer.max_epochs={epochs}"] if epochs else []
    extra += [f"model.image_size={image_size}"] if image_size else []
    cfg = compose_train(
        [
            f"task={task}",
            f"task.data_dir={data_dir}",
            f"seed={seed}",
            *model,
            *extra,
        ]
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    t = time.perf_counter()
    metrics, _ = train(cfg)
    return metrics["test/acc"], time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["defect", "pest"])
    parser.add_argument("--routes", nargs="+", default=list(ROUTES))
    parser.add_argument(
        "--fractions", nargs="*", type=float, default=list(FRACTIONS), help="none: quickstart only"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--ssl-epochs", type=int, default=50, help="MAE/DINO pretraining epochs")
    parser.add_argument("--epochs", type=int, default=40, help="fine-tuning epochs per run")
    # The table fine-tunes at the backbones' pretraining resolution; the quickstart (RESULT line)
    # runs as shipped (96 px).
    parser.add_argument("--image-size", type=int, default=64, help="fine-tuning px of the table")
    parser.add_argument("--quick", action="store_true", help="2 epochs each, for a smoke test")
    parser.add_argument("--csv", type=Path, default=ROOT / "benchmarks/results/pretraining.csv")
    args = parser.parse_args()
    if args.quick:
        args.ssl_epochs, args.epochs = 1, 1
    set_threads()
    print(machine_note(), "|", cpu_flags())

    rows, raw = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in args.datasets if args.fractions else []:
            data = ROOT / "data" / name
            ssl, cost = {}, {}
            for route in args.routes:
                if route in ("scratch", "formula"):
                    continue
                t = time.perf_counter()
                ssl[route] = ssl_pretrain(route, data, tmp / f"ssl_{name}_{route}", args.ssl_epochs)
                cost[route] = time.perf_counter() - t
                print(f"{name}: {route} pretraining {cost[route]:.0f} s", flush=True)
            for route in args.routes:
                for fraction in args.fractions:
                    accs, secs = [], []
                    for seed in args.seeds:
                        d = subset(data, tmp / f"{name}_{fraction}_{seed}_{route}", fraction, seed)
                        acc, sec = finetune(
                            route, name, d, tmp / "ft", seed, ssl, args.epochs, args.image_size
                        )
                        accs.append(acc)
                        secs.append(sec)
                        raw.append([name, route, fraction, seed, acc, sec])
                        print(
                            f"{name} {route} {fraction:.0%} seed {seed}: test acc {acc:.3f} "
                            f"({sec:.0f} s)",
                            flush=True,
                        )
                    rows.append(
                        [
                            name,
                            route,
                            f"{fraction:.0%}",
                            statistics.mean(accs),
                            statistics.stdev(accs) if len(accs) > 1 else 0.0,
                            min(accs),
                            max(accs),
                            statistics.median(secs),
                            round(cost.get(route, 0.0)),
                        ]
                    )

    headers = [
        "dataset",
        "route",
        "labels",
        "test acc mean",
        "std",
        "min",
        "max",
        "fine-tune s (median)",
        "pretrain s",
    ]
    if rows:
        print(table(headers, rows))
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow([*headers, "machine", "cpu_flags"])
            for r in rows:
                w.writerow(
                    [
                        *(f"{v:.4f}" if isinstance(v, float) else v for v in r),
                        machine_note(),
                        cpu_flags(),
                    ]
                )
    quickstart = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds if "defect" in args.datasets else []:
            acc, sec = finetune(
                "formula",
                "defect",
                ROOT / "data" / "defect",
                Path(tmp),
                seed,
                {},
                1 if args.quick else None,
            )
            quickstart.append(acc)
            print(f"quickstart seed {seed}: test acc {acc:.3f} in {sec:.0f} s", flush=True)
            raw.append(["defect", "quickstart", 1.0, seed, acc, sec])
    with open(args.csv.with_name(args.csv.stem + "_runs.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["dataset", "route", "fraction", "seed", "test_acc", "seconds", "machine"])
        w.writerows([*r, f"{machine_note()} | {cpu_flags()}"] for r in raw)
    if not quickstart:
        return
    print(
        f"quickstart: mean {statistics.mean(quickstart):.4f} min {min(quickstart):.4f} "
        f"max {max(quickstart):.4f} over seeds {args.seeds}"
    )
    print(f"RESULT pretraining {statistics.mean(quickstart):.4f}")


if __name__ == "__main__":
    main()
