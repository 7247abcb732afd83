"""Traceability: provenance, split manifest, model card, W&B artifact + curves, hub push."""

import csv
import json
from pathlib import Path

import pytest
from huggingface_hub import HfApi

from tests.conftest import make_cfg
from vitft import tracking
from vitft.errors import VitftError
from vitft.modelio.card import update_card_exports
from vitft.modelio.hub import push_model_dir
from vitft.run.provenance import git_state, pretrained_revision
from vitft.train import train


@pytest.fixture
def no_network(monkeypatch):
    """Replace only the two calls of HfApi that reach the hub; record what they were given."""
    calls: dict = {}

    def create_repo(self, repo_id, **kwargs):
        calls["repo"] = (repo_id, kwargs)

    def create_commit(self, repo_id, operations, **kwargs):
        calls["commit"] = (repo_id, [op.path_in_repo for op in operations], kwargs)
        return type("CommitInfo", (), {"commit_url": f"https://hub/{repo_id}/commit/abc"})()

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    return calls


def test_a_run_records_its_provenance_card_wandb_artifact_and_pushes(
    tmp_path, tiny_data, monkeypatch, no_network
):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    run = tmp_path / "run"
    cfg = make_cfg(
        run,
        tiny_data,
        "logger=wandb",
        "trainer.max_epochs=2",
        "hub.push=true",
        "hub.repo_id=plant/line3",
    )
    try:
        _, objects = train(cfg)
        wandb_run = objects["trainer"].loggers[-1].experiment
        run_dir = Path(wandb_run.dir).parent
    finally:
        tracking.finish()

    prov = json.loads((run / "provenance.json").read_text())
    assert prov["versions"]["torch"] and prov["versions"]["transformers"]
    assert prov["versions"]["lightning"] and prov["versions"]["vitft"]
    assert prov["pretrained"] is None  # vit_tiny: built from its config
    if prov["git"] is not None:  # a clone (CI): the commit and whether the tree is dirty
        assert len(prov["git"]["commit"]) == 40 and isinstance(prov["git"]["dirty"], bool)
    with (run / "split_manifest.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == sum(1 for _ in tiny_data.rglob("*.png"))
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    assert rows[0]["path"].startswith("train/") and rows[0]["label"] in ("red", "green", "blue")

    card = (run / "model" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: image-classification")
    for text in (
        "blue, green, red",
        "| acc | test |",
        "| acc | val |",
        "## Intended use",
        "split_manifest.csv",
        "Not exported yet",
    ):
        assert text in card, text

    # W&B (offline): the model dir as an artifact and the training curves as a figure
    media = list(run_dir.rglob("media/images/curves/training_*.png"))
    assert media, f"no curves figure under {run_dir}"
    assert any(run_dir.rglob("*.wandb"))
    # the hub push went as far as the network: repo + one commit of every model file
    repo_id, files, kwargs = no_network["commit"]
    assert repo_id == "plant/line3" and no_network["repo"][1]["private"] is True
    assert {"config.json", "model.safetensors", "README.md", "vitft.json"} <= set(files)


def test_wandb_artifact_holds_the_model_dir(tmp_path, tiny_data, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    (model_dir / "vitft.json").write_text('{"labels": ["a", "b"]}')
    metrics = tmp_path / "metrics.csv"
    metrics.write_text(
        "epoch,step,train/loss,val/loss,val/acc\n0,3,1.0,,\n0,3,,0.9,0.5\n1,7,0.5,,\n1,7,,0.6,0.8\n"
    )
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(project="t", save_dir=str(tmp_path), mode="offline")
    try:
        art = tracking.log_to_wandb([logger], model_dir, metrics, ["best"])
    finally:
        wandb.finish()
    assert art.type == "model" and set(art.manifest.entries) == {"config.json", "vitft.json"}
    assert art.metadata == {"labels": ["a", "b"]}
    hist = tracking.epoch_history(metrics)
    assert list(hist["val/acc"][1]) == [0.5, 0.8] and list(hist["train/loss"][0]) == [0, 1]


def test_hub_push_errors_are_one_line(tmp_path):
    with pytest.raises(VitftError, match="hub.repo_id"):
        push_model_dir(tmp_path, {"push": True})
    with pytest.raises(VitftError, match="no config.json"):
        push_model_dir(tmp_path, {"push": True, "repo_id": "a/b"})
    assert push_model_dir(tmp_path, {"push": False}) is None


def test_pretrained_revision_from_the_hub_cache_and_local_dirs(tmp_path, monkeypatch):
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--google--vit-base-patch16-224"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    (repo / "snapshots" / sha).mkdir(parents=True)
    (repo / "snapshots" / sha / "config.json").write_text("{}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    got = pretrained_revision({"pretrained": "google/vit-base-patch16-224"})
    assert got == {
        "source": "google/vit-base-patch16-224",
        "kind": "hub",
        "requested": "main",
        "commit": sha,
    }
    local = pretrained_revision({"pretrained": str(repo / "snapshots" / sha)})
    assert local["kind"] == "local" and local["weights_sha256"] is None
    assert git_state(tmp_path) is None  # not a git work tree


def test_export_parity_lands_in_the_card(tmp_path):
    from vitft.modelio.card import write_card

    write_card(
        tmp_path, task="t", classes=["a"], metrics={"test/acc": 1.0}, config={}, provenance={}
    )
    parity = {"onnx": {"agreement": 1.0, "split": "test", "passed": True, "size_mb": 1.5}}
    assert update_card_exports(tmp_path, parity, "exp")
    card = (tmp_path / "README.md").read_text()
    assert "| onnx | 100.00% | test | pass | 1.5 |" in card and "Not exported yet" not in card
