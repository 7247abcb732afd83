import json

import lightning as L
import numpy as np
import pytest
import torch
from transformers import pipeline

from tests.conftest import TINY_VIT_CONFIG, make_cfg
from vitft.apps.train import train
from vitft.core.errors import VitftError
from vitft.data.folder import scan_dataset
from vitft.models.classifier import build_model
from vitft.training.datamodule import FolderDataModule
from vitft.training.freeze import STRATEGIES, build_freeze
from vitft.training.module import ClassifierModule


@pytest.mark.parametrize(
    "overrides",
    [
        ["freeze=none"],
        ["freeze=backbone"],
        ["freeze=last_n", "freeze.n=2"],
        ["head=mlp"],
        ["head=cosine"],
    ],
    ids=lambda o: " ".join(o),
)
def test_fast_dev_run(tmp_path, tiny_data, overrides):
    cfg = make_cfg(tmp_path / "run", tiny_data, "debug=fdr", *overrides)
    metrics, _objects = train(cfg)
    assert {"val/acc", "test/acc", "test/f1_macro", "test/recall_red"} <= set(metrics)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["classes"] == ["blue", "green", "red"]
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "config.yaml").is_file()


@pytest.mark.parametrize("strategy, n", [("backbone", None), ("last_n", 1), ("last_n", 0)])
def test_freezing_is_real(tiny_data, strategy, n):
    """After optimizer steps, frozen parameters are bitwise unchanged and the rest changed."""
    L.seed_everything(0)
    splits = scan_dataset(tiny_data)
    model, processor = build_model(
        {
            "config": {
                "model_type": "vit",
                "image_size": 32,
                "patch_size": 8,
                "hidden_size": 32,
                "num_hidden_layers": 3,
                "num_attention_heads": 2,
                "intermediate_size": 64,
            }
        },
        {"name": "linear"},
        splits.classes,
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    module = ClassifierModule(
        model,
        optimizer={
            "_target_": "torch.optim.AdamW",
            "_partial_": True,
            "lr": 1e-2,
            "weight_decay": 0.1,
        },
    )
    dm = FolderDataModule(splits, processor, batch_size=8)
    trainer = L.Trainer(
        max_steps=3,
        callbacks=[STRATEGIES[strategy](**({} if n is None else {"n": n}))],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        accelerator="cpu",
    )
    trainer.fit(module, datamodule=dm)
    after = model.state_dict()
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    frozen = set(after) - trainable
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert all(not torch.equal(before[k], after[k]) for k in trainable)
    if strategy == "backbone" or n == 0:
        assert trainable == {"head.fc.weight", "head.fc.bias"}
    else:
        assert any(k.startswith("backbone.vit.layers.2.") for k in trainable)
        assert not any(k.startswith("backbone.vit.layers.1.") for k in trainable)
        assert "backbone.vit.layernorm.weight" in trainable
        assert not any("embeddings" in k for k in trainable)


def test_last_n_larger_than_depth_fails_before_training(tmp_path, tiny_data):
    model, _ = build_model(
        {"config": TINY_VIT_CONFIG},
        {"name": "linear"},
        ["a", "b"],
    )
    with pytest.raises(VitftError, match="freeze.n=5"):
        build_freeze({"name": "last_n", "n": 5}, model)


def test_resume_continues_at_the_right_epoch_and_step(tmp_path, tiny_data):
    run = tmp_path / "run"
    _, first = train(make_cfg(run, tiny_data, "trainer.max_epochs=1", "resume=auto"))
    steps_per_epoch = first["trainer"].global_step
    assert steps_per_epoch == 3  # 24 images / batch 8
    assert (run / "checkpoints" / "last.ckpt").is_file()
    _, second = train(make_cfg(run, tiny_data, "trainer.max_epochs=2", "resume=auto"))
    trainer = second["trainer"]
    assert second["summary"]["resumed_from"] == str(run / "checkpoints" / "last.ckpt")
    assert trainer.current_epoch == 2
    assert trainer.global_step == 2 * steps_per_epoch
    # the optimizer state came back too (AdamW step count = total steps)
    opt = trainer.optimizers[0]
    assert int(next(iter(opt.state.values()))["step"]) == 2 * steps_per_epoch
    # metrics.csv kept epoch 0's rows and appended epoch 1's
    import csv

    rows = list(csv.DictReader((run / "metrics.csv").open()))
    epochs = {r["epoch"] for r in rows if r.get("train/acc")}
    assert epochs == {"0", "1"}
    # the W&B run id is kept with the checkpoint and reused
    assert second["summary"]["wandb_run_id"] == first["summary"]["wandb_run_id"]


def test_explicit_ckpt_path_and_missing_ckpt(tmp_path, tiny_data):
    run = tmp_path / "run"
    train(make_cfg(run, tiny_data, "trainer.max_epochs=1"))
    ckpt = run / "checkpoints" / "last.ckpt"
    _, out = train(
        make_cfg(tmp_path / "run2", tiny_data, "trainer.max_epochs=2", f"ckpt_path={ckpt}")
    )
    assert out["trainer"].current_epoch == 2 and out["trainer"].global_step == 6
    with pytest.raises(VitftError, match="ckpt_path"):
        train(make_cfg(tmp_path / "run3", tiny_data, f"ckpt_path={tmp_path}/nope.ckpt"))


def test_export_pipeline_matches_the_lightning_module(tmp_path, tiny_data):
    run = tmp_path / "run"
    _, objects = train(make_cfg(run, tiny_data, "trainer.max_epochs=3", "head=mlp"))
    module = objects["module"].eval()
    dm = objects["datamodule"]
    paths = [str(p) for p, _ in dm.splits.test]
    x, _ = dm.transform("test").collate([dm.dataset("test")[i] for i in range(len(paths))])
    with torch.no_grad():
        expected = [module.classes[i] for i in module(x).argmax(-1)]
    pipe = pipeline("image-classification", model=str(run / "model"))
    got = [p[0]["label"] for p in pipe(paths)]
    assert got == expected
    meta = json.loads((run / "model" / "vitft.json").read_text())
    assert meta["labels"] == ["blue", "green", "red"] and meta["image_size"] == [64, 64]


def test_class_weights_auto(tmp_path, tiny_data):
    from vitft.training.factory import resolve_class_weights

    w = resolve_class_weights("auto", torch.tensor([10.0, 30.0, 60.0]))
    assert np.allclose(w, [100 / 30, 100 / 90, 100 / 180], atol=1e-5)
    w = resolve_class_weights("sqrt", torch.tensor([10.0, 30.0, 60.0]))
    assert np.allclose(w, np.sqrt([100 / 30, 100 / 90, 100 / 180]), atol=1e-5)
    with pytest.raises(VitftError, match="class_weights"):
        resolve_class_weights([1.0, 2.0], torch.tensor([1.0, 1.0, 1.0]))
    with pytest.raises(VitftError, match="null, auto, sqrt"):
        resolve_class_weights("balanced", torch.tensor([1.0, 1.0, 1.0]))
    _metrics, objects = train(
        make_cfg(tmp_path / "r", tiny_data, "debug=fdr", "loss.class_weights=auto")
    )
    assert objects["module"].criterion.weight is not None


def test_logger_none_trains_with_the_default_callbacks(tmp_path, tiny_data):
    """LearningRateMonitor needs a logger: with logger=none it is left out, not a crash."""
    metrics, objects = train(make_cfg(tmp_path / "run", tiny_data, "logger=none"))
    assert objects["trainer"].loggers == [] and "val/acc" in metrics
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
