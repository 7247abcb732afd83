"""OpenVINO IR (fp32 and NNCF int8): export with parity, then predict and serve run it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.test_export import export_cfg, make_model_dir
from vitft.export.formats import export
from vitft.export.metadata import read_metadata
from vitft.export.runtime import load_exported
from vitft.modelio.card import write_card
from vitft.predict import Predictor

pytest.importorskip("openvino")


def test_openvino_fp32_and_int8_export_with_parity_and_predict(tmp_path, tiny_data):
    model_dir = make_model_dir(tmp_path)
    write_card(model_dir, task="t", classes=["a"], metrics={}, config={}, provenance={})
    cfg = export_cfg(
        model_dir, tiny_data, "formats=[openvino,openvino_int8]", "calibration_images=6"
    )
    results = export(cfg)
    out = Path(cfg.output_dir)
    ref, _ = load_exported(model_dir)
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    for fmt, tol in (("openvino", 1e-4), ("openvino_int8", 0.5)):
        assert results[fmt]["passed"], results[fmt]
        meta = read_metadata(out / fmt)
        assert meta["runtime"] == "openvino" and (out / fmt / "model.bin").is_file()
        par = json.loads((out / fmt / "parity.json").read_text())
        assert par["size_mb"] > 0.01  # model.bin counted, not just the XML graph
        predict, _ = load_exported(out / fmt, threads=1)
        np.testing.assert_allclose(predict(x), ref(x), atol=tol)  # dynamic batch of 3
    card = (model_dir / "README.md").read_text()
    assert "| openvino | " in card and "| openvino_int8 | " in card  # the card lists the exports
    # the same Predictor that predict.py and `vitft serve` use
    images = sorted((tiny_data / "test").rglob("*.png"))[:4]
    got = Predictor.from_path(out / "openvino").predict(images)
    want = Predictor.from_path(model_dir).predict(images)
    assert [p.predicted for p in got] == [p.predicted for p in want]
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from vitft.deploy.serve import ServeSettings, create_app

    served = out / "openvino_int8"
    app = create_app(served, Predictor.from_path(served), ServeSettings())
    with TestClient(app) as c:
        meta = c.get("/metadata").json()
        r = c.post(
            "/predict", content=images[0].read_bytes(), headers={"Content-Type": "image/png"}
        )
    assert meta["format"] == "openvino_int8" and meta["precision"] == "int8"
    assert meta["heatmap"] is False and meta["model_file"] == "model.xml"
    assert r.status_code == 200 and r.json()["predictions"][0]["label"] in meta["classes"]
