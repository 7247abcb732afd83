"""eval on a tiny trained model: every file is written and metrics.json matches predictions.csv."""

import csv
import json

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from tests.conftest import CONF, make_cfg
from vitft.apps.evaluate import evaluate
from vitft.apps.train import train
from vitft.core.errors import VitftError

FILES = [
    "metrics.json",
    "predictions.csv",
    "confusion_matrix.png",
    "pr_curves.png",
    "roc_curves.png",
    "reliability.png",
    "errors.png",
    "heatmaps.png",
    "report.html",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_data):
    out = tmp_path_factory.mktemp("run")
    train(make_cfg(out, tiny_data, "trainer.max_epochs=2", "callbacks.progress_bar=null"))
    return out


def eval_cfg(out, *overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("eval", overrides=["data.num_workers=0", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    return cfg


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney U: P(score of a positive > score of a negative), ties count half."""
    pos, neg = score[positive], score[~positive]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return greater / (len(pos) * len(neg))


def test_eval_writes_everything_and_metrics_match_csv(run_dir, tiny_data, tmp_path):
    out = tmp_path / "eval"
    cfg = eval_cfg(
        out,
        "task=folder",
        f"task.data_dir={tiny_data}",
        f"ckpt_path={run_dir}/checkpoints/best.ckpt",
        "logger=wandb",
    )
    metrics = evaluate(cfg)
    for name in FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["images"] == 9 and saved["split"] == "test"

    rows = list(csv.DictReader((out / "predictions.csv").open()))
    classes = saved["classes"]
    probs = np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows])
    true = np.array([classes.index(r["true"]) for r in rows])
    pred = np.array([classes.index(r["predicted"]) for r in rows])
    # the true labels are the folders the files are in
    assert all(r["path"].split("/")[-2] == r["true"] for r in rows)
    assert (pred == probs.argmax(1)).all()
    assert saved["accuracy"] == pytest.approx((pred == true).mean(), abs=1e-6)
    f1s, weights = [], []
    for i, c in enumerate(classes):
        tp = ((pred == i) & (true == i)).sum()
        precision = tp / max((pred == i).sum(), 1)
        recall = tp / max((true == i).sum(), 1)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        f1s.append(f1)
        weights.append((true == i).sum())
        pc = saved["per_class"][c]
        assert pc["precision"] == pytest.approx(precision, abs=1e-6)
        assert pc["recall"] == pytest.approx(recall, abs=1e-6)
        assert pc["f1"] == pytest.approx(f1, abs=1e-6)
        assert pc["support"] == (true == i).sum()
        assert pc["auroc"] == pytest.approx(auroc(probs[:, i], true == i), abs=1e-4)
    assert saved["f1_macro"] == pytest.approx(np.mean(f1s), abs=1e-6)
    assert saved["f1_weighted"] == pytest.approx(np.average(f1s, weights=weights), abs=1e-6)
    top2 = np.argsort(-probs, axis=1)[:, :2]
    assert saved["top2_accuracy"] == pytest.approx((top2 == true[:, None]).any(1).mean())
    conf = probs.max(1)
    bins = np.digitize(conf, np.linspace(0, 1, saved["ece_bins"] + 1)) - 1
    ece = sum(
        abs(conf[bins == b].mean() - (pred == true)[bins == b].mean()) * (bins == b).mean()
        for b in np.unique(bins)
    )
    assert saved["ece"] == pytest.approx(ece, abs=1e-4)
    cm = np.zeros((3, 3), int)
    np.add.at(cm, (true, pred), 1)
    assert saved["confusion_matrix"] == cm.tolist()
    assert metrics["accuracy"] == saved["accuracy"]

    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 6 and str(tiny_data) in html

    # W&B (offline): the run holds the figures and the predictions table
    media = list((out / "wandb").glob("offline-run-*/files/media/**/*.json"))
    assert any("predictions" in p.name for p in media)


def test_eval_on_other_folder_maps_classes_by_name(run_dir, tmp_path):
    from tests.conftest import make_dataset

    # a "new line": a plain folder of class folders (no train/), with only two of the classes
    data = make_dataset(tmp_path / "line", classes=("red", "blue"), counts={"new": 2}) / "new"
    out = tmp_path / "eval"
    cfg = eval_cfg(
        out,
        "task=folder",
        f"task.data_dir={data}",
        f"model_dir={run_dir}/model",
        "explain.per_class=0",
    )
    metrics = evaluate(cfg)
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert {r["true"] for r in rows} == {"red", "blue"} and metrics["images"] == 4
    # green is a model class with no images here: its recall and AUROC are undefined, not 0
    green = metrics["per_class"]["green"]
    assert green["support"] == 0 and green["recall"] is None and green["auroc"] is None
    assert metrics["per_class"]["red"]["auroc"] is not None
    assert not (out / "heatmaps.png").exists()

    bad = make_dataset(tmp_path / "bad", classes=("red", "cat"), counts={"train": 1, "test": 1})
    bad = bad / "test"
    cfg = eval_cfg(out, "task=folder", f"task.data_dir={bad}", f"model_dir={run_dir}/model")
    with pytest.raises(VitftError, match=r"\['cat'\]"):
        evaluate(cfg)
