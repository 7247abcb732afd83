"""Exports carry the OOD score: every format of a model dir with a scorer outputs ood_score beside
the logits, its metadata.json holds the threshold, and predict, eval and serve on the export flag
"unknown" as the model dir does (budget ~60 s: a vit_tiny trained on real sample images)."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests import test_ood
from tests.conftest import ROOT, make_cfg
from tests.test_export import export_cfg, in_edge_venv
from tests.test_ood import eval_cfg
from vitft.apps.evaluate import evaluate
from vitft.apps.export import export
from vitft.apps.train import train
from vitft.core.errors import VitftError
from vitft.deploy.metadata import read_metadata
from vitft.deploy.parity import ood_parity
from vitft.deploy.predictor import UNKNOWN, Predictor
from vitft.modelio.ood import load_ood

# openvino_int8 (NNCF) moves this model's score by ~30% of the threshold: its parity fails.
OPENVINO = ["openvino"] if importlib.util.find_spec("openvino") else []
FORMATS = ["onnx", "onnx_int8", "torch_int8", *OPENVINO]
# |score difference| / max(score, threshold): what parity.json's max_rel_diff measures
TOLERANCE = {"fp32": 1e-4, "int8": 0.1}
noise_dir = test_ood.noise_dir  # 12 grey-noise images, unlike any class


@pytest.fixture(scope="module")
def defect_data(tmp_path_factory) -> Path:
    """A few of the shipped defect images per class: the toy colour images of conftest pool
    every image of a class to almost one feature, so any int8 noise would dwarf the score."""
    root = tmp_path_factory.mktemp("defect")
    for split, n in {"train": 12, "val": 15, "test": 5}.items():
        for cls in sorted(p.name for p in (ROOT / "data" / "defect" / split).iterdir()):
            (root / split / cls).mkdir(parents=True)
            for f in sorted((ROOT / "data" / "defect" / split / cls).iterdir())[:n]:
                shutil.copy(f, root / split / cls / f.name)
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, defect_data) -> Path:
    out = tmp_path_factory.mktemp("ood_export_run")
    train(make_cfg(out, defect_data, "trainer.max_epochs=8", "callbacks.progress_bar=null"))
    return out / "model"


@pytest.fixture(scope="module")
def exports(model_dir, defect_data) -> Path:
    cfg = export_cfg(model_dir, defect_data, f"formats=[{','.join(FORMATS)}]", "threads=2")
    export(cfg)
    return Path(cfg.output_dir)


def _images(defect_data: Path, noise: Path) -> list[Path]:
    return sorted((defect_data / "test").rglob("*.jpg")) + sorted(noise.glob("*.png"))


def test_every_format_outputs_the_score_and_records_the_scorer(model_dir, exports):
    scorer = load_ood(model_dir)
    for fmt in FORMATS:
        meta = read_metadata(exports / fmt)
        assert meta["outputs"] == ["logits", "ood_score"]
        ood = meta["ood"]
        assert (ood["method"], ood["views"]) == (scorer.method, scorer.views)
        assert (ood["threshold"], ood["acceptance"]) == (scorer.threshold, scorer.acceptance)
        par = json.loads((exports / fmt / "parity.json").read_text())
        assert par["passed"] and par["ood"]["passed"]
        assert par["ood"]["max_rel_diff"] <= TOLERANCE[meta["precision"]]
        assert 0.0 <= par["ood"]["unknown_agreement"] <= 1.0
    import onnx

    graph = onnx.load(str(exports / "onnx" / "model.onnx")).graph
    assert [o.name for o in graph.output] == ["logits", "ood_score"]
    # int8 of the scorer's precision matrix would wreck the score: its MatMul stays float
    qgraph = onnx.load(str(exports / "onnx_int8" / "model.onnx")).graph
    assert any(n.name == "/scorer/MatMul" and n.op_type == "MatMul" for n in qgraph.node)
    assert any(n.op_type == "MatMulInteger" for n in qgraph.node)  # the backbone is int8


def test_export_scores_match_the_model_dir_on_real_images(
    model_dir, exports, defect_data, noise_dir
):
    images = _images(defect_data, noise_dir)
    ref = Predictor.from_path(model_dir).predict(images)
    ref_scores = np.array([p.ood_score for p in ref])
    threshold = load_ood(model_dir).threshold
    for fmt in FORMATS:
        predictor = Predictor.from_path(exports / fmt)
        assert predictor.ood is not None and predictor.ood.threshold == threshold
        got = predictor.predict(images)
        tol = TOLERANCE[predictor.backend.precision]
        scale = np.maximum(ref_scores, threshold)
        assert np.abs(np.array([p.ood_score for p in got]) - ref_scores).max() <= tol * scale.max()
        # the flags agree wherever the score is not within the tolerance of the threshold
        clear = np.abs(ref_scores - threshold) > tol * scale
        assert clear.sum() >= len(images) // 2
        assert [p.unknown for p, c in zip(got, clear, strict=True) if c] == [
            p.unknown for p, c in zip(ref, clear, strict=True) if c
        ]


def test_predictor_on_an_export_labels_noise_unknown(exports, noise_dir):
    predictor = Predictor.from_path(exports / "onnx_int8")
    noise = predictor.predict_files(noise_dir).predictions
    assert all(isinstance(p.ood_score, float) and (p.label == UNKNOWN) == p.unknown for p in noise)
    assert sum(p.unknown for p in noise) >= 10  # of 12
    assert all(p.predicted in predictor.labels for p in noise)  # the top class is kept
    off = Predictor.from_path(exports / "onnx_int8", ood=False).predict_files(noise_dir)
    assert all(p.ood_score is None and p.label != UNKNOWN for p in off.predictions)


def test_eval_ood_dir_on_an_export(exports, model_dir, defect_data, noise_dir, tmp_path):
    args = ["task=folder", f"task.data_dir={defect_data}", f"ood_dir={noise_dir}"]
    got = evaluate(eval_cfg(tmp_path / "onnx", f"model_dir={exports / 'onnx'}", *args))
    ref = evaluate(eval_cfg(tmp_path / "pt", f"model_dir={model_dir}", *args))
    assert got["backend"]["format"] == "onnx" and got["ood"]["ood_images"] == 12
    for key in ("auroc", "false_accept", "known_accepted", "threshold"):
        assert got["ood"][key] == pytest.approx(ref["ood"][key], abs=1e-6)


def _served(folder: Path, image: Path) -> tuple[dict, dict]:
    """(the /predict answer for ``image``, /metadata) of ``vitft serve`` on ``folder``."""
    from fastapi.testclient import TestClient

    from vitft.deploy.serve import ServeSettings, create_app

    app = create_app(folder, Predictor.from_path(folder), ServeSettings())
    with TestClient(app) as c:
        r = c.post("/predict", content=image.read_bytes(), headers={"Content-Type": "image/png"})
        assert r.status_code == 200, r.text
        return r.json()["predictions"][0], c.get("/metadata").json()


def test_serve_on_an_export_returns_the_model_dirs_ood_score(model_dir, exports, noise_dir):
    pred, meta = _served(exports / "torch_int8", noise_dir / "noise_00.png")
    ref, ref_meta = _served(model_dir, noise_dir / "noise_00.png")
    assert pred["ood_score"] == pytest.approx(ref["ood_score"], rel=TOLERANCE["int8"])
    assert pred["unknown"] is ref["unknown"] is True and pred["label"] == UNKNOWN
    assert meta["ood"] == ref_meta["ood"] and meta["precision"] == "int8"


def test_ood_false_exports_the_logits_alone(model_dir, defect_data, tmp_path, caplog):
    cfg = export_cfg(model_dir, defect_data, "formats=[onnx]", "ood=false")
    cfg.output_dir = str(tmp_path)
    result = export(cfg)["onnx"]
    meta = read_metadata(tmp_path / "onnx")
    assert meta["outputs"] == ["logits"] and meta["ood"] is None and "ood" not in result
    with caplog.at_level(logging.WARNING):
        predictor = Predictor.from_path(tmp_path / "onnx")
    assert predictor.ood is None and "export.py ood=true" in caplog.text
    with pytest.raises(VitftError, match="OOD score is not an output of the onnx"):
        Predictor(predictor.backend, predictor.labels, None, ood=load_ood(model_dir))


def tflite_scores(model_dir: Path, data: Path, out: Path, images: list[Path]) -> dict:
    """Export tflite + tflite_int8 into ``out``; their parity results and the tflite scores."""
    cfg = export_cfg(model_dir, data, "formats=[tflite,tflite_int8]")
    cfg.output_dir = str(out)
    results = export(cfg)
    got = [p.ood_score for p in Predictor.from_path(out / "tflite").predict(images)]
    return {"results": results, "scores": got}


@pytest.mark.slow
def test_tflite_formats_carry_the_score(model_dir, defect_data, noise_dir, tmp_path):
    images = _images(defect_data, noise_dir)
    args = [str(model_dir), str(defect_data), str(tmp_path / "out"), *map(str, images)]
    if importlib.util.find_spec("litert_torch"):
        answer = tflite_scores(*map(Path, args[:3]), [Path(a) for a in args[3:]])
    else:  # LiteRT lives in its own venv (tests/edge-requirements.txt), as in test_export
        script = (
            "import json, sys; from pathlib import Path;"
            "from tests.test_export_ood import tflite_scores;"
            "a = [Path(x) for x in sys.argv[1:]];"
            "print(json.dumps(tflite_scores(a[0], a[1], a[2], a[3:]), default=float))"
        )
        answer = in_edge_venv(tmp_path, script, *args)
    results = answer["results"]
    assert results["tflite"]["ood"]["max_rel_diff"] < TOLERANCE["fp32"]
    assert results["tflite_int8"]["ood"]["max_rel_diff"] < 0.1  # its scorer stays float
    ref = [p.ood_score for p in Predictor.from_path(model_dir).predict(images)]
    np.testing.assert_allclose(answer["scores"], ref, rtol=1e-4)


def test_ood_parity_measures_against_the_threshold():
    ref = np.array([0.01, 0.02, 0.5, 3.0])  # e.g. kNN scores; threshold 0.3
    par = ood_parity(ref, ref + 0.003, 0.3)
    # a near-zero score's own relative error (30%) is not what moves the decision
    assert par["max_rel_diff"] == pytest.approx(0.01) and par["unknown_agreement"] == 1.0
    broken = ood_parity(ref, ref * 0 + 10.0, 0.3)  # every image "unknown"
    assert broken["unknown_agreement"] == 0.5 and broken["unknown"] == 1.0
    assert broken["max_abs_diff"] == pytest.approx(9.99)


def test_a_score_off_its_tolerance_fails_parity_naming_it(model_dir, defect_data, tmp_path):
    cfg = export_cfg(model_dir, defect_data, "formats=[onnx]", "parity.ood_rel_tol=1e-12")
    cfg.output_dir = str(tmp_path)
    with pytest.raises(VitftError, match=r"onnx \(ood_score max rel diff .* > 1e-12\)"):
        export(cfg)
