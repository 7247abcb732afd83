"""The unknown-defect flag: the OOD scorer fitted when training ends, stored in model/, and the
ood_score / "unknown" label in predict, eval and serve."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from PIL import Image

from tests.conftest import CONF, make_cfg, make_dataset
from vitft.apps.evaluate import evaluate
from vitft.apps.predict import write_predictions
from vitft.apps.train import train
from vitft.core.errors import VitftError
from vitft.deploy.backends import Backend
from vitft.deploy.ood import feature_predictor
from vitft.deploy.predictor import UNKNOWN, Predictor
from vitft.modelio.hf import load_model, save_hf
from vitft.modelio.ood import OOD_JSON, OOD_TENSORS, load_ood, save_ood
from vitft.models.ood import OODScorer, auroc


@pytest.fixture(scope="module")
def ood_data(tmp_path_factory):
    # 20 val images per class: enough for the 95% quantile to mean something
    root = tmp_path_factory.mktemp("ood_data")
    return make_dataset(root, counts={"train": 12, "val": 20, "test": 6}, seed=3)


@pytest.fixture(scope="module")
def run(tmp_path_factory, ood_data):
    out = tmp_path_factory.mktemp("ood_run")
    cfg = make_cfg(out, ood_data, "trainer.max_epochs=2", "callbacks.progress_bar=null")
    train(cfg)
    return out


@pytest.fixture(scope="module")
def noise_dir(tmp_path_factory):
    """Images unlike any class: uniform grey-level noise (no dominant colour channel)."""
    d = tmp_path_factory.mktemp("noise")
    rng = np.random.default_rng(7)
    for i in range(12):
        grey = rng.integers(0, 256, size=(32, 32, 1)).astype(np.uint8)
        Image.fromarray(np.repeat(grey, 3, axis=2)).save(d / f"noise_{i:02d}.png")
    return d


def _features(model_dir, paths):
    """Features over the stored scorer's views, as the scorer scores them."""
    model, processor = load_model(model_dir)
    views = load_ood(model_dir).views
    predictor = feature_predictor(model, processor)
    feats, _, bad = predictor.features_files(paths, progress=False, views=views)
    assert not bad
    return feats


def test_training_stores_a_scorer_whose_threshold_accepts_95_percent_of_val(run, ood_data):
    model_dir = run / "model"
    assert (model_dir / OOD_JSON).is_file() and (model_dir / OOD_TENSORS).is_file()
    doc = json.loads((model_dir / OOD_JSON).read_text())
    assert doc["method"] == "mahalanobis" and doc["acceptance"] == 0.95
    assert doc["calibration_images"] == 60
    scorer = load_ood(model_dir)  # reloaded from json + safetensors
    val = _features(model_dir, sorted((ood_data / "val").rglob("*.png")))
    accepted = float((~scorer.unknown(scorer.score(val))).float().mean())
    assert 0.9 <= accepted <= 1.0
    assert accepted == pytest.approx(doc["calibration_accepted"])


def test_noise_scores_higher_than_in_distribution(run, ood_data, noise_dir):
    scorer = load_ood(run / "model")
    known = scorer.score(_features(run / "model", sorted((ood_data / "test").rglob("*.png"))))
    noise = scorer.score(_features(run / "model", sorted(noise_dir.glob("*.png"))))
    assert noise.median() > known.median()
    assert auroc(known, noise) > 0.9


def test_predict_returns_ood_score_and_unknown_label(run, ood_data, noise_dir, tmp_path):
    predictor = Predictor.from_path(run / "model")
    assert predictor.ood is not None
    known = predictor.predict_files(ood_data / "test").predictions
    noise = predictor.predict_files(noise_dir).predictions
    for p in known + noise:
        assert isinstance(p.ood_score, float) and isinstance(p.unknown, bool)
        assert (p.label == UNKNOWN) == p.unknown
        assert p.predicted in predictor.labels  # the top class is kept
    assert sum(p.unknown for p in noise) > sum(p.unknown for p in known) / len(known) * len(noise)
    # the same score through predict() (PIL images) and predict_files (paths)
    again = predictor.predict([noise[0].path])[0]
    assert again.ood_score == pytest.approx(noise[0].ood_score, rel=1e-4)
    out = write_predictions(
        predictor.predict_files(noise_dir), tmp_path / "p.csv", predictor.labels
    )
    rows = list(csv.DictReader(out.open()))
    assert {"ood_score", "unknown"} <= set(rows[0])
    assert all(float(r["ood_score"]) > 0 for r in rows)


def test_ood_false_predicts_without_the_flag(run, ood_data):
    predictor = Predictor.from_path(run / "model", ood=False)
    p = predictor.predict_files(ood_data / "test").predictions[0]
    assert p.ood_score is None and p.unknown is None and p.label != UNKNOWN


