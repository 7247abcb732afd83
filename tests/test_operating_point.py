"""The inspection operating point: ok classes vs defective, a val-chosen threshold on
P(defective) that caps escapes, stored in the model dir and applied by predict, an ONNX export,
serve and eval (budget ~40 s: one vit_tiny trained on the conftest colour images)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import CLASSES, make_cfg
from tests.test_evaluate import eval_cfg
from tests.test_export import export_cfg
from vitft.apps.evaluate import evaluate
from vitft.apps.export import export
from vitft.apps.predict import write_predictions
from vitft.apps.train import train
from vitft.core.errors import VitftError
from vitft.deploy.metadata import read_metadata
from vitft.deploy.predictor import Predictor
from vitft.modelio.operating_point import (
    OPERATING_POINT_JSON,
    load_operating_point,
    save_operating_point,
)
from vitft.models.operating_point import (
    OperatingPoint,
    check_ok_classes,
    choose,
    choose_threshold,
    curve,
)

LABELS = ["normal", "crack", "dent"]
OK = ["red"]  # of the conftest classes red / green / blue: green and blue are defective


def toy() -> tuple[torch.Tensor, torch.Tensor]:
    """10 defective images with P(defective) 0.05 ... 0.95 and 4 ok ones at 0.02 0.1 0.3 0.5."""
    rows, target = [], []
    for p in np.arange(0.05, 1.0, 0.1):
        rows.append([1 - p, p, 0.0])
        target.append(1)
    for p in (0.1, 0.3, 0.5, 0.02):
        rows.append([1 - p, 0.0, p])
        target.append(0)
    return torch.tensor(rows, dtype=torch.float64), torch.tensor(target)


@pytest.mark.parametrize(
    "max_escape, threshold, escapes, false_rejects",
    [
        (0.0, 0.035, 0, 3),  # catch all: every ok image above 0.05 is rejected too
        (0.1, 0.125, 1, 2),
        # two may escape, but letting the 0.15 one through rejects no fewer ok images
        (0.2, 0.125, 1, 2),
        (0.3, 0.325, 3, 1),
        (0.5, 0.525, 5, 0),  # no false rejects left: a higher cap changes nothing
        (0.9, 0.525, 5, 0),
    ],
)
def test_threshold_choice_on_a_toy_set(max_escape, threshold, escapes, false_rejects):
    probs, target = toy()
    point = choose(probs, target, LABELS, ["normal"], max_escape)
    assert point.threshold == pytest.approx(threshold)
    assert point.chosen_on["escapes"] == escapes and point.chosen_on["defective"] == 10
    assert point.chosen_on["false_rejects"] == false_rejects and point.chosen_on["ok"] == 4
    assert point.chosen_on["escape_rate"] == escapes / 10 <= max_escape


def test_chosen_threshold_is_the_best_point_of_the_curve():
    """Against brute force over every threshold of the curve, on random score sets with ties."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(2, 30))
        scores = torch.tensor(rng.integers(0, 12, n) / 11.0)
        defective = torch.tensor(rng.random(n) < 0.5)
        if not defective.any():
            continue
        cap = float(rng.choice([0.0, 0.05, 0.1, 0.3, 0.6]))
        t = choose_threshold(scores, defective, cap)
        c = curve(scores, defective)
        allowed = c["escape_rate"] <= cap + 1e-12
        best_fr = c["false_reject_rate"][allowed].min()
        best_escape = c["escape_rate"][allowed & (c["false_reject_rate"] == best_fr)].min()
        called = scores >= t
        escape = int((defective & ~called).sum()) / int(defective.sum())
        false_reject = int((~defective & called).sum()) / max(int((~defective).sum()), 1)
        assert false_reject == pytest.approx(float(best_fr)) and escape <= cap + 1e-12
        assert escape == pytest.approx(float(best_escape))
        # no image sits on the threshold (but 0, where all are defective): a tiny numeric
        # difference flips nothing
        assert t == 0 or (scores - t).abs().min() > 1e-9


