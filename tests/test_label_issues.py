"""Label issues: out-of-fold probabilities, cleanlab's suspects, near-duplicates across splits,
and `vitft check-data labels=true` end to end (CSV, gallery, Label Studio review tasks)."""

from __future__ import annotations

import csv
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from PIL import Image, PngImagePlugin

from tests.conftest import CLASSES, CONF, make_dataset, save_tiny_vit
from vitft.apps.check_data import check_data, feature_model
from vitft.core.errors import VitftError
from vitft.data.label_issues import find_issues, near_duplicates, out_of_fold_probs
from vitft.deploy.predictor import Predictor

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_flipped_labels_are_found_out_of_fold():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 4, size=(3, 16))
    clean = np.repeat(np.arange(3), 40)
    feats = centres[clean] + rng.normal(0, 1, size=(120, 16))
    noisy = clean.copy()
    flipped = rng.choice(120, 12, replace=False)
    noisy[flipped] = (noisy[flipped] + 1 + rng.integers(0, 2, 12)) % 3
    probs = out_of_fold_probs(feats, noisy, folds=5, seed=0)
    assert probs.shape == (120, 3) and np.allclose(probs.sum(1), 1)
    paths = [f"img_{i}.png" for i in range(120)]
    issues = find_issues(paths, noisy, probs, feats, ["a", "b", "c"])
    flagged = {int(x.path[4:-4]) for x in issues}
    assert len(flagged & set(flipped)) >= 9 and len(flagged - set(flipped)) <= 2
    for x in issues:  # the suggestion is the label before the flip
        i = int(x.path[4:-4])
        if i in set(flipped):
            assert x.suggested == "abc"[clean[i]] and x.given == "abc"[noisy[i]]
    scores = [x.score for x in issues]
    assert scores[0] <= np.median(scores)  # ranked: the most likely wrong first


def test_near_duplicates_by_feature_similarity():
    rng = np.random.default_rng(1)
    train = rng.normal(size=(20, 8))
    test = np.vstack([rng.normal(size=(5, 8)), train[3] + rng.normal(0, 0.01, 8)])
    assert [(i, j) for i, j, _ in near_duplicates(test, train, 0.25)] == [(5, 3)]
    assert near_duplicates(100 * test[:5], 100 * train, 0.25) == []  # scale-free


def _labels_cfg(root: Path, tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "check_data",
            overrides=[f"data_dir={root}", "labels=true", "model=vit_tiny", *overrides],
        )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "out")
        cfg.label_issues.cache_dir = str(tmp_path / "cache")
    return cfg


@pytest.mark.parametrize("trained", [False, True], ids=["pretrained", "model_dir"])
def test_check_data_labels_true_writes_what_a_person_acts_on(tmp_path, trained):
    root = make_dataset(tmp_path / "d", counts={"train": 10, "val": 3, "test": 3})
    wrong = root / "train" / "red" / "red_train_000.png"
    wrong.rename(root / "train" / "blue" / "moved_from_red.png")  # a red image labelled blue
    leak = Image.open(root / "train" / "green" / "green_train_001.png")
    info = PngImagePlugin.PngInfo()
    info.add_text("exported", "again")  # other bytes, the same pixels: sha256 misses it
    leak.save(root / "test" / "green" / "leak.png", pnginfo=info)
    opts = ["label_issues.export=label_studio", "label_issues.folds=3"]
    if trained:  # the features of a model the user trained (here: a saved tiny ViT)
        opts.append(f"label_issues.model_dir={save_tiny_vit(tmp_path / 'model', CLASSES)}")
    assert check_data(_labels_cfg(root, tmp_path, *opts)) == 0
    out = tmp_path / "out"
    rows = list(csv.DictReader((out / "label_issues.csv").open()))
    assert list(rows[0]) == ["rank", "path", "given", "suggested", "score", "p_given",
                             "p_suggested", "outlier"]  # fmt: skip
    assert all(r["given"] != r["suggested"] for r in rows)
    assert {r["given"] for r in rows} <= set(CLASSES)
    assert any(r["path"].endswith("moved_from_red.png") and r["suggested"] == "red" for r in rows)
    with Image.open(out / "label_issues.png") as img:
        assert img.width > 200
    tasks = json.loads((out / "label_studio_review.json").read_text())
    assert [t["data"]["path"] for t in tasks] == [r["path"] for r in rows]
    assert [t["predictions"][0]["result"][0]["value"]["choices"] for t in tasks] == [
        [r["suggested"]] for r in rows
    ]
    report = json.loads((out / "data_report.json").read_text())
    near = [w for w in report["warnings"] if w["kind"] == "near_duplicate_across_splits"]
    assert [w["path"] for w in near] == [str(root / "test" / "green" / "leak.png")]
    assert "green_train_001.png" in near[0]["detail"]


