"""Unknown morphologies: does the shipped unknown flag catch defect types no class ever shows?

benchmarks/unknown_defect.py holds out one of a dataset's own classes, which the generator also
draws in the other classes' style. Here the model trains on every class (the recommended recipe,
``experiment=small_data``), and the unknowns are new in shape, size and texture: the sample
generator's ``MORPHOLOGIES`` (data/make_samples.py: scratch, pits, texture, discolour), each at
3 sizes, drawn only for this benchmark and never written into a training split. ``proxy``: the
graded inspection proxy of real photos (benchmarks/inspection_proxy.py, half size) with its own
unknown types from other real images (``UNKNOWN_KINDS``: a bright line, printed text, a coin, a
patch of gravel texture), on ok parts.

Per dataset, seed and type: the AUROC of ``ood_score`` against the known test images, the share of
the type flagged ``unknown`` at the threshold train() stores (``ood.acceptance`` of val), and the
false-alarm rate on the known test images. ``shipped`` is the scorer in the model dir, read back
through Predictor as predict.py does; two alternatives are fitted on the same features:

  class_cov    ``ood.method=mahalanobis_class``: each class with its own shrunk covariance
  layer_max    one Mahalanobis distance per feature part (pooled, and each depth's peak), each
               standardised on val, fused by their maximum (a layer ensemble)
  one_view     the cheap setting ``ood.views=none``: the shipped method fitted and scored on the
               image as given (one backbone pass) instead of its d4 views

``predict_ms``: predict's time per image (batch 64, decoding included) with that method's
scorer; ``predict_ms_no_flag``: the same without the unknown flag (``ood=false``).

    python benchmarks/unknown_morphology.py [--datasets defect pest proxy] [--seeds 0 1 2]
        [--per-size 10] [--quick]

Writes benchmarks/results/unknown_morphology.csv (per run and type) and prints the means per
dataset, method and type; ends with ``RESULT unknown_morphology <mean AUROC of shipped>``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import ROOT, cpu_flags, machine_note, quickstart_cfg, set_threads, table, write_results
from unknown_defect import class_images

from vitft.apps.train import train
from vitft.deploy.predictor import Predictor
from vitft.models.ood import OODScorer, auroc, ood_hidden

sys.path.insert(0, str(ROOT / "data"))
import inspection_proxy  # noqa: E402
import make_samples  # noqa: E402

METHODS = ("shipped", "class_cov", "layer_max", "one_view")
HEADERS = ["dataset", "seed", "method", "type", "auroc", "flagged", "false_alarm", "test_acc",
           "known_test_images", "unknown_images", "train_s", "predict_ms",
           "predict_ms_no_flag"]  # fmt: skip


def kinds_of(dataset: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The unknown types and sizes of ``dataset``."""
    if dataset == "proxy":
        return inspection_proxy.UNKNOWN_KINDS, tuple(inspection_proxy.UNKNOWN_SIZES)
    return tuple(make_samples.MORPHOLOGIES), tuple(make_samples.SCALES)


def draw_unknowns(dataset: str, seed: int, per_size: int, out: Path) -> dict[str, list[Path]]:
    rng = np.random.default_rng(1000 + seed)
    paths: dict[str, list[Path]] = {}
    kinds, sizes = kinds_of(dataset)
    for kind in kinds:
        for size in sizes:
            for i in range(per_size):
                path = out / kind / f"{size}_{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                if dataset == "proxy":
                    img = inspection_proxy.unknown_image(kind, size, rng)
                else:
                    img = make_samples.unknown_image(rng, dataset, kind, size)
                img.save(path)
                paths.setdefault(kind, []).append(path)
    return paths


def part_bounds(model: torch.nn.Module, size: int) -> list[int]:
    """Where each part (pooled, then each depth's peak) of the OOD features starts and ends."""
    with torch.no_grad():
        pooled, hidden = ood_hidden(model.eval(), torch.zeros(1, 3, size, size))
    dims = [pooled.shape[1]] + [h.shape[1] if h.dim() == 4 else h.shape[-1] for h in hidden]
    return np.cumsum([0, *dims]).tolist()


def layer_max(train_f: torch.Tensor, labels: torch.Tensor, val_f: torch.Tensor, bounds: list[int]):
    def part(f: torch.Tensor, i: int) -> torch.Tensor:
        return torch.nn.functional.normalize(f[..., bounds[i] : bounds[i + 1]], dim=-1)

    parts = range(len(bounds) - 1)
    scorers = [OODScorer.fit("mahalanobis", part(train_f, i), labels) for i in parts]
    val = [s.score(part(val_f, i)) for i, s in zip(parts, scorers, strict=True)]
    mean, std = [v.mean() for v in val], [v.std() for v in val]

    def score(f: torch.Tensor) -> torch.Tensor:
        z = [(s.score(part(f, i)) - mean[i]) / std[i] for i, s in zip(parts, scorers, strict=True)]
        return torch.stack(z, 1).max(1).values

    return score


def predict_ms(predictor: Predictor, paths: list[Path], scorer) -> float:
    """Median over 3 repeats of predict's milliseconds per image with ``scorer`` as the flag."""
    stored, predictor.ood = predictor.ood, scorer
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        predictor.predict_files(paths, progress=False)
        times.append((time.perf_counter() - t0) * 1000 / len(paths))
    predictor.ood = stored
    return round(statistics.median(times), 2)


