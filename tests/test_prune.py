"""Head pruning: removal equals masking, the pruned model saves, reloads, trains on and exports
(budget ~25 s)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from tests.conftest import CLASSES, CONF
from tests.test_export import TINY, export_cfg, make_model_dir
from vitft.apps.export import export
from vitft.apps.prune import prune
from vitft.deploy.runtime import load_exported
from vitft.modelio.hf import load_model
from vitft.models.classifier import build_model
from vitft.models.pruning import head_counts, head_gates, head_importance, prune_heads

CFG4 = {**TINY, "num_attention_heads": 4}  # head_dim 8


def test_pruning_equals_masking_those_heads():
    torch.manual_seed(0)
    model, _ = build_model({"config": CFG4}, {"name": "linear"}, list(CLASSES))
    model.eval()
    x = torch.randn(3, 3, 32, 32)
    remove = {0: [1], 1: [0, 3]}
    gates = torch.ones(2, 4)
    for layer, heads in remove.items():
        gates[layer, heads] = 0.0
    with torch.no_grad(), head_gates(model.backbone, gates):
        masked = model(x)
    pruned = copy.deepcopy(model)
    prune_heads(pruned.backbone, remove)
    attn = pruned.backbone.vit.layers[1].attention
    assert head_counts(pruned.backbone) == [3, 2]
    assert attn.q_proj.out_features == 16 and attn.o_proj.in_features == 16
    # Kept rows are heads 1 and 2 of the original q_proj, in order.
    orig = model.backbone.vit.layers[1].attention.q_proj.weight
    torch.testing.assert_close(attn.q_proj.weight, orig[8:24])
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(model(x), masked, atol=1e-4)  # the heads did matter
    assert pruned.config.pruned_heads == {"0": [1], "1": [0, 3]}
    # Pruning again keeps the original head numbers in the record.
    prune_heads(pruned.backbone, {1: [1]})
    assert pruned.config.pruned_heads["1"] == [0, 2, 3]


def test_importance_prune_save_reload_train_and_export(tmp_path, tiny_data):
    model_dir = make_model_dir(tmp_path / "run", CFG4)
    model, _ = load_model(model_dir)
    x = torch.randn(4, 3, 32, 32)
    scores = head_importance(model, [(x, torch.tensor([0, 1, 2, 0]))])
    assert scores.shape == (2, 4) and (scores >= 0).all()
    torch.testing.assert_close(scores.norm(dim=1), torch.ones(2))

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("prune", overrides=[f"model_dir={model_dir}", "heads=1"])
    with open_dict(cfg):
        cfg.data_dir = str(tiny_data)
        cfg.output_dir = str(tmp_path / "pruned")
    report = prune(cfg)
    assert report["heads_per_layer"] == [3, 3]
    assert report["params_after"] < report["params_before"]
    pruned_dir = Path(cfg.output_dir) / "model"
    assert json.loads((pruned_dir / "config.json").read_text())["pruned_heads"]

    reloaded, _ = load_model(pruned_dir)
    assert head_counts(reloaded.backbone) == [3, 3]
    # Recovery fine-tuning starts from it like any local pretrained dir (train.py path).
    again, _ = build_model({"pretrained": str(pruned_dir)}, {"name": "linear"}, list(CLASSES))
    assert head_counts(again.backbone) == [3, 3]
    with torch.no_grad():
        torch.testing.assert_close(again(x), reloaded(x))

    results = export(export_cfg(pruned_dir, tiny_data, "formats=[onnx,torch_int8]"))
    assert results["onnx"]["max_abs_diff"] < 1e-4
    predict, _ = load_exported(pruned_dir.parent / "export" / "onnx")
    with torch.no_grad():
        np.testing.assert_allclose(predict(x.numpy()), reloaded(x).numpy(), atol=1e-4)
