"""The Python API (vitft.train, evaluate, export, load ...) and its notebook-style example."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import vitft
from tests.conftest import ROOT
from vitft.api import compose, overrides_of
from vitft.core.resolvers import project_root


def test_the_public_names_resolve_lazily():
    assert set(vitft.__all__) <= set(dir(vitft))
    for name in vitft.__all__:
        assert getattr(vitft, name) is not None
    assert vitft.Predictor.__module__ == "vitft.deploy.predictor"
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        vitft.trian  # noqa: B018


def test_keywords_become_hydra_overrides():
    got = overrides_of(
        ("task=folder",),
        {"trainer__max_epochs": 2, "tags": ["a", "b"], "ckpt_path": None, "x": True, "p": "a b"},
    )
    assert got == [
        "task=folder", "trainer.max_epochs=2", "tags=[a,b]", "ckpt_path=null", "x=true", "p='a b'",
    ]  # fmt: skip


def test_compose_is_the_cli_config_with_its_run_dir(tmp_path):
    cfg = compose("train", "experiment=quickstart", trainer__max_epochs=3)
    assert cfg.trainer.max_epochs == 3 and cfg.model.name == "vit_fractal"
    assert Path(cfg.paths.output_dir) == Path(project_root()) / "outputs" / "quickstart"
    assert "hydra" not in cfg
    cfg = compose("predict", model_dir="m", paths__output_dir=tmp_path)
    assert cfg.paths.output_dir == str(tmp_path)
    with pytest.raises(ValueError, match="unknown command 'trian'"):
        compose("trian")


@pytest.mark.slow
def test_the_python_api_example_trains_evaluates_exports_and_predicts(tmp_path):
    spec = importlib.util.spec_from_file_location("python_api", ROOT / "examples/python_api.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = example.main(epochs=1, out=tmp_path)
    assert 0.0 <= out["metrics"]["accuracy"] <= 1.0 and out["metrics"]["images"] > 0
    # a 1-epoch model flags some images unknown or uncertain, as the shipped service would
    allowed = {"normal", "crack", "dent", "uncertain", "unknown"}
    assert out["labels"] and set(out["labels"]) <= allowed
    assert (tmp_path / "run" / "model" / "config.json").is_file()
    assert (tmp_path / "run" / "export" / "onnx" / "metadata.json").is_file()
    assert (tmp_path / "eval" / "report.html").is_file()
