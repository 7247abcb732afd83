import huggingface_hub.constants
import pytest
import torch
from transformers import AutoModelForImageClassification, pipeline

from tests.conftest import TINY_VIT_CONFIG, make_image
from vitft.core.errors import VitftError
from vitft.modelio.hf import VitftForImageClassification, load_model, save_hf
from vitft.models.backbone import load_backbone
from vitft.models.classifier import build_model
from vitft.models.heads import CosineHead, LinearHead, MLPHead

TINY = TINY_VIT_CONFIG
HEADS = {
    "linear": {"name": "linear"},
    "mlp": {"name": "mlp", "hidden_size": 16, "dropout": 0.1, "activation": "relu"},
    "cosine": {"name": "cosine", "scale": 10.0, "learn_scale": True},
}


@pytest.mark.parametrize("head", list(HEADS))
def test_head_swap_keeps_the_backbone(head):
    torch.manual_seed(0)
    model, _ = build_model({"config": TINY}, HEADS[head], ["a", "b", "c"])
    assert isinstance(
        model.head, {"linear": LinearHead, "mlp": MLPHead, "cosine": CosineHead}[head]
    )
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 3)
    assert model.features(x).shape == (2, 32)
    assert isinstance(model.backbone.classifier, torch.nn.Identity)


def test_from_pretrained_local_dir_with_other_label_count(tmp_path):
    """The hub code path (from_pretrained with num_labels/id2label/ignore_mismatched_sizes), on a
    local directory: air-gapped mirrors work the same way."""
    src, proc = load_backbone({"config": TINY}, [f"c{i}" for i in range(5)])
    src.save_pretrained(tmp_path / "mirror")
    proc.save_pretrained(tmp_path / "mirror")
    model, processor = build_model(
        {"pretrained": str(tmp_path / "mirror")}, HEADS["linear"], ["ok", "crack", "dent"]
    )
    assert model.labels == ["ok", "crack", "dent"]
    assert model.head.fc.out_features == 3
    # the backbone weights are the mirrored ones, not random
    a = src.vit.layers[0].attention.q_proj.weight
    b = model.backbone.vit.layers[0].attention.q_proj.weight
    assert torch.equal(a, b)
    assert processor.size["height"] == 32


def test_same_label_count_keeps_the_classifier(tmp_path):
    src, proc = load_backbone({"config": TINY}, ["a", "b"])
    src.save_pretrained(tmp_path / "m")
    proc.save_pretrained(tmp_path / "m")
    model, _ = build_model({"pretrained": str(tmp_path / "m")}, HEADS["linear"], ["a", "b"])
    assert torch.equal(model.head.fc.weight, src.classifier.weight)


def test_unreachable_hub_fails_early_with_the_fixes(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(VitftError) as err:
        load_backbone({"pretrained": "google/vit-base-patch16-224"}, ["a", "b"])
    msg = str(err.value)
    assert "HF_HUB_OFFLINE" in msg and "model.pretrained=/path" in msg
    # the shipped offline backbones, never random weights
    assert "model=vit_fractal" in msg and "model=mobilevit_fractal" in msg


def test_local_dir_without_config_is_rejected(tmp_path):
    with pytest.raises(VitftError, match="config.json"):
        load_backbone({"pretrained": str(tmp_path)}, ["a"])


@pytest.mark.parametrize("head", list(HEADS))
def test_hf_export_round_trip_and_pipeline(tmp_path, head):
    import numpy as np

    torch.manual_seed(0)
    model, processor = build_model({"config": TINY}, HEADS[head], ["red", "green", "blue"])
    model.eval()
    out = save_hf(model, processor, tmp_path / "model")
    assert (out / "model.safetensors").is_file() and (out / "preprocessor_config.json").is_file()
    hf = AutoModelForImageClassification.from_pretrained(out)
    if head == "linear":
        assert type(hf).__name__ == "ViTForImageClassification"  # plain HF, no vitft needed
    else:
        assert isinstance(hf, VitftForImageClassification)
    reloaded, _ = load_model(out)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(reloaded(x), model(x), atol=1e-6)
        assert torch.allclose(hf(pixel_values=x).logits, model(x), atol=1e-6)
    rng = np.random.default_rng(0)
    images = [make_image(i, rng) for i in range(3)]
    pipe = pipeline("image-classification", model=str(out))
    preds = [p[0]["label"] for p in pipe(images)]
    pixel = processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = [model.labels[i] for i in model(pixel).argmax(-1)]
    assert preds == expected
