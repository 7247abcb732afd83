"""Freezing / PEFT strategies: the expected parameters, and only those, change."""

import lightning as L
import pytest
import torch

from tests.conftest import make_cfg
from vitft.data.datamodule import FolderDataModule
from vitft.data.folder import DatasetSplits, scan_dataset
from vitft.export.hf import load_model, save_hf
from vitft.freeze import build_freeze
from vitft.models.classifier import build_model
from vitft.module import ClassifierModule, build_optimizer
from vitft.multilabel import PROBLEM_TYPE
from vitft.train import train

TINY = {
    "model_type": "vit",
    "image_size": 32,
    "patch_size": 8,
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}
OPT = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-2, "weight_decay": 0.1}


def fit_steps(tiny_data, freeze_cfg, steps=3, epochs=None):
    """Train a few steps on a folder (or on ready DatasetSplits, e.g. multi-label ones)."""
    L.seed_everything(0)
    splits = tiny_data if isinstance(tiny_data, DatasetSplits) else scan_dataset(tiny_data)
    model, processor = build_model({"config": TINY}, {"name": "linear"}, splits.classes)
    if splits.multilabel:
        model.config.problem_type = PROBLEM_TYPE
    cb = build_freeze(freeze_cfg, model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    module = ClassifierModule(model, optimizer=OPT)
    trainer = L.Trainer(
        max_steps=-1 if epochs else steps,
        max_epochs=epochs,
        callbacks=[cb],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        accelerator="cpu",
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=FolderDataModule(splits, processor, batch_size=8))
    after = model.state_dict()
    changed = {k for k in after if k in before and not torch.equal(before[k], after[k])}
    return model, changed, trainer


def test_bitfit_trains_biases_and_head_only(tiny_data):
    model, changed, _ = fit_steps(tiny_data, {"name": "bitfit"})
    assert changed == {k for k, p in model.named_parameters() if p.requires_grad}
    assert all(k.endswith("bias") or k.startswith("head.") for k in changed)
    assert any(k.startswith("backbone.") for k in changed)


def test_lora_trains_adapters_and_head_and_merges_exactly(tmp_path, tiny_data):
    model, changed, _ = fit_steps(
        tiny_data,
        {
            "name": "lora",
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        },
    )
    assert changed and all("lora_" in k or k.startswith("head.") for k in changed)
    assert any("lora_B" in k for k in changed)
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in k or k.startswith("head.") for k in trainable)
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    _, processor = build_model({"config": TINY}, {"name": "linear"}, model.labels)
    out = save_hf(model, processor, tmp_path / "m")
    merged, _ = load_model(out)
    assert not any("lora" in k for k in merged.state_dict())  # a plain model
    with torch.no_grad():
        assert torch.allclose(merged(x), expected, atol=1e-5)


def test_freeze_unfreeze_adds_the_backbone_at_its_epoch(tiny_data):
    model, changed, trainer = fit_steps(
        tiny_data,
        {"name": "freeze_unfreeze", "unfreeze_epoch": 1, "backbone_lr_ratio": 0.1},
        epochs=2,
    )
    opt = trainer.optimizers[0]
    assert len(opt.param_groups) == 3  # decay + no-decay of the head, then the backbone
    assert opt.param_groups[-1]["lr"] == pytest.approx(opt.param_groups[0]["lr"] * 0.1)
    assert any(k.startswith("backbone.vit.embeddings") for k in changed)


def test_unfreeze_milestones_top_then_rest(tiny_data):
    cfg = {"name": "unfreeze_milestones", "milestones": [1, 2], "n": 1, "backbone_lr_ratio": 0.5}
    model, changed, trainer = fit_steps(tiny_data, cfg, epochs=2)
    # after epoch 1 (0-based): top block + final norm train, the rest not yet
    assert any(k.startswith("backbone.vit.layers.2.") for k in changed)
    assert not any(k.startswith("backbone.vit.layers.0.") for k in changed)
    assert not any("embeddings" in k for k in changed)


def test_staged_state_survives_resume_across_the_unfreeze_epoch(tmp_path, tiny_data):
    run = tmp_path / "run"
    over = ["freeze=freeze_unfreeze", "freeze.unfreeze_epoch=1", "resume=auto"]
    train(make_cfg(run, tiny_data, "trainer.max_epochs=1", *over))  # stops before the unfreeze
    train(make_cfg(run, tiny_data, "trainer.max_epochs=2", *over))  # unfreezes at epoch 1
    _, resumed = train(make_cfg(run, tiny_data, "trainer.max_epochs=3", *over))  # after it
    _, straight = train(make_cfg(tmp_path / "straight", tiny_data, "trainer.max_epochs=3", *over))
    for out in (resumed, straight):
        groups = out["trainer"].optimizers[0].param_groups
        assert len(groups) == 3
        backbone = {id(p) for p in out["module"].model.backbone.parameters()}
        assert {id(p) for p in groups[-1]["params"]} == backbone
    a = resumed["trainer"].optimizers[0].param_groups
    b = straight["trainer"].optimizers[0].param_groups
    assert [g["lr"] for g in a] == pytest.approx([g["lr"] for g in b])
    assert [len(g["params"]) for g in a] == [len(g["params"]) for g in b]


def test_layer_decay_follows_timms_rule():
    model, _ = build_model({"config": TINY}, {"name": "linear"}, ["a", "b"])
    opt = build_optimizer({**OPT, "lr": 1.0, "layer_decay": 0.5}, model)
    lr_of = {}
    for g in opt.param_groups:
        for p in g["params"]:
            lr_of[id(p)] = g["lr"]
    vit = model.backbone.vit
    assert lr_of[id(model.head.fc.weight)] == 1.0
    assert lr_of[id(vit.layernorm.weight)] == 1.0
    for i in range(3):  # L = 3: block i gets 0.5 ** (3 - i)
        assert lr_of[id(vit.layers[i].attention.q_proj.weight)] == 0.5 ** (3 - i)
    assert lr_of[id(vit.embeddings.cls_token)] == 0.5**4
    # weight decay: none on biases, norms and tokens
    wd = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert wd[id(vit.layers[0].attention.q_proj.bias)] == 0.0
    assert wd[id(vit.embeddings.cls_token)] == 0.0
    assert wd[id(vit.layers[0].attention.q_proj.weight)] == 0.1
