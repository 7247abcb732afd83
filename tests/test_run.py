"""One split everywhere (issue 17.5) and eval on every export format (17.3).

A dataset with only train/ is split by training (split_seed = seed = 42). Every later command
must check the model on exactly the run's files from <run>/split_manifest.csv, never re-split with
another seed; eval of an export folder works without a PyTorch model (no heatmaps, said so)
and reports what int8 cost against the fp32 model it came from.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

import vitft.run.rundir as rundir
from tests.conftest import CONF, make_cfg, make_dataset
from vitft.apps.benchmark import benchmark
from vitft.apps.evaluate import evaluate
from vitft.apps.export import export
from vitft.apps.prune import prune
from vitft.apps.train import train
from vitft.core.errors import VitftError
from vitft.core.files import sha256

INT8 = ["onnx_int8", "onnx_int8_static", "torch_int8"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    data = make_dataset(tmp_path_factory.mktemp("train_only"), counts={"train": 10})
    out = tmp_path_factory.mktemp("run")
    train(make_cfg(out, data, "callbacks.progress_bar=null", "model.config.num_attention_heads=4"))
    return out


def _root(run_dir: Path) -> Path:
    return Path(json.loads((run_dir / "provenance.json").read_text())["data"]["root"])


def _rows(run_dir: Path) -> list[dict]:
    with (run_dir / "split_manifest.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _manifest(run_dir: Path) -> dict[str, list[str]]:
    root = _root(run_dir)
    by_split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for row in _rows(run_dir):
        assert not Path(row["path"]).is_absolute()
        assert row["label"] in ("red", "green", "blue")
        assert row["sha256"] == sha256(root / row["path"])
        by_split[row["split"]].append(str(root / row["path"]))
    return {k: sorted(v) for k, v in by_split.items()}


def _compose(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(name, overrides=list(overrides))


def test_every_command_checks_the_model_on_the_runs_own_split(run_dir, tmp_path, monkeypatch):
    files = _manifest(run_dir)
    assert all(files.values()) and not set(files["train"]) & set(files["val"] + files["test"])
    seen: list[tuple[str, list[str]]] = []
    real = rundir.load_images

    def spy(samples, processor, split, root, max_images=None):
        seen.append((split, sorted(str(p) for p, _ in samples)))
        return real(samples, processor, split, root, max_images)

    monkeypatch.setattr(rundir, "load_images", spy)
    model_dir = run_dir / "model"
    export(_compose("export", f"model_dir={model_dir}", "formats=[onnx,onnx_int8_static]"))
    assert seen == [("val", files["val"]), ("train", files["train"])]  # parity, calibration

    seen.clear()
    cfg = _compose("benchmark", f"model_dir={model_dir}", "formats=[onnx]", "rounds=1", "iters=1")
    with open_dict(cfg):
        cfg.warmup, cfg.batch_size, cfg.output_dir = 0, 2, str(tmp_path / "bench")
    benchmark(cfg)
    assert seen == [("val", files["val"])]

    seen.clear()
    cfg = _compose("prune", f"model_dir={model_dir}", "heads=1", f"output_dir={tmp_path / 'p'}")
    prune(cfg)
    assert seen == [("train", files["train"])]
    manifest = "split_manifest.csv"
    assert (tmp_path / "p" / manifest).read_bytes() == (run_dir / manifest).read_bytes()

    # eval with another split seed in its config still evaluates the run's test files.
    data_dir = _root(run_dir)
    cfg = _compose(
        "eval", f"model_dir={model_dir}", "task=folder", f"task.data_dir={data_dir}",
        "data.split_seed=0", "data.num_workers=0", "explain.per_class=0",
    )  # fmt: skip
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "eval")
    evaluate(cfg)
    rows = (tmp_path / "eval" / "predictions.csv").read_text().splitlines()[1:]
    assert sorted(r.split(",")[0] for r in rows) == files["test"]


def test_a_changed_file_is_refused(run_dir, tmp_path):
    rows = _rows(run_dir)
    copy = tmp_path / "run"
    copy.mkdir()
    shutil.copy(run_dir / "provenance.json", copy / "provenance.json")
    row = next(r for r in rows if r["split"] == "val")
    with (copy / "split_manifest.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "sha256": "0" * 64} if r is row else r for r in rows)
    with pytest.raises(VitftError, match="changed since training"):
        rundir.run_samples(copy, "val")


def test_eval_on_every_export_format(run_dir, tmp_path):
    """No PyTorch model in an export: metrics and report, no heatmaps (said so); int8 formats
    report their accuracy change against the fp32 model they were exported from."""
    model_dir = run_dir / "model"
    formats = ["onnx", *INT8]
    export(_compose("export", f"model_dir={model_dir}", f"formats=[{','.join(formats)}]"))
    data_dir = _root(run_dir)
    figures = {}
    for fmt in formats:
        cfg = _compose(
            "eval", f"model_dir={run_dir / 'export' / fmt}", "task=folder",
            f"task.data_dir={data_dir}", "data.num_workers=0",
        )  # fmt: skip
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / fmt)
        metrics = evaluate(cfg)
        saved = json.loads((tmp_path / fmt / "metrics.json").read_text())
        assert saved["backend"]["format"] == fmt
        assert saved["heatmaps"].startswith(f"none: a {fmt} (")
        assert (tmp_path / fmt / "report.html").is_file()
        assert not (tmp_path / fmt / "heatmaps.png").exists()
        if fmt in INT8:
            ref = saved["fp32_reference"]
            assert ref["model"] == str(model_dir)
            assert ref["accuracy_change"] == pytest.approx(metrics["accuracy"] - ref["accuracy"])
        else:
            assert "fp32_reference" not in saved
        figures[fmt] = metrics["accuracy"]
    print("eval accuracy per format:", figures)
