"""add_class: a new class from a few images, the old classes kept, the OOD scorer refitted."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from PIL import Image

from tests.conftest import CONF, make_cfg, make_dataset
from vitft.apps.add_class import add_class
from vitft.apps.train import train
from vitft.core.errors import VitftError
from vitft.deploy.predictor import Predictor
from vitft.models.extend import extend_head
from vitft.models.heads import CosineHead, LinearHead, MLPHead


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    data = make_dataset(
        tmp_path_factory.mktemp("ac_data"), counts={"train": 10, "val": 6, "test": 6}
    )
    out = tmp_path_factory.mktemp("ac_run")
    train(make_cfg(out, data, "trainer.max_epochs=3", "callbacks.progress_bar=null"))
    return out, data


def white_images(folder, n, seed):
    """The new class: bright in every channel (the old classes are bright in one)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        arr = (rng.integers(0, 60, size=(32, 32, 3)) + 190).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"white_{i:02d}.png")
    return folder


def ac_cfg(out, *overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("add_class", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.output = str(out / "model")
    return cfg


def test_add_class_learns_the_new_class_and_keeps_the_old(run, tmp_path):
    run_dir, data = run
    images = white_images(tmp_path / "white", 8, seed=1)
    report = add_class(
        ac_cfg(tmp_path, f"model_dir={run_dir / 'model'}", "class=white", f"images={images}")
    )
    assert report["images"] == 8 and report["new_class_train_recall"] == 1.0
    assert report["old_val_acc_after"] >= report["old_val_acc_before"] - 0.15
    predictor = Predictor.from_path(tmp_path / "model")
    assert predictor.labels[-1] == "white" and len(predictor.labels) == 4
    unseen = predictor.predict_files(white_images(tmp_path / "unseen", 6, seed=2)).predictions
    assert sum(p.predicted == "white" for p in unseen) >= 5
    old = predictor.predict_files(data / "test").predictions
    truth = [p.path.split("/")[-2] for p in old]
    acc = np.mean([p.predicted == t for p, t in zip(old, truth, strict=True)])
    assert acc >= report["old_val_acc_after"] - 0.3  # the old classes still work on test
    ood = json.loads((tmp_path / "model" / "ood.json").read_text())
    assert ood["method"] == "mahalanobis" and ood["train_images"] == 30 + 8


def test_bad_input_is_one_line_errors(run, tmp_path):
    run_dir, _ = run
    images = white_images(tmp_path / "w", 2, seed=3)
    with pytest.raises(VitftError, match="class='red' is already"):
        add_class(
            ac_cfg(tmp_path, f"model_dir={run_dir / 'model'}", "class=red", f"images={images}")
        )
    with pytest.raises(VitftError, match="images=.* is not a folder"):
        add_class(ac_cfg(tmp_path, f"model_dir={run_dir / 'model'}", "class=x", "images=/nope"))


@pytest.mark.parametrize("head", [LinearHead(8, 3), MLPHead(8, 3, hidden_size=4), CosineHead(8, 3)])
def test_every_head_grows_one_output_and_keeps_the_old_ones(head):
    x = torch.randn(5, 8)
    grown = extend_head(head.eval(), torch.randn(4, 8)).eval()
    with torch.no_grad():
        before, after = head(x), grown(x)
    assert after.shape == (5, 4)
    assert torch.allclose(after[:, :3], before, atol=1e-5)
