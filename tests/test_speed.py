"""Speed and memory options: batch-size finder, gradient checkpointing, compile, bf16 on CPU.
Budget: ~30 s. (Their speed and memory figures come from benchmarks/, not from tests.)"""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import TINY_VIT_CONFIG, make_cfg, make_dataset
from vitft.batch_size import initial_batch_size
from vitft.errors import VitftError
from vitft.models.classifier import build_model
from vitft.train import train

SMALL = TINY_VIT_CONFIG


def test_batch_size_auto_is_tuned_and_capped(tmp_path):
    data = make_dataset(tmp_path / "data", counts={"train": 4, "val": 2, "test": 2})
    cfg = make_cfg(tmp_path / "run", data, "data.batch_size=auto", "data.max_batch_size=4")
    _, objects = train(cfg)
    dm = objects["datamodule"]
    assert dm.batch_size == 4 and dm.eval_batch_size == 4
    assert json.loads((tmp_path / "run" / "batch_size.json").read_text()) == {"batch_size": 4}
    with pytest.raises(VitftError, match="data.batch_size"):
        initial_batch_size("big")


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model, _ = build_model(
            {"config": SMALL, "gradient_checkpointing": ckpt}, {"name": "linear"}, ["a", "b"]
        )
        assert model.backbone.is_gradient_checkpointing is ckpt
        torch.manual_seed(1)
        model.train()(torch.randn(2, 3, 32, 32)).sum().backward()
        grads.append(model.backbone.vit.embeddings.patch_embeddings.projection.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_compile_keeps_parameter_names():
    plain, _ = build_model({"config": SMALL}, {"name": "linear"}, ["a", "b"])
    compiled, _ = build_model({"config": SMALL, "compile": True}, {"name": "linear"}, ["a", "b"])
    assert compiled._compiled_call_impl is not None
    assert list(compiled.state_dict()) == list(plain.state_dict())


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_trains_on_cpu(tmp_path, tiny_data, precision):
    cfg = make_cfg(tmp_path / "run", tiny_data, f"trainer.precision={precision}", "debug=fdr")
    metrics, _ = train(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0


def test_batch_size_auto_resume_reuses_the_found_size(tmp_path):
    from types import SimpleNamespace

    from vitft.batch_size import auto_batch_size

    (tmp_path / "batch_size.json").write_text(json.dumps({"batch_size": 64}))
    dm = SimpleNamespace(batch_size=2, eval_batch_size=2)
    assert auto_batch_size(None, None, dm, 256, tmp_path, resuming=True) == 64
    assert dm.batch_size == 64 and dm.eval_batch_size == 64


def test_batch_size_auto_with_the_feature_cache(tmp_path):
    # freeze=backbone turns the feature cache on: its loaders must not see the literal "auto".
    data = make_dataset(tmp_path / "data", counts={"train": 4, "val": 2, "test": 2})
    cfg = make_cfg(
        tmp_path / "run",
        data,
        "freeze=backbone",
        "cache.views=1",
        "data.batch_size=auto",
        "data.max_batch_size=4",
    )
    _, objects = train(cfg)
    dm = objects["datamodule"]
    assert type(dm).__name__ == "FeatureDataModule"
    assert dm.batch_size == 4 and dm.eval_batch_size == 4
