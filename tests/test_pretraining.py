"""Pretraining: formula images, MAE and DINO encoders, resume, and the shipped backbone."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict
from safetensors.torch import load_file

from tests.conftest import CONF, TINY_VIT_CONFIG, make_cfg
from vitft.apps.pretrain import pretrain
from vitft.apps.train import train
from vitft.core.errors import VitftError
from vitft.models.backbone import load_backbone
from vitft.training.pretraining.formula import fractal_image, write_dataset
from vitft.weights import sha256

TINY_MODEL = [f"model.config.{k}={v}" for k, v in TINY_VIT_CONFIG.items() if k != "model_type"]


def pretrain_cfg(output_dir: Path, data_dir: Path, *overrides: str, model=("model=vit_tiny",)):
    base = [
        *model,
        *(TINY_MODEL if model[0] == "model=vit_tiny" else []),
        "trainer=cpu",
        "trainer.max_epochs=1",
        "data.num_workers=0",
        "data.batch_size=8",
        "logger=csv",
        "callbacks.progress_bar=null",
        "+trainer.enable_model_summary=false",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("pretrain", overrides=[*base, f"data.roots=[{data_dir}]", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def test_formula_images_are_deterministic_per_seed(tmp_path):
    a = np.asarray(fractal_image(seed=3, cls=7, instance=1, size=48))
    b = np.asarray(fractal_image(seed=3, cls=7, instance=1, size=48))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, np.asarray(fractal_image(seed=4, cls=7, instance=1, size=48)))
    assert not np.array_equal(a, np.asarray(fractal_image(seed=3, cls=8, instance=1, size=48)))
    assert a.std() > 5  # an attractor was drawn, not a flat background
    root = write_dataset(tmp_path / "f", classes=3, instances=2, size=32, seed=1)
    again = write_dataset(tmp_path / "g", classes=3, instances=2, size=32, seed=1)
    files = sorted(p.relative_to(root) for p in root.rglob("*.png"))
    assert len(files) == 3 * (2 + 1 + 1)  # train, val and test instances per class
    assert all(sha256(root / f) == sha256(again / f) for f in files)


@pytest.mark.parametrize("method", ["mae", "dino"])
def test_pretrained_encoder_loads_into_the_classifier_exactly(tmp_path, tiny_data, method):
    cfg = pretrain_cfg(tmp_path / "run", tiny_data, f"pretraining={method}")
    summary, _ = pretrain(cfg)
    model_dir = tmp_path / "run" / "model"
    info = json.loads((model_dir / "pretraining.json").read_text())
    assert info["method"] == method and info["data"]["images"] == 3 * 14
    assert len(info["loss_curve"]) == 1 and np.isfinite(info["loss_curve"][0])

    saved = load_file(model_dir / "model.safetensors")
    hf_model, _ = load_backbone({"pretrained": str(model_dir)}, ["a", "b", "c"])
    loaded = {k: v for k, v in hf_model.state_dict().items() if not k.startswith("classifier.")}
    # transformers 5 writes the legacy key names, so tensors are matched by value: every encoder
    # tensor of the classifier is one of the file's, one to one, and only the classifier is new.
    assert len(saved) == len(loaded) and sum(v.numel() for v in saved.values()) == sum(
        v.numel() for v in loaded.values()
    )
    unused = dict(saved)
    for key, value in loaded.items():
        match = next(
            (k for k, v in unused.items() if v.shape == value.shape and torch.equal(v, value)), None
        )
        assert match is not None, f"{key} was not loaded from {model_dir}"
        del unused[match]
    layers = {k.split(".")[2] for k in loaded if k.startswith("vit.layers.")}
    assert len(layers) == TINY_VIT_CONFIG["num_hidden_layers"]


def test_pretrain_resumes_where_it_stopped(tmp_path, tiny_data):
    run = tmp_path / "run"
    pretrain(pretrain_cfg(run, tiny_data, "pretraining=mae"))
    first = load_file(run / "model" / "model.safetensors")
    summary, _ = pretrain(
        pretrain_cfg(run, tiny_data, "pretraining=mae", "resume=auto", "trainer.max_epochs=2")
    )
    assert summary["resumed_from"].endswith("last.ckpt")
    assert summary["epochs"] == 2 and summary["global_step"] == 2 * 5  # 42 images, batch 8
    assert len(summary["loss_curve"]) == 2  # the first epoch's loss came back from the checkpoint
    resumed = load_file(run / "model" / "model.safetensors")
    assert any(not torch.equal(first[k], resumed[k]) for k in first)


def test_short_pretrain_then_finetune(tmp_path, tiny_data):
    pretrain(pretrain_cfg(tmp_path / "pre", tiny_data, "pretraining=dino"))
    cfg = make_cfg(tmp_path / "ft", tiny_data, f"model.pretrained={tmp_path / 'pre' / 'model'}")
    with open_dict(cfg):
        cfg.model.config = None
    metrics, objects = train(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert (tmp_path / "ft" / "model" / "config.json").is_file()


def test_pretrain_rejects_non_vit_and_missing_roots(tmp_path, tiny_data):
    with pytest.raises(VitftError, match="data.roots"):
        pretrain(pretrain_cfg(tmp_path / "a", tmp_path / "missing"))
    cfg = pretrain_cfg(tmp_path / "b", tiny_data, model=("model=convnext_tiny",))
    with pytest.raises(VitftError, match="ViT"):
        pretrain(cfg)


def shipped_cfg(*overrides: str, model: str = "vit_fractal"):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[f"model={model}", *overrides])


@pytest.mark.parametrize("model", ["vit_fractal", "mobilevit_fractal"])
def test_shipped_backbone_is_checked_by_sha256(tmp_path, model):
    cfg = shipped_cfg(model=model)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    assert model_cfg["sha256"] == sha256(Path(model_cfg["pretrained"]) / "model.safetensors")
    info = json.loads((Path(model_cfg["pretrained"]) / "pretraining.json").read_text())
    assert info["weights_sha256"] == model_cfg["sha256"]
    # The recorded recipe must still run: every `python -m <module>` in it exists.
    modules = re.findall(r"python -m ([\w.]+)", info["recipe"])
    assert modules and all(importlib.util.find_spec(m) for m in modules), modules
    hf_model, processor = load_backbone(model_cfg, ["ok", "crack", "dent"])
    assert hf_model.dtype == torch.float32 and hf_model.config.num_labels == 3
    # Every encoder tensor comes from the file (none randomly initialised). Saved again, the
    # loaded encoder has the file's key names (transformers 5 renames modules in memory).
    hf_model.base_model.save_pretrained(tmp_path / "again")
    shipped = load_file(Path(model_cfg["pretrained"]) / "model.safetensors")
    again = load_file(tmp_path / "again" / "model.safetensors")
    assert set(shipped) == set(again)
    assert all(torch.equal(shipped[k].float(), again[k].float()) for k in shipped)

    damaged = tmp_path / model
    shutil.copytree(model_cfg["pretrained"], damaged)
    weights = bytearray((damaged / "model.safetensors").read_bytes())
    weights[-1] ^= 1
    (damaged / "model.safetensors").write_bytes(bytes(weights))
    with pytest.raises(VitftError, match="sha256"):
        load_backbone({**model_cfg, "pretrained": str(damaged)}, ["a", "b"])