def test_model_dir_gives_the_trained_backbone_or_a_clear_error(tmp_path):
    root = make_dataset(tmp_path / "d", counts={"train": 4, "val": 2, "test": 2})
    saved = save_tiny_vit(tmp_path / "model", CLASSES)
    cfg = _labels_cfg(root, tmp_path, f"label_issues.model_dir={saved}")
    model, processor = feature_model(cfg, list(CLASSES))
    again, _ = feature_model(cfg, list(CLASSES))  # the same weights every time, not a fresh init
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert processor.size["height"] == 32  # the trained model's own preprocessing
    (tmp_path / "not_a_model").mkdir()
    bad = _labels_cfg(root, tmp_path, f"label_issues.model_dir={tmp_path / 'not_a_model'}")
    with pytest.raises(VitftError, match=r"label_issues.model_dir=.*not a model dir.*<run>/model"):
        check_data(bad)


def test_neighbour_flips_move_one_grade(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    bench = importlib.import_module("label_issues")
    assert bench.is_graded(["g0_ok", "g1_mild", "g2_moderate", "g3_severe"])
    assert not bench.is_graded(["crack", "dent", "normal"])
    assert not bench.is_graded(["g0_ok", "g2_bad"])  # a grade missing: not one apart
    clean = np.repeat(np.arange(4), 50)
    for neighbour in (False, True):
        noisy, flipped = bench.flip_labels(clean, 0.1, 4, np.random.default_rng(0), neighbour)
        assert len(flipped) == 20 and len(set(flipped)) == 20
        assert (noisy[flipped] != clean[flipped]).all()
        assert (np.delete(noisy, flipped) == np.delete(clean, flipped)).all()
        assert ((noisy >= 0) & (noisy < 4)).all()
        steps = np.abs(noisy[flipped] - clean[flipped])
        assert (steps == 1).all() if neighbour else (steps > 1).any()


@pytest.mark.slow
def test_benchmark_quick_mode_reports_both_flip_kinds(tmp_path):
    env = {**os.environ, "VITFT_RESULTS_DIR": str(tmp_path), "WANDB_MODE": "disabled"}
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / "label_issues.py"), "--quick"],
        capture_output=True, text=True, cwd=BENCHMARKS.parent, env=env, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    tag, name, recall, precision = out.stdout.strip().splitlines()[-1].split()
    assert (tag, name) == ("RESULT", "label_issues") and 0 <= float(recall) <= 1
    rows = list(csv.DictReader((tmp_path / "label_issues.csv").open()))
    assert {(r["dataset"], r["flips"]) for r in rows} == {
        ("defect", "uniform"),
        ("proxy", "uniform"),
        ("proxy", "neighbour"),
    }  # defect's classes are not grades: no neighbour flips there


def test_crossfit_finetune_scores_each_image_by_the_fold_model_that_never_saw_it(tmp_path):
    root = make_dataset(tmp_path / "d", counts={"train": 4, "val": 2, "test": 1})
    wrong = root / "train" / "red" / "red_train_000.png"
    wrong.rename(root / "train" / "blue" / "moved_from_red.png")  # a red image labelled blue
    fine_tune = ["model=vit_tiny", "model.image_size=32", "trainer.max_epochs=6"]
    fine_tune += ["data.batch_size=4", "trainer.precision=32-true", "data.num_workers=0"]
    listed = ",".join(f'"{o}"' for o in fine_tune)
    opts = ["label_issues.crossfit=finetune", "label_issues.folds=2",
            f"label_issues.finetune_overrides=[{listed}]"]  # fmt: skip
    assert check_data(_labels_cfg(root, tmp_path, *opts)) == 0
    out = tmp_path / "out"
    rows = list(csv.DictReader((out / "label_issues.csv").open()))
    assert {r["given"] for r in rows} <= set(CLASSES)
    folds = {r["path"]: int(r["fold"]) for r in csv.DictReader((out / "crossfit/folds.csv").open())}
    assert len(folds) == 12 and set(folds.values()) == {0, 1}
    for k in (0, 1):
        assert (out / "crossfit" / f"fold_{k}" / "model" / "config.json").is_file()
        trained = {p.resolve() for p in (out / "crossfit/data" / f"fold_{k}/train").rglob("*.png")}
        # each fold model trained on exactly the images the other fold holds out
        assert trained == {Path(p).resolve() for p, f in folds.items() if f != k}
        assert len(list((out / "crossfit/data" / f"fold_{k}/val").rglob("*.png"))) == 6
    models = {k: Predictor.from_path(out / f"crossfit/fold_{k}/model", ood=False) for k in (0, 1)}
    for r in rows:  # its probabilities are those of the model of the fold that held it out
        p = models[folds[r["path"]]].predict([r["path"]])[0].probs
        assert p[r["given"]] == pytest.approx(float(r["p_given"]), abs=1e-3)
        assert p[r["suggested"]] == pytest.approx(float(r["p_suggested"]), abs=1e-3)
    assert any(r["path"].endswith("moved_from_red.png") and r["suggested"] == "red" for r in rows)


def test_crossfit_bad_input_is_one_clear_line(tmp_path):
    root = make_dataset(tmp_path / "d", counts={"train": 3, "val": 1, "test": 1})
    for opts, match in (
        (["label_issues.crossfit=bagging"], r"label_issues.crossfit=bagging is unknown"),
        (["label_issues.crossfit=finetune", "label_issues.folds=5"],
         r"label_issues.folds=5 needs 2 <= folds <= .* \(3\).*set label_issues.folds"),
    ):  # fmt: skip
        with pytest.raises(VitftError, match=match):
            check_data(_labels_cfg(root, tmp_path, *opts))