def one_run(dataset: str, seed: int, tmp: Path, args) -> list[list]:
    unknowns = draw_unknowns(dataset, seed, args.per_size, tmp / f"unknown_{dataset}_{seed}")
    if dataset == "proxy":  # the graded real-photo proxy (half size), built once per run
        data = tmp / "proxy"
        if not data.is_dir():
            inspection_proxy.build(data, scale=args.proxy_scale)
    else:
        data = ROOT / "data" / dataset
    classes = sorted(p.name for p in (data / "train").iterdir() if p.is_dir())
    cfg = quickstart_cfg(tmp / f"run_{dataset}_{seed}", data, classes, seed, "test=false",
                         *args.overrides, experiment="small_data")  # fmt: skip
    t0 = time.perf_counter()
    _, objects = train(cfg)
    train_s = time.perf_counter() - t0
    predictor = Predictor.from_path(objects["summary"]["model_dir"], batch_size=64)
    stored = predictor.ood
    views = stored.views

    def feats(paths: list[Path], views: str = views) -> torch.Tensor:
        f, _, bad = predictor.features_files(paths, progress=False, views=views)
        assert not bad, bad
        return f

    tr_paths, tr_labels = class_images(data, "train")
    va_paths, _ = class_images(data, "val")
    te_paths, te_labels = class_images(data, "test")
    labels = torch.tensor(tr_labels)
    f_tr, f_va, f_te = feats(tr_paths), feats(va_paths), feats(te_paths)
    f_un = {kind: feats(paths) for kind, paths in unknowns.items()}
    preds = predictor.predict_files(te_paths, progress=False).predictions
    top = [max(p.probs, key=p.probs.get) for p in preds]  # the class, also when flagged unknown
    test_acc = statistics.mean(t == classes[y] for t, y in zip(top, te_labels, strict=True))
    bounds = part_bounds(objects["module"].model, int(cfg.model.image_size))
    g_va, g_te = feats(va_paths, "none"), feats(te_paths, "none")
    g_un = {kind: feats(paths, "none") for kind, paths in unknowns.items()}
    one_view = OODScorer.fit(stored.method, feats(tr_paths, "none"), labels, views="none")
    one_view.calibrate(g_va, stored.acceptance)
    scorers = {
        "shipped": stored.score,
        "class_cov": OODScorer.fit("mahalanobis_class", f_tr, labels).score,
        "layer_max": layer_max(f_tr, labels, f_va, bounds),
        "one_view": one_view.score,
    }
    cost = {m: predict_ms(predictor, te_paths, s) for m, s in
            (("shipped", stored), ("one_view", one_view), ("no_flag", None))}  # fmt: skip
    rows = []
    for method, score in scorers.items():
        va, te, un = (g_va, g_te, g_un) if method == "one_view" else (f_va, f_te, f_un)
        s_va, s_te = score(va), score(te)
        threshold = {"shipped": stored.threshold, "one_view": one_view.threshold}.get(method)
        if threshold is None:  # the alternatives: the same acceptance of val
            threshold = float(torch.quantile(s_va.double(), stored.acceptance))
        false_alarm = float((s_te > threshold).float().mean())
        for kind, f in un.items():
            s_un = score(f)
            rows.append([dataset, seed, method, kind, round(auroc(s_te, s_un), 4),
                         round(float((s_un > threshold).float().mean()), 4),
                         round(false_alarm, 4), round(float(test_acc), 4), len(s_te),
                         len(s_un), round(train_s, 1), cost.get(method, cost["shipped"]),
                         cost["no_flag"]])  # fmt: skip
            print(" ".join(str(v) for v in rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["defect", "pest"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--per-size", type=int, default=10, help="unknowns per type and size")
    parser.add_argument("--proxy-scale", type=float, default=0.5, help="dataset proxy: its size")
    parser.add_argument("--overrides", nargs="+", default=[], help="train overrides")
    parser.add_argument("--quick", action="store_true", help="defect, seed 0, 1 epoch, 2 a size")
    args = parser.parse_args()
    if args.quick:
        args.datasets, args.seeds, args.per_size = args.datasets[:1], args.seeds[:1], 2
        args.overrides = [*args.overrides, "trainer.max_epochs=1", "model.image_size=64"]
    set_threads()
    print(machine_note(), "|", cpu_flags(), flush=True)
    rows: list[list] = []
    with tempfile.TemporaryDirectory(prefix="vitft_unknown_morph_") as tmp:
        for dataset in args.datasets:
            for seed in args.seeds:
                rows += one_run(dataset, seed, Path(tmp), args)
    out = write_results("unknown_morphology", HEADERS, rows)
    summary = []
    for dataset in args.datasets:
        for method in METHODS:
            sel = [r for r in rows if r[0] == dataset and r[2] == method]
            cells = []
            for kind in kinds_of(dataset)[0]:
                k = [r for r in sel if r[3] == kind]
                cells.append(f"{kind} {statistics.mean(r[4] for r in k):.3f} / "
                             f"{statistics.mean(r[5] for r in k):.0%}")  # fmt: skip
            alarms = statistics.mean(r[6] for r in sel)
            ms = [statistics.median(r[i] for r in sel) for i in (11, 12)]
            summary.append([dataset, method, len(args.seeds), *cells, f"{alarms:.1%}",
                            f"{ms[0]:.1f} ({ms[1]:.1f})"])  # fmt: skip
    print(table(["dataset", "method", "seeds", "AUROC / flagged per type", "", "", "",
                 "false alarms", "predict ms/img (no flag)"], summary))  # fmt: skip
    print(f"per run: {out}")
    shipped = [r[4] for r in rows if r[2] == "shipped"]
    print(f"RESULT unknown_morphology {statistics.mean(shipped):.4f}")


if __name__ == "__main__":
    main()