def test_bad_ok_classes_are_one_line_errors(tmp_path, tiny_data):
    with pytest.raises(VitftError, match=r"task.ok_classes=\['nromal'\].*valid classes: "):
        check_ok_classes(["nromal"], LABELS)
    with pytest.raises(VitftError, match="at least one defective class"):
        check_ok_classes(LABELS, LABELS)
    with pytest.raises(VitftError, match="max_escape=1.0 must be in"):
        choose(*toy(), LABELS, ["normal"], 1.0)
    # train stops before building the model, not after training
    cfg = make_cfg(tmp_path, tiny_data, "task.ok_classes=[purple]")
    with pytest.raises(VitftError) as err:
        train(cfg)
    assert "task.ok_classes=['purple']" in str(err.value) and "'red'" in str(err.value)
    assert "\n" not in str(err.value) and not (tmp_path / "model").exists()


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_data) -> Path:
    out = tmp_path_factory.mktemp("op_run")
    cfg = make_cfg(
        out,
        tiny_data,
        f"task.ok_classes=[{OK[0]}]",
        "max_escape=0.2",
        "trainer.max_epochs=2",
        "callbacks.progress_bar=null",
        "ood.method=null",
    )
    train(cfg)
    return out


def test_train_stores_the_val_chosen_threshold_and_it_round_trips(run, tmp_path):
    doc = json.loads((run / "model" / OPERATING_POINT_JSON).read_text())
    assert doc["ok_classes"] == OK and doc["max_escape"] == 0.2
    assert doc["chosen_on"]["split"] == "val" and doc["chosen_on"]["defective"] == 6
    assert doc["chosen_on"]["escape_rate"] <= 0.2 and 0 < doc["threshold"] < 1
    point = load_operating_point(run / "model", list(CLASSES))
    assert point.to_dict() == doc
    save_operating_point(point, tmp_path)
    assert load_operating_point(tmp_path, list(CLASSES)) == point
    assert load_operating_point(tmp_path / "none", list(CLASSES)) is None
    with pytest.raises(VitftError, match=r"operating_point.json: ok_classes=\['red'\].*valid"):
        load_operating_point(tmp_path, ["a", "b"])


def _check_verdicts(preds, threshold: float) -> None:
    for p in preds:
        assert p.p_defective == pytest.approx(1 - p.probs["red"], abs=1e-6)
        assert p.defective is (p.p_defective >= threshold)
        assert p.label == p.predicted  # the class decision is kept as it is


def test_predict_on_the_model_dir_applies_the_threshold(run, tiny_data, tmp_path):
    predictor = Predictor.from_path(run / "model")
    threshold = predictor.operating_point.threshold
    results = predictor.predict_files(tiny_data / "test")
    preds = results.predictions
    _check_verdicts(preds, threshold)
    rows = list(csv.DictReader(write_predictions(results, tmp_path / "p.csv", CLASSES).open()))
    assert [int(r["defective"]) for r in rows] == [int(p.defective) for p in preds]
    # a threshold below every score calls every part defective, the red-labelled ones too
    strict = OperatingPoint(OK, 1e-9)
    red = Predictor.from_path(run / "model", operating_point=strict).predict_files(
        tiny_data / "test" / "red"
    )
    assert all(p.defective and p.label == "red" for p in red.predictions)
    # no operating point: no verdict
    off = Predictor.from_path(run / "model", operating_point=None).predict([preds[0].path])
    assert off[0].p_defective is None and off[0].defective is None


