"""Odd but valid images train: every file of a generated corpus (tests/odd_images.py) either goes
through training (with augmentation), the feature cache, eval and predict, or is skipped with a
named reason; nothing crashes. Property-based tests (hypothesis) draw modes, formats, sizes,
aspect ratios and EXIF orientations over load -> augmentation -> processor -> model."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import open_dict
from PIL import Image
from transformers import ViTImageProcessor

from tests.conftest import CONF, TINY_VIT_CONFIG, make_cfg, make_image
from tests.odd_images import corpus, storable, write_image
from vitft.apps.evaluate import evaluate
from vitft.apps.train import train
from vitft.data.doctor import BAD_KINDS, inspect_file
from vitft.data.images import load_image
from vitft.data.transforms import AUGMENT_PRESETS, ImageTransform
from vitft.deploy.predictor import Predictor
from vitft.models.classifier import build_model
from vitft.training.datamodule import ImageDataset

CLASSES = ["a", "b"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model({"config": TINY_VIT_CONFIG}, {"name": "linear"}, CLASSES)


def _through_the_model(model, processor, path: Path, preset: str, seed: int) -> None:
    """What training, eval, predict and the cache do with one file, or a named skip."""
    check = inspect_file(path)
    if check.problem:  # what the data doctor skips before training, with its reason
        assert check.problem in BAD_KINDS and check.detail
        return
    img = load_image(path)
    assert img.mode == "RGB" and min(img.size) >= 1
    train_tf = ImageTransform(processor, preset)
    item, _ = ImageDataset([(path, 0)], train_tf.prepare)[(0, seed)]
    x = train_tf.pixels([item])
    assert x.shape == (1, 3, 32, 32) and torch.isfinite(x).all()
    eval_x = ImageTransform(processor, None)(img)[None]
    assert eval_x.shape == (1, 3, 32, 32) and torch.isfinite(eval_x).all()
    model.train()
    assert torch.isfinite(model(torch.cat([x, eval_x]))).all()
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model.features(eval_x)).all()  # what the feature cache stores


sides = st.one_of(st.integers(1, 40), st.sampled_from([1, 2, 3, 5, 1500]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mode_format=st.sampled_from(storable()),
    width=sides,
    height=sides,
    orientation=st.integers(1, 8),
    preset=st.sampled_from(sorted(AUGMENT_PRESETS)),
    seed=st.integers(0, 2**62),
)
def test_any_odd_image_loads_augments_and_runs_through_the_model(
    tiny, mode_format, width, height, orientation, preset, seed
):
    model, processor = tiny
    mode, fmt = mode_format
    if fmt == "gif" or mode in ("1", "P"):
        width, height = min(width, 700), min(height, 700)  # keeps GIF/palette encoding quick
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"odd image ü.{fmt.upper() if seed % 2 else fmt}"
        write_image(path, mode, fmt, width, height, orientation, seed % 1000)
        _through_the_model(model, processor, path, preset, seed)


@pytest.fixture(scope="module")
def odd_data(tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    """The corpus, and a dataset with it as train and test (files alternating between 2 classes;
    val: a few ordinary images)."""
    root = tmp_path_factory.mktemp("odd")
    made = corpus(root / "corpus")
    files = sorted(p for p in (root / "corpus").iterdir())
    for split in ("train", "test"):
        for i, f in enumerate(files):
            d = root / "data" / split / CLASSES[i % 2]
            d.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, d / f.name)
    rng = np.random.default_rng(0)
    for label, cls in enumerate(CLASSES):
        (root / "data" / "val" / cls).mkdir(parents=True)
        for i in range(2):
            make_image(label, rng).save(root / "data" / "val" / cls / f"{i}.png")
    return root / "corpus", root / "data", made


def test_corpus_has_every_kind_of_odd_file(odd_data):
    corpus_dir, _, made = odd_data
    names = {p.name for p in corpus_dir.iterdir()}
    assert len(names) >= 80
    for needed in (
        "size_1x1.png",
        "size_1x1.jpg",
        "size_1x3000.png",
        "size_10000x2.png",
        "multiframe.gif",
        "multiframe.tiff",
        "mode_I_16.png",
        "mode_I_16B.tiff",
        "rgb_16bit.png",
        "rgb_16bit.tiff",
        "mode_CMYK.jpg",
        "cmyk_progressive.jpg",
        "progressive.jpg",
        "lossless.webp",
        "mode_RGB.bmp",
        "upper_case.JPG",
        "name with spaces.png",
        "näme_ünïcödé_画像.jpg",
        "size_4000x3000.jpg",
        "size_20000x10000_1bit.png",
    ):
        assert needed in names, needed
    assert {f"exif_orientation_{o}.jpg" for o in range(1, 9)} <= names
    modes = {n.split(".")[0] for n in names if n.startswith("mode_")}
    assert len(modes) >= 14  # the PIL modes some format stores (the others: "(not stored)")


def _eval_cfg(out: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("eval", overrides=["data.num_workers=0", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    return cfg


@pytest.mark.slow
def test_odd_corpus_trains_caches_evaluates_and_predicts(odd_data, tmp_path):
    corpus_dir, data, made = odd_data
    common = ["task.augment=industrial", "model.image_size=32", "callbacks.progress_bar=null"]
    run = tmp_path / "run"
    metrics, _ = train(make_cfg(run, data, *common, "data.num_workers=2"))
    assert np.isfinite(metrics["test/loss"])
    skipped = {
        Path(b["path"]).name: b for b in json.loads((run / "bad_files.json").read_text())["files"]
    }
    # Feature cache: the backbone's features of every image and augmented view.
    cached, _ = train(
        make_cfg(
            tmp_path / "cached",
            data,
            *common,
            "freeze=backbone",
            "cache.enabled=true",
            "cache.views=2",
        )
    )
    assert np.isfinite(cached["val/loss"])
    ev = evaluate(
        _eval_cfg(
            tmp_path / "eval",
            "task=folder",
            f"task.data_dir={data}",
            f"model_dir={run}/model",
            "split=test",
        )
    )
    eval_bad = {Path(b["path"]).name: b["reason"] for b in ev["bad_files"]}
    results = Predictor.from_path(run / "model").predict_files(corpus_dir)
    predicted = {Path(p.path).name for p in results.predictions}
    pred_bad = {Path(b.path).name: b.reason for b in results.bad_files}

    table = []
    for name in sorted(made):
        if name.startswith("(not stored)"):
            table.append((name, made[name], "-", "-", "-"))
            continue
        train_what = f"skipped: {skipped[name]['kind']}" if name in skipped else "trained"
        eval_what = f"skipped: {eval_bad[name]}" if name in eval_bad else "evaluated"
        if name in skipped:  # eval checks the model on the run's split manifest, written without it
            eval_what = "not in the run's split"
        pred_what = "predicted" if name in predicted else f"skipped: {pred_bad[name]}"
        table.append((name, made[name], train_what, eval_what, pred_what))
        assert (name in predicted) != (name in pred_bad), name  # one or the other, never lost
    print("\nfile | what | train (+cache) | eval | predict")
    for row in table:
        print(" | ".join(row))
    # The one file that can't be used is the decompression bomb, skipped everywhere by name.
    assert set(skipped) == set(pred_bad) == {"size_20000x10000_1bit.png"}
    assert eval_bad == {} and ev["images"] == len(_split_files(run, "test"))
    assert skipped["size_20000x10000_1bit.png"]["kind"] == "too_large"


def _split_files(run: Path, split: str) -> list[str]:
    rows = (run / "split_manifest.csv").read_text().splitlines()[1:]
    return [r for r in rows if r.startswith(f"{split},")]


@pytest.mark.parametrize("preset", sorted(AUGMENT_PRESETS))
def test_every_preset_keeps_tiny_images_rgb(preset):
    """albumentations squeezes or reshapes images of a few pixels (ToGray, Affine); those reach
    the processor as (H, W, 3) all the same."""
    tf = ImageTransform(ViTImageProcessor(size={"height": 32, "width": 32}), preset)
    for size in [(1, 1), (1, 5), (5, 1), (3, 2), (8, 8), (9, 8)]:
        for seed in range(64):
            out = np.asarray(tf.prepare(Image.new("RGB", size, (200, 10, 10)), seed=seed))
            assert out.ndim == 3 and out.shape[2] == 3, (size, seed, out.shape)
            assert tf.pixels([out]).shape == (1, 3, 32, 32)
