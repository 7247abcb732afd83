"""Multi-label: thresholds, metrics, training, predict/eval/export label sets, freeze strategies."""

import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from tests.conftest import CONF, ROOT, TINY_VIT_CONFIG, make_cfg, make_multilabel_manifest
from tests.test_strategies import fit_steps
from vitft.apps.evaluate import evaluate
from vitft.apps.export import export
from vitft.apps.train import train
from vitft.core.errors import VitftError
from vitft.data.manifest import scan_manifest
from vitft.deploy.predictor import Predictor
from vitft.models.multilabel import PROBLEM_TYPE, compute_metrics, pos_weights, tune_thresholds

OPT = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-2}


def test_thresholds_maximise_f1_per_class():
    probs = torch.tensor([[0.1, 0.9], [0.4, 0.8], [0.35, 0.2], [0.8, 0.3]])
    target = torch.tensor([[0, 1], [0, 1], [1, 0], [1, 0]])
    # class 0: F1 is best (0.8) when 0.35 and above are positive; halfway down to the next score
    # (0.1). class 1: 0.8 separates perfectly; halfway down to 0.3.
    assert tune_thresholds(probs, target) == pytest.approx([0.225, 0.55])
    assert tune_thresholds(probs, torch.zeros_like(target)) == [None, None]  # nothing to tune


