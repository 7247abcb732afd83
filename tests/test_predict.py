import csv
import json

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from tests.conftest import TINY_VIT_CONFIG, make_cfg
from vitft.apps.predict import predict, write_predictions
from vitft.core.errors import VitftError
from vitft.deploy.predictor import (
    UNCERTAIN,
    Predictor,
    TorchBackend,
    tta_views,
)
from vitft.modelio.checkpoint import load_checkpoint
from vitft.modelio.hf import save_hf
from vitft.models.classifier import build_model

TINY = {"config": TINY_VIT_CONFIG}
LABELS = ["blue", "green", "red"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model, processor = build_model(TINY, {"name": "mlp"}, LABELS)
    return save_hf(model, processor, tmp_path_factory.mktemp("m") / "model")


@pytest.fixture
def folder(tmp_path, tiny_data):
    """Three good images plus a zero-byte file, a text file named .png and a truncated jpg."""
    d = tmp_path / "line"
    d.mkdir()
    for i, p in enumerate(sorted((tiny_data / "test").rglob("*.png"))[:3]):
        Image.open(p).save(d / f"ok_{i}.png")
    (d / "empty.png").write_bytes(b"")
    (d / "notes.png").write_text("not an image")
    full = (d / "ok_0.png").read_bytes()
    (d / "cut.png").write_bytes(full[: len(full) // 3])
    (d / "readme.txt").write_text("ignored")
    return d


def test_folder_with_bad_files_predicts_the_rest(model_dir, folder, capsys):
    predictor = Predictor.from_path(model_dir=model_dir)
    results = predictor.predict_files(folder)
    assert sorted(p.path.rsplit("/", 1)[1] for p in results.predictions) == [
        "ok_0.png",
        "ok_1.png",
        "ok_2.png",
    ]
    reasons = {b.path.rsplit("/", 1)[1]: b.reason for b in results.bad_files}
    assert set(reasons) == {"empty.png", "notes.png", "cut.png", "readme.txt"}
    assert reasons["empty.png"] == "zero bytes"
    assert reasons["notes.png"].startswith("not an image")
    for p in results.predictions:
        assert abs(sum(p.probs.values()) - 1) < 1e-5
        assert p.label == p.predicted in LABELS and p.latency_ms > 0


def test_predict_cli_csv_json_and_reject(model_dir, folder, tmp_path, capsys):
    cfg = {
        "model_dir": str(model_dir),
        "inputs": str(folder),
        "output": str(tmp_path / "preds.csv"),
        "threshold": 0.0,
        "class_thresholds": {},
        "batch_size": 2,
    }
    predict(OmegaConf.create(cfg))
    out = capsys.readouterr().out
    assert "predicted 3 image(s)" in out and "empty.png: zero bytes" in out
    rows = list(csv.DictReader((tmp_path / "preds.csv").open()))
    assert len(rows) == 3 and {"prob_blue", "prob_red", "latency_ms"} <= set(rows[0])

    # A per-class threshold above any probability rejects exactly that class's predictions.
    predicted = {r["path"]: r["predicted"] for r in rows}
    target = rows[0]["predicted"]
    results = predict(
        OmegaConf.create({**cfg, "format": "json", "class_thresholds": {target: 1.01}})
    )
    doc = json.loads((tmp_path / "preds.json").read_text())
    assert len(doc["bad_files"]) == 4 and doc["labels"] == LABELS
    for p in doc["predictions"]:
        assert p["label"] == (UNCERTAIN if predicted[p["path"]] == target else p["predicted"])
    assert len(results.predictions) == 3


def test_checkpoint_and_model_dir_agree_and_tta(tmp_path, tiny_data):
    from vitft.apps.train import train

    cfg = make_cfg(tmp_path / "run", tiny_data, "callbacks.progress_bar=null", "test=false")
    train(cfg)
    from_dir = Predictor.from_path(model_dir=tmp_path / "run" / "model")
    ckpt = next((tmp_path / "run" / "checkpoints").glob("*.ckpt"))
    model, processor = load_checkpoint(ckpt)
    from_ckpt = Predictor(TorchBackend(model), model.labels, processor, tta=True)
    images = sorted((tiny_data / "test").rglob("*.png"))[:4]
    a = from_dir.predict(images)
    b = from_ckpt.predict(images)
    assert [p.path for p in a] == [str(p) for p in images]
    x = torch.stack([from_dir.transform(Image.open(p).convert("RGB")) for p in images])
    manual = torch.stack([model(v).softmax(-1) for v in tta_views(x)]).mean(0)
    for p, row in zip(b, manual, strict=True):
        assert p.probs == pytest.approx(dict(zip(LABELS, row.tolist(), strict=True)), abs=1e-5)
    assert len(tta_views(x)) == 6


def test_clear_errors(model_dir, tmp_path):
    with pytest.raises(VitftError, match="exactly one"):
        Predictor.from_path()
    with pytest.raises(VitftError, match="not classes of the model"):
        Predictor.from_path(model_dir=model_dir, class_thresholds={"cat": 0.5})
    with pytest.raises(VitftError, match="no such file"):
        Predictor.from_path(model_dir=model_dir).predict_files(tmp_path / "nope" / "*.jpg")
    (tmp_path / "x.ckpt").write_bytes(b"")
    with pytest.raises(VitftError, match="could not read checkpoint"):
        load_checkpoint(tmp_path / "x.ckpt")


def test_write_predictions_empty(tmp_path):
    from vitft.deploy.predictor import Results

    path = write_predictions(Results(), tmp_path / "p.csv", LABELS)
    assert path.read_text().splitlines()[0].startswith("path,label,predicted,confidence,prob_blue")