def eval_cfg(out, *overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("eval", overrides=["data.num_workers=0", "explain.per_class=0", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    return cfg


def test_eval_reports_ood_auroc_for_an_ood_dir(run, ood_data, noise_dir, tmp_path):
    data = ["task=folder", f"task.data_dir={ood_data}"]
    cfg = eval_cfg(tmp_path, f"model_dir={run / 'model'}", f"ood_dir={noise_dir}", *data)
    metrics = evaluate(cfg)
    ood = metrics["ood"]
    assert ood["ood_images"] == 12 and ood["method"] == "mahalanobis"
    assert ood["auroc"] > 0.9
    assert 0.0 <= ood["false_accept"] <= 1.0 and 0.0 <= ood["known_accepted"] <= 1.0
    # the shipped point, and the curve: more of the unknowns flagged at more false alarms
    assert ood["operating_point"]["flagged"] == pytest.approx(1.0 - ood["false_accept"])
    flagged = [p["flagged"] for p in ood["curve"]]
    assert len(flagged) == 5 and flagged == sorted(flagged)
    assert json.loads((tmp_path / "metrics.json").read_text())["ood"]["auroc"] == ood["auroc"]
    rows = list(csv.DictReader((tmp_path / "predictions.csv").open()))
    assert len(rows) == 18 and all(r["ood_score"] for r in rows)


def test_eval_ood_dir_without_a_scorer_is_one_clear_error(run, ood_data, noise_dir, tmp_path):
    model_dir = tmp_path / "model"
    model, processor = load_model(run / "model")
    save_hf(model, processor, model_dir)  # no ood.json
    data = ["task=folder", f"task.data_dir={ood_data}"]
    cfg = eval_cfg(tmp_path / "e", f"model_dir={model_dir}", f"ood_dir={noise_dir}", *data)
    with pytest.raises(VitftError, match="ood_dir=.*OOD scorer"):
        evaluate(cfg)


def test_serve_returns_ood_score(run, noise_dir):
    from fastapi.testclient import TestClient

    from vitft.deploy.serve import ServeSettings, create_app

    predictor = Predictor.from_path(run / "model")
    app = create_app(run / "model", predictor, ServeSettings())
    data = (noise_dir / "noise_00.png").read_bytes()
    with TestClient(app) as c:
        r = c.post("/predict", content=data, headers={"Content-Type": "image/png"})
        meta = c.get("/metadata").json()
    assert r.status_code == 200, r.text
    pred = r.json()["predictions"][0]
    expected = predictor.predict([noise_dir / "noise_00.png"])[0]
    assert pred["ood_score"] == pytest.approx(expected.ood_score, rel=1e-4)
    assert pred["unknown"] == expected.unknown
    assert meta["ood"]["method"] == "mahalanobis"


def _blobs(seed: int, shift: float = 0.0, n: int = 60, d: int = 16):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    centres = torch.eye(3, d) * 6
    return centres[labels] + torch.randn(n, d, generator=g) + shift, labels


@pytest.mark.parametrize("method", ["mahalanobis", "mahalanobis_class", "knn"])
def test_scorer_separates_shifted_features_and_round_trips(method, tmp_path):
    train_x, train_y = _blobs(0)
    scorer = OODScorer.fit(method, train_x, train_y, k=3).calibrate(_blobs(1)[0], 0.95)
    known, unknown = scorer.score(_blobs(2)[0]), scorer.score(_blobs(3, shift=4.0)[0])
    assert auroc(known, unknown) > 0.95
    save_ood(scorer, tmp_path)
    again = load_ood(tmp_path)
    assert again.method == method and again.threshold == scorer.threshold
    assert torch.allclose(again.score(_blobs(2)[0]), known)


def test_mahalanobis_with_fewer_images_than_dimensions_is_finite():
    x, y = _blobs(0, n=10, d=64)  # singular sample covariance: shrinkage makes it invertible
    scorer = OODScorer.fit("mahalanobis", x, y)
    assert torch.isfinite(scorer.score(x)).all() and 0 < scorer.info["shrinkage"] <= 1


def test_class_covariances_flag_what_is_inside_the_spread_of_all_classes_but_not_its_own():
    """Class 0 varies along dimension 0 only, class 1 along dimension 1 only: a point off class
    0's mean along dimension 1 is within the shared spread, but far from class 0's own."""
    g = torch.Generator().manual_seed(0)
    a = torch.zeros(200, 4)
    a[:, 0] = torch.randn(200, generator=g) * 3
    b = torch.zeros(200, 4) + torch.tensor([0.0, 0.0, 20.0, 0.0])
    b[:, 1] = torch.randn(200, generator=g) * 3
    x = torch.cat([a, b]) + torch.randn(400, 4, generator=g) * 0.1
    y = torch.tensor([0] * 200 + [1] * 200)
    odd = torch.tensor([[0.0, 4.0, 0.0, 0.0]])  # class 0's mean, moved along class 1's axis
    scores = {}
    for method in ("mahalanobis", "mahalanobis_class"):
        # fit on raw (un-normalised) directions: _pool L2-normalises, so keep the norms equal
        scorer = OODScorer.fit(method, x + torch.tensor([0, 0, 0, 50.0]), y)
        known = scorer.score(x[:20] + torch.tensor([0, 0, 0, 50.0]))
        scores[method] = float(scorer.score(odd + torch.tensor([0, 0, 0, 50.0]))) / float(
            known.quantile(0.95)
        )
    assert scores["mahalanobis_class"] > 3 * scores["mahalanobis"]


def test_a_class_with_one_image_takes_the_shared_covariance():
    x, y = _blobs(0)
    x, y = torch.cat([x, x[:1] + 1]), torch.cat([y, torch.tensor([3])])
    scorer = OODScorer.fit("mahalanobis_class", x, y)
    assert scorer.precision.shape[0] == 4 and torch.isfinite(scorer.score(x)).all()


def test_bad_settings_are_clear_errors():
    x, y = _blobs(0)
    with pytest.raises(VitftError, match="ood.method='lof' is unknown"):
        OODScorer.fit("lof", x, y)
    with pytest.raises(VitftError, match="ood.acceptance=1.5"):
        OODScorer.fit("knn", x, y).calibrate(x, 1.5)


class _LogitsOnly(Backend):
    name = "onnx"

    def __call__(self, pixel_values):
        return torch.zeros(len(pixel_values), 3)


def test_a_backend_without_the_score_is_one_clear_error():
    """Exports carry the score (tests/test_export_ood.py); a backend without it says how to get
    it, up front and when asked for scores."""
    x, y = _blobs(0)
    scorer = OODScorer.fit("knn", x, y)
    with pytest.raises(VitftError, match="OOD score is not an output of the onnx .*ood=true"):
        Predictor(_LogitsOnly(), ["a", "b", "c"], processor=None, ood=scorer)
    with pytest.raises(VitftError, match="OOD score is not an output"):
        _LogitsOnly().scored(torch.zeros(1, 3, 8, 8), scorer)


def test_mahalanobis_fits_features_without_spread():
    """A frozen random backbone can pool every image to the same features: still a scorer."""
    from vitft.models.ood import OODScorer

    feats = torch.ones(6, 8)
    scorer = OODScorer.fit("mahalanobis", feats, torch.tensor([0, 0, 0, 1, 1, 1]))
    assert torch.isfinite(scorer.score(torch.cat([feats, feats + 1]))).all()


def test_explain_maps_an_unknown_image_by_its_ood_score(
    run, ood_data, noise_dir, tmp_path, monkeypatch
):
    """An image flagged unknown is explained by where its OOD score comes from, a known one by
    its class; both give a figure."""
    import vitft.apps.explain as app
    from vitft.deploy.explain import unknown_map

    calls = []

    def spy(model, scorer, pixels):
        cam = unknown_map(model, scorer, pixels)
        assert torch.isfinite(cam).all() and cam.shape[0] == 1 and float(cam.max()) == 1.0
        calls.append(tuple(cam.shape))
        return cam

    monkeypatch.setattr(app, "unknown_map", spy)
    predictor = Predictor.from_path(run / "model")
    noise = sorted(noise_dir.glob("*.png"))
    flagged = [p for p in predictor.predict_files(noise).predictions if p.unknown]
    known = [p for p in predictor.predict_files(ood_data / "test").predictions if not p.unknown]
    assert flagged and known
    inputs = [flagged[0].path, known[0].path]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "explain",
            overrides=[f"model_dir={run / 'model'}", f"inputs=[{','.join(inputs)}]",
                       "methods=[gradcam]"],
        )  # fmt: skip
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
    written = app.explain(cfg)
    assert len(written) == 2 and all(p.is_file() for p in written)
    assert len(calls) == 1  # the unknown image only


def test_class_covariances_export_to_onnx_with_the_same_scores(tmp_path):
    """Exports put the scorer in the graph (ScoredClassifier): the per-class batched matmul too."""
    import onnxruntime as ort

    x, y = _blobs(0, d=8)
    scorer = OODScorer.fit("mahalanobis_class", x, y)
    torch.onnx.export(scorer, (x[:4],), tmp_path / "s.onnx", input_names=["f"], dynamo=False,
                      dynamic_axes={"f": {0: "n"}})  # fmt: skip
    session = ort.InferenceSession(str(tmp_path / "s.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"f": x[:7].numpy()})[0]
    assert torch.allclose(torch.from_numpy(got), scorer.score(x[:7]), rtol=1e-4, atol=1e-4)