def test_metrics_and_pos_weights():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.7], [0.6, 0.6], [0.1, 0.2]])
    target = torch.tensor([[1, 0], [0, 1], [1, 0], [0, 0]])
    m = compute_metrics(probs, target, ["a", "b"], [0.5, 0.5])
    assert m["subset_accuracy"] == pytest.approx(0.75)  # row 3 predicts b too
    assert m["hamming_loss"] == pytest.approx(1 / 8)
    assert m["per_class"]["b"]["precision"] == pytest.approx(0.5)
    assert m["confusion"]["b"] == [[2, 1], [0, 1]]
    assert pos_weights("auto", torch.tensor([1.0, 3.0]), 4) == [3.0, pytest.approx(1 / 3)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny multi-label run on a manifest (freeze=backbone: the feature cache path)."""
    root = tmp_path_factory.mktemp("ml")
    manifest = make_multilabel_manifest(root / "data", n=48)
    cfg = make_cfg(
        root / "run",
        None,
        "task=folder",
        f"task.data_dir={manifest}",
        "data=manifest",
        "freeze=backbone",
        "trainer.max_epochs=3",
        "optimizer.lr=0.05",
        "loss.class_weights=auto",
    )
    with open_dict(cfg):
        cfg.model.config = TINY_VIT_CONFIG
    OmegaConf.resolve(cfg)
    metrics, objects = train(cfg)
    return root, metrics, objects


def test_training_tunes_and_stores_thresholds(trained):
    root, metrics, objects = trained
    summary = objects["summary"]
    assert summary["multilabel"] and set(summary["thresholds"]) == {"scratch", "stain"}
    assert objects["module"].criterion.pos_weight is not None  # class_weights=auto
    for key in ("test/acc", "test/hamming", "test/f1_micro", "test/f1_macro", "test/ap_stain"):
        assert 0.0 <= metrics[key] <= 1.0
    model_dir = root / "run" / "model"
    assert json.loads((model_dir / "config.json").read_text())["problem_type"] == PROBLEM_TYPE
    assert json.loads((model_dir / "vitft.json").read_text())["thresholds"] == summary["thresholds"]
    assert len(summary["confusion_matrix"]["test"]) == 2  # one 2x2 matrix per class


def test_predict_eval_and_export_return_label_sets(trained):
    root, _, objects = trained
    model_dir = root / "run" / "model"
    tuned = objects["summary"]["thresholds"]
    predictor = Predictor.from_path(model_dir)
    assert predictor.thresholds.tolist() == pytest.approx([tuned["scratch"], tuned["stain"]])
    images = sorted((root / "data" / "images").glob("*.png"))[:4]
    preds = predictor.predict(images)
    for p in preds:
        expected = [c for c in ("scratch", "stain") if p.probs[c] >= tuned[c]]
        assert p.labels == expected and p.label == ";".join(expected)
    assert Predictor.from_path(model_dir, threshold=0.999).predict(images)[0].labels == []

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        ecfg = compose("eval", overrides=[f"model_dir={model_dir}", "data=manifest",
                                          f"task.data_dir={root / 'data' / 'labels.csv'}",
                                          "explain.per_class=0", "data.num_workers=0"])  # fmt: skip
    with open_dict(ecfg):
        ecfg.paths.output_dir = str(root / "eval")
    m = evaluate(ecfg)
    assert {"subset_accuracy", "hamming_loss", "f1_micro", "f1_macro", "map"} <= set(m)
    assert set(m["per_class"]["stain"]) >= {"precision", "recall", "f1", "average_precision"}
    for png in ("pr_curves", "confusion_grid", "errors"):
        assert (root / "eval" / f"{png}.png").stat().st_size > 5000

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        xcfg = compose("export", overrides=[f"model_dir={model_dir}", "formats=[onnx]",
                                            f"output_dir={root / 'export'}"])  # fmt: skip
    parity = export(xcfg)["onnx"]
    assert parity["label_sets"] and parity["agreement"] == 1.0 and parity["passed"]
    meta = json.loads((root / "export" / "onnx" / "metadata.json").read_text())
    assert meta["multilabel"] and meta["thresholds"] == pytest.approx(tuned)
    onnx_preds = Predictor.from_path(root / "export" / "onnx").predict(images)
    assert [p.labels for p in onnx_preds] == [p.labels for p in preds]


@pytest.mark.parametrize(
    "freeze", sorted(p.stem for p in (CONF / "freeze").glob("*.yaml")), ids=str
)
def test_every_freeze_strategy_trains_multilabel(tmp_path, freeze):
    splits = scan_manifest(make_multilabel_manifest(tmp_path, n=16))
    freeze_cfg = OmegaConf.to_container(OmegaConf.load(CONF / "freeze" / f"{freeze}.yaml"))
    # Small enough for a 3-block ViT, and every unfreeze step happens within 2 epochs.
    overrides = {"n": 1, "milestones": [0, 1], "unfreeze_epoch": 1}
    freeze_cfg.update({k: v for k, v in overrides.items() if k in freeze_cfg})
    model, changed, trainer = fit_steps(splits, freeze_cfg, epochs=2)
    module = trainer.lightning_module
    assert changed and all(p.requires_grad for k, p in model.named_parameters() if k in changed)
    assert module.multilabel and isinstance(module.criterion, torch.nn.BCEWithLogitsLoss)
    assert trainer.global_step == 4


def test_single_label_options_are_refused(tmp_path):
    manifest = make_multilabel_manifest(tmp_path / "data", n=8)
    cfg = make_cfg(tmp_path / "run", None, "task=folder", f"task.data_dir={manifest}",
                   "data=manifest", "loss.mixup_alpha=0.2")  # fmt: skip
    with open_dict(cfg):
        cfg.model.config = TINY_VIT_CONFIG
    with pytest.raises(VitftError, match="multi-label"):
        train(cfg)


def test_serve_returns_label_sets_and_thresholds(trained):
    pytest.importorskip("fastapi")  # the `serve` extra, part of `dev`
    from fastapi.testclient import TestClient

    from vitft.deploy.serve import ServeSettings, create_app

    root, _, objects = trained
    model_dir = root / "run" / "model"
    tuned = objects["summary"]["thresholds"]
    images = sorted((root / "data" / "images").glob("*.png"))[:3]
    expected = [p.labels for p in Predictor.from_path(model_dir).predict(images)]
    app = create_app(model_dir, Predictor.from_path(model_dir), ServeSettings())
    with TestClient(app) as client:
        assert client.get("/metadata").json()["thresholds"] == pytest.approx(tuned)
        files = [("files", (p.name, p.read_bytes(), "image/png")) for p in images]
        answer = client.post("/predict", files=files).json()["predictions"]
    assert [a["labels"] for a in answer] == expected
    assert [a["label"] for a in answer] == [";".join(labels) for labels in expected]


def test_eval_cli_with_only_model_dir_checks_the_runs_own_split(trained, tmp_path):
    """`eval.py model_dir=<run>/model` (eval's default task is data/defect, not the run's data)
    evaluates the run's held-out test split, label sets included."""
    import subprocess
    import sys

    root = trained[0]
    out = tmp_path / "eval"
    cmd = [sys.executable, "eval.py", f"model_dir={root / 'run' / 'model'}", f"hydra.run.dir={out}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    manifest = (root / "run" / "split_manifest.csv").read_text().splitlines()
    assert metrics["multilabel"] and metrics["images"] == sum(
        r.startswith("test,") for r in manifest
    )


def test_prune_a_multilabel_model_keeps_its_label_sets(trained, tmp_path):
    from vitft.apps.prune import prune

    root, _, objects = trained
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("prune", overrides=[f"model_dir={root / 'run' / 'model'}", "heads=1"])
    with open_dict(cfg):
        cfg.output_dir = str(tmp_path / "pruned")
    report = prune(cfg)
    assert report["params_after"] < report["params_before"]
    pruned = Predictor.from_path(tmp_path / "pruned" / "model")
    tuned = objects["summary"]["thresholds"]
    assert pruned.multilabel and pruned.thresholds.tolist() == pytest.approx(list(tuned.values()))
    image = sorted((root / "data" / "images").glob("*.png"))[0]
    assert isinstance(pruned.predict([image])[0].labels, list)