def test_onnx_export_carries_and_applies_the_threshold(run, tiny_data, tmp_path):
    cfg = export_cfg(run / "model", tiny_data, "formats=[onnx]")
    cfg.output_dir = str(tmp_path)
    export(cfg)
    meta = read_metadata(tmp_path / "onnx")
    stored = json.loads((run / "model" / OPERATING_POINT_JSON).read_text())
    assert meta["operating_point"] == stored
    ref = Predictor.from_path(run / "model").predict_files(tiny_data / "test").predictions
    got = Predictor.from_path(tmp_path / "onnx").predict_files(tiny_data / "test").predictions
    _check_verdicts(got, stored["threshold"])
    assert [p.defective for p in got] == [p.defective for p in ref]
    assert [p.p_defective for p in got] == pytest.approx([p.p_defective for p in ref], abs=1e-5)


def test_serve_returns_the_verdict(run, tiny_data):
    from fastapi.testclient import TestClient

    from vitft.deploy.serve import ServeSettings, create_app

    predictor = Predictor.from_path(run / "model")
    image = sorted((tiny_data / "test" / "green").iterdir())[0]
    want = predictor.predict([image])[0]
    with TestClient(create_app(run / "model", predictor, ServeSettings())) as c:
        r = c.post("/predict", content=image.read_bytes(), headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    got = r.json()["predictions"][0]
    assert got["defective"] is want.defective and got["label"] == want.label
    assert got["p_defective"] == pytest.approx(want.p_defective, abs=1e-5)


def test_eval_reports_escape_and_false_reject_rates(run, tiny_data, tmp_path):
    data = ["task=folder", f"task.data_dir={tiny_data}", "explain.per_class=0"]
    stored = json.loads((run / "model" / OPERATING_POINT_JSON).read_text())
    metrics = evaluate(eval_cfg(tmp_path / "a", f"model_dir={run / 'model'}", *data))
    block = metrics["operating_point"]
    assert block["threshold"] == stored["threshold"] and block["ok_classes"] == OK
    assert block["defective"] == 6 and block["ok"] == 3 and block["stored"] is None
    rows = list(csv.DictReader((tmp_path / "a" / "predictions.csv").open()))
    defective = np.array([r["true"] != "red" for r in rows])
    called = np.array([float(r["p_defective"]) >= stored["threshold"] for r in rows])
    assert [int(r["defective"]) for r in rows] == called.astype(int).tolist()
    assert metrics["escape_rate"] == pytest.approx((defective & ~called).sum() / 6)
    assert metrics["false_reject_rate"] == pytest.approx((~defective & called).sum() / 3)
    assert (tmp_path / "a" / "escape_curve.png").stat().st_size > 0
    assert "escape rate" in (tmp_path / "a" / "report.html").read_text()


def _copy_model(run: Path, to: Path, point: bool = True) -> Path:
    """The run's model dir outside its run dir (eval then splits task.data_dir itself)."""
    shutil.copytree(run / "model", to)
    if not point:
        (to / OPERATING_POINT_JSON).unlink()
    return to


def test_eval_max_escape_chooses_on_val_and_stores_it(run, tiny_data, tmp_path):
    model_dir = _copy_model(run, tmp_path / "model")
    data = ["task=folder", f"task.data_dir={tiny_data}", "explain.per_class=0"]
    metrics = evaluate(eval_cfg(tmp_path / "e", f"model_dir={model_dir}", "max_escape=0", *data))
    block = metrics["operating_point"]
    assert block["max_escape"] == 0 and block["chosen_on"]["escapes"] == 0
    assert block["stored"] == str(model_dir / OPERATING_POINT_JSON)
    assert load_operating_point(model_dir, list(CLASSES)).threshold == block["threshold"]


def test_eval_max_escape_without_ok_classes_is_an_error(run, tiny_data, tmp_path):
    model_dir = _copy_model(run, tmp_path / "model", point=False)
    data = ["task=folder", f"task.data_dir={tiny_data}"]
    cfg = eval_cfg(tmp_path / "e", f"model_dir={model_dir}", "max_escape=0.1", *data)
    with pytest.raises(VitftError, match=r"max_escape=0.1 needs ok classes: set task.ok_classes"):
        evaluate(cfg)
