import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from vitft.errors import VitftError
from vitft.explain import Explainer, attention_rollout, explain, mask_mass, overlay
from vitft.export.hf import save_hf
from vitft.models.classifier import build_model

CONFIG = {
    "model_type": "vit",
    "image_size": 32,
    "patch_size": 8,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}


@pytest.fixture(scope="module")
def model_and_processor():
    torch.manual_seed(0)
    return build_model({"config": CONFIG}, {"name": "linear"}, ["a", "b", "c"])


def test_maps_have_the_patch_grid_shape(model_and_processor):
    model, _ = model_and_processor
    x = torch.randn(3, 3, 32, 32)
    before = model(x)
    maps = Explainer(model, discard_ratio=0.5, head_fusion="max").explain(x)
    assert set(maps) == {"rollout", "gradcam"}
    for m in maps.values():
        assert m.shape == (3, 4, 4)
        assert m.min() >= 0 and m.max() <= 1 + 1e-6
    # eager attention gives the same logits as SDPA (only slower), and no grads are left over
    assert torch.allclose(model(x), before, atol=1e-5)
    assert all(p.grad is None for p in model.parameters())


def test_rollout_follows_the_attention():
    """Every layer attends from CLS to patch 5 only: the rollout map peaks at patch 5."""
    tokens = 1 + 16
    attn = torch.full((1, 2, tokens, tokens), 0.01)
    attn[..., 5 + 1] = 1.0
    attn = attn / attn.sum(-1, keepdim=True)
    flat = attention_rollout([attn, attn], discard_ratio=0.0)
    assert flat.shape == (1, 16) and flat.argmax().item() == 5
    # discarding weak weights keeps the peak and never makes a row empty
    assert attention_rollout([attn] * 3, discard_ratio=0.9).argmax().item() == 5
    with pytest.raises(VitftError, match="head_fusion"):
        attention_rollout([attn], head_fusion="median")


def test_mask_mass_and_overlay():
    heat = np.zeros((4, 4))
    heat[0, 0] = 1.0
    mask = np.zeros((32, 32), bool)
    mask[:8, :8] = True
    inside, area = mask_mass(heat, mask)
    assert area == pytest.approx(1 / 16) and inside > 0.5
    assert mask_mass(np.ones((4, 4)), mask)[0] == pytest.approx(area)  # flat map = chance
    img = Image.new("RGB", (40, 30), (128, 128, 128))
    assert overlay(img, heat).size == (40, 30)


def test_explain_cli_writes_one_png_per_image(model_and_processor, tmp_path, tiny_data):
    model, processor = model_and_processor
    model_dir = save_hf(model, processor, tmp_path / "model")
    cfg = OmegaConf.create(
        {
            "model_dir": str(model_dir),
            "inputs": str(tiny_data / "test" / "red" / "*_00[01].png"),
            "methods": ["rollout", "gradcam"],
            "discard_ratio": 0.9,
            "head_fusion": "mean",
            "target": "b",
            "paths": {"output_dir": str(tmp_path / "out")},
        }
    )
    written = explain(cfg)
    assert len(written) == 2 and all(p.suffix == ".png" and p.stat().st_size for p in written)
    with pytest.raises(VitftError, match="not a class"):
        explain(OmegaConf.merge(cfg, {"target": "zebra"}))
