"""Every backbone's tiny variant trains with freeze=backbone and freeze=last_n."""

import pytest
import torch

from tests.conftest import make_cfg
from vitft.apps.train import train
from vitft.models.parts import ARCHITECTURES, backbone_parts

TINY = ["vit_tiny", "deit_tiny", "swin_tiny", "convnext_tiny", "mobilevit_tiny", "dinov2_tiny"]


@pytest.mark.parametrize("freeze", ["backbone", "last_n"])
@pytest.mark.parametrize("model", TINY)
def test_tiny_backbone_trains(tmp_path, tiny_data, model, freeze):
    overrides = [f"model={model}", f"freeze={freeze}", "debug=fdr"]
    if freeze == "last_n":
        overrides.append("freeze.n=1")
    _, objects = train(make_cfg(tmp_path / "run", tiny_data, *overrides))
    module = objects["module"]
    counts = module.param_counts
    assert 0 < counts["trainable"] < counts["total"]
    parts = backbone_parts(module.model.backbone)
    assert len(parts.blocks) >= 2
    last = {id(p) for p in parts.blocks[-1].parameters()}
    first = {id(p) for p in parts.blocks[0].parameters()}
    trainable = {id(p) for p in module.model.parameters() if p.requires_grad}
    assert not first & trainable
    assert bool(last & trainable) == (freeze == "last_n")
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()


def test_unknown_architecture_fails_clearly():
    from transformers import AutoConfig, AutoModelForImageClassification

    from vitft.core.errors import VitftError

    cfg = AutoConfig.for_model(
        "resnet", num_labels=2, hidden_sizes=[8, 16], depths=[1, 1], embedding_size=8
    )
    model = AutoModelForImageClassification.from_config(cfg)
    assert "resnet" not in ARCHITECTURES
    with pytest.raises(VitftError, match="model_type='resnet'"):
        backbone_parts(model)
    assert isinstance(model(pixel_values=torch.randn(1, 3, 32, 32)).logits, torch.Tensor)


@pytest.mark.parametrize("model", TINY)
def test_every_backbone_takes_model_image_size(model):
    """model.image_size: ViTs interpolate their position grid (DeiT keeps both of its leading
    tokens); conv, hybrid and relative-position backbones only change the preprocessing."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from PIL import Image

    from tests.conftest import CONF
    from vitft.data.transforms import ImageTransform, processor_facts
    from vitft.models.classifier import build_model

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}", "++model.image_size=96"])
    net, processor = build_model(OmegaConf.to_container(cfg.model), {"name": "linear"}, ["a", "b"])
    pixels = ImageTransform(processor)(Image.new("RGB", (200, 150)))
    assert tuple(pixels.shape) == (3, 96, 96) and processor_facts(processor)["image_size"] == [
        96,
        96,
    ]
    assert net.config.image_size == 96 and net(pixels[None]).shape == (1, 2)


def test_mobilevit_from_config_starts_with_a_usable_signal():
    """transformers 5 draws MobileViT's BatchNorm scales from normal(0, 0.02), which leaves the
    pooled features of a fresh model near 1e-3 and 256-class pretraining stuck at ln(256);
    vitft re-initialises as the reference code does (Kaiming convs, BatchNorm scales of 1)."""
    import yaml

    from tests.conftest import CONF
    from vitft.models.classifier import build_model

    cfg = yaml.safe_load((CONF / "model" / "mobilevit_tiny.yaml").read_text())
    torch.manual_seed(0)
    net, _ = build_model(cfg, {"name": "linear"}, [f"c{i}" for i in range(8)])
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(bool((m.weight == 1).all()) for m in norms)
    net.train()
    assert net.features(torch.randn(16, 3, 64, 64)).std() > 0.05


def test_a_pretrained_backbone_trains_in_train_mode():
    """from_pretrained returns eval mode and Lightning keeps each module's mode at fit start:
    dropout, stochastic depth and BatchNorm statistics would be off for every pretrained model."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from tests.conftest import CONF
    from vitft.models.classifier import build_model

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["model=mobilevit_fractal"])
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    net, _ = build_model(model_cfg, {"name": "linear"}, ["a", "b"])
    assert all(m.training for m in net.modules())
