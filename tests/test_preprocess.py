"""The lean preprocessing of an export (PIL + numpy, ``vitft.deploy.preprocess``) against the HF
image processor's own output, over the options a saved processor config can carry: resample
filter, crop or none, channel order (MobileViT's BGR flip on or off), rescale factor, mean/std on
or off. test_predict_lean.py covers the default processor of each backbone."""

from __future__ import annotations

import numpy as np
import pytest
import transformers
from PIL import Image

from tests.test_predict_lean import one_level, saved_lean
from vitft.deploy.preprocess import export_preprocess

BICUBIC, NEAREST = Image.Resampling.BICUBIC, Image.Resampling.NEAREST
CROP = {"crop_size": {"height": 32, "width": 32}}
VARIANTS = {
    "mobilevit_bgr": lambda: transformers.MobileViTImageProcessor(
        size={"shortest_edge": 40}, **CROP
    ),
    "mobilevit_rgb": lambda: transformers.MobileViTImageProcessor(
        size={"shortest_edge": 40}, do_flip_channel_order=False, **CROP
    ),
    "mobilevit_no_crop": lambda: transformers.MobileViTImageProcessor(
        size={"shortest_edge": 32}, do_center_crop=False
    ),
    "vit_bicubic": lambda: transformers.ViTImageProcessor(
        size={"height": 32, "width": 32}, resample=BICUBIC
    ),
    "vit_nearest_imagenet": lambda: transformers.ViTImageProcessor(
        size={"height": 32, "width": 32},
        resample=NEAREST,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ),
    "vit_no_normalize": lambda: transformers.ViTImageProcessor(
        size={"height": 32, "width": 32}, do_normalize=False
    ),
    "vit_rescale_only_half": lambda: transformers.ViTImageProcessor(
        size={"height": 32, "width": 32}, do_normalize=False, rescale_factor=0.5 / 255
    ),
    "deit_crop": lambda: transformers.DeiTImageProcessor(
        size={"height": 40, "width": 40}, resample=BICUBIC, **CROP
    ),
}


def _images() -> list[Image.Image]:
    out = []
    for w, h in [(64, 48), (37, 90), (20, 17), (32, 32)]:
        ramp = np.linspace(0, 255, h * w * 3).reshape(h, w, 3)
        y, x = np.mgrid[:h, :w]
        waves = 40 * np.sin(x / 4)[..., None] * np.cos(y / 6)[..., None] * [1, -1, 0.5]
        out.append(Image.fromarray(np.clip(ramp + waves, 0, 255).astype(np.uint8)))
    # Hard-edged blocks: another resample filter is ~20 steps off at their edges.
    blocks = np.zeros((70, 90, 3), np.uint8)
    blocks[10:40, 15:50], blocks[45:60, 55:85, 1], blocks[20:65, 60:64] = 230, 180, 255
    out.append(Image.fromarray(blocks))
    # Channels that differ: a swapped channel order could not pass.
    red = np.zeros((30, 50, 3), np.uint8)
    red[..., 0], red[..., 2] = 220, 20
    out.append(Image.fromarray(red))
    return out


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_lean_preprocessing_equals_the_hf_processor_output(name, tmp_path):
    processor = VARIANTS[name]()
    lean = saved_lean(processor, tmp_path)
    assert lean.bgr == (name == "mobilevit_bgr" or name == "mobilevit_no_crop")
    step = one_level(lean)  # PIL's resize rounds a few pixels one 8-bit step off torchvision
    for img in _images():
        want = processor(images=[img], return_tensors="np")["pixel_values"][0]
        got = lean(img)
        assert got.shape == want.shape and got.dtype == np.float32, (name, img.size)
        diff = np.abs(got - want) / step
        assert diff.max() <= 2.01 and diff.mean() < 0.25, (name, img.size, diff.max())


def test_an_old_export_without_a_processor_file_keeps_the_metadata_steps(tmp_path):
    """Export folders from before preprocessor_config.json was saved beside the model."""
    meta = {"image_size": [24, 40], "image_mean": [0.5] * 3, "image_std": [0.25] * 3}
    lean = export_preprocess(tmp_path, meta)
    img = Image.fromarray(np.full((10, 10, 3), 255, np.uint8))
    x = lean(img)
    assert x.shape == (3, 24, 40) and not lean.bgr and lean.resample == Image.Resampling.BILINEAR
    np.testing.assert_allclose(x, (1.0 - 0.5) / 0.25, rtol=1e-6)


def test_export_metadata_spells_out_the_preprocessing():
    """metadata.json alone tells a reader without vitft the channel order, filter and crop."""
    from vitft.data.transforms import processor_facts
    from vitft.deploy.metadata import build_metadata

    def meta(name: str) -> dict:
        facts = processor_facts(VARIANTS[name]())
        kinds = {"fmt": "onnx", "precision": "fp32", "runtime": "onnxruntime"}
        return build_metadata(**kinds, file="model.onnx", labels=["a"], facts=facts, model_dir=None)

    bgr = meta("mobilevit_bgr")
    assert bgr["preprocessing"]["channel_order"] == "BGR"
    assert bgr["preprocessing"]["center_crop"] == {"height": 32, "width": 32}
    assert bgr["input_layout"].startswith("NCHW float32, BGR, resized (bicubic), center-cropped")
    assert "mean" not in bgr["input_layout"]  # MobileViT does not normalise
    vit = meta("vit_nearest_imagenet")
    assert vit["preprocessing"]["resample"] == "nearest"
    assert vit["input_layout"] == (
        "NCHW float32, RGB, resized (nearest), then (x * rescale_factor - mean) / std"
    )
