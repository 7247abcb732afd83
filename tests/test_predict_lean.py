"""A predict on an ONNX Runtime export runs on PIL + numpy + ONNX Runtime alone: its preprocessing
(read from the export's own files) matches the transformers processors of vitft's backbones, the
command never imports torch, torchvision or transformers, and its answers (labels, scores, unknown
flag, defective verdict, thresholds) are those of the torch-preprocessed path (budget ~60 s: two
tiny ONNX exports)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from omegaconf import OmegaConf
from PIL import Image

from tests.conftest import CLASSES, ROOT, TINY_VIT_CONFIG
from tests.test_export import export_cfg
from vitft.apps.export import export
from vitft.core.errors import VitftError
from vitft.data.transforms import ImageTransform
from vitft.deploy.ort_backend import ExportScorer
from vitft.deploy.predictor import Predictor
from vitft.deploy.preprocess import PROCESSOR_FILE, ExportPreprocess, export_preprocess
from vitft.modelio.hf import save_hf
from vitft.modelio.ood import save_ood
from vitft.modelio.operating_point import save_operating_point
from vitft.models.classifier import build_model
from vitft.models.ood import OODScorer
from vitft.models.operating_point import OperatingPoint

# The processors of conf/model/* (built-from-config models get ViT's), at test sizes.
PROCESSORS = {
    "vit": lambda: transformers.ViTImageProcessor(
        size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ),
    "mobilevit": lambda: transformers.MobileViTImageProcessor(
        size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}
    ),
    "deit": lambda: transformers.DeiTImageProcessor(
        size={"height": 40, "width": 40}, crop_size={"height": 32, "width": 32}
    ),
    "dinov2": lambda: transformers.BitImageProcessor(
        size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}
    ),
    "convnext": lambda: transformers.ConvNextImageProcessor(size={"shortest_edge": 32}),
    "convnext_warp": lambda: transformers.ConvNextImageProcessor(size={"shortest_edge": 384}),
}
MOBILEVIT_YAML = OmegaConf.load(ROOT / "conf/model/mobilevit_tiny.yaml")
MOBILEVIT_CONFIG = OmegaConf.to_container(MOBILEVIT_YAML.config)


def images() -> list[Image.Image]:
    """Shipped sample photos at several sizes and aspect ratios (landscape, portrait, smaller
    than the model's input), smooth gradients, one grey image (as load_image gives it: RGB)."""
    photos = [Image.open(p).convert("RGB") for p in sorted(ROOT.glob("data/*/test/*/*"))[::40]]
    out = []
    for i, (w, h) in enumerate([(96, 96), (64, 48), (37, 90), (20, 17), (300, 200), (61, 59)]):
        out.append(photos[i % len(photos)].resize((w, h), Image.Resampling.LANCZOS))
        ramp = np.linspace(0, 255, h * w * 3).reshape(h, w, 3).astype(np.uint8)
        out.append(Image.fromarray(ramp))
    out.append(photos[0].convert("L").convert("RGB"))
    return out


def one_level(pre: ExportPreprocess) -> float:
    """One 8-bit intensity step in ``pre``'s output units: PIL's and torchvision's resize round
    some pixels of a photo differently by one step (two, rarely, upscaling a tiny image 20x)."""
    step = pre.rescale_factor if pre.do_rescale else 1.0
    return step / (min(pre.image_std) if pre.do_normalize else 1.0) + 1e-5


def saved_lean(processor, folder: Path) -> ExportPreprocess:
    """The lean preprocessing an export folder holding ``processor``'s saved config gets."""
    processor.save_pretrained(folder)
    lean = export_preprocess(folder, {})
    assert isinstance(lean, ExportPreprocess)
    return lean


@pytest.mark.parametrize("name", sorted(PROCESSORS))
def test_lean_preprocessing_matches_the_transformers_processor(name, tmp_path):
    processor = PROCESSORS[name]()
    lean = saved_lean(processor, tmp_path)
    reference = ImageTransform(processor, None)
    for img in images():
        want, got = reference(img).numpy(), lean(img)
        assert got.shape == want.shape and got.dtype == np.float32
        diff = np.abs(got - want) / one_level(lean)
        assert diff.max() <= 2 and diff.mean() < 0.25, (img.size, diff.max(), diff.mean())
    # Pixel noise is the worst case: bicubic rings past 0..255, and PIL clips between its two
    # passes where torchvision does not, so a few pixels differ by more; on average still < 1.
    noise = np.random.default_rng(0).integers(0, 256, (90, 37, 3), dtype=np.uint8)
    img = Image.fromarray(noise)
    assert np.abs(lean(img) - reference(img).numpy()).mean() < one_level(lean)


def test_metadata_alone_is_resize_then_normalise(tmp_path):
    """An export folder without preprocessor_config.json: metadata.json's input_layout."""
    meta = {"image_size": [32, 32], "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    lean = export_preprocess(tmp_path, meta)
    reference = ImageTransform(PROCESSORS["vit"](), None)  # bilinear, as PIL's default here
    for img in images():
        assert np.abs(lean(img) - reference(img).numpy()).max() <= one_level(lean)


def _model_dir(root: Path, config: dict | None, processor=None) -> Path:
    torch.manual_seed(0)
    model_cfg = {"config": config} if config else {"config": TINY_VIT_CONFIG}
    model, default = build_model(model_cfg, {"name": "linear"}, sorted(CLASSES))
    with torch.no_grad():
        model.head.fc.weight.mul_(20)  # spread the probabilities: verdicts on both sides
    return save_hf(model, processor or default, root / "model")


def _between(values: list[float]) -> float:
    """A threshold halfway between the two middle values: half on each side, none near it."""
    v = sorted(values)
    return (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


@pytest.fixture(scope="module")
def vit_export(tmp_path_factory, tiny_data) -> Path:
    """A tiny ViT export whose graph computes the OOD score, with an operating point."""
    model_dir = _model_dir(tmp_path_factory.mktemp("lean_vit"), None)
    torch_model = Predictor.from_path(model_dir, lean=False)
    feats, names, _ = torch_model.features_files(tiny_data / "train", views="none")
    labels = torch.tensor([sorted(CLASSES).index(Path(n).parent.name) for n in names])
    scorer = OODScorer.fit("mahalanobis", feats, labels)
    test = sorted((tiny_data / "test").rglob("*.png"))
    scores = scorer.score(torch_model.features(_pixels(torch_model, test), "none"))
    scorer.threshold = _between(scores.tolist())
    save_ood(scorer, model_dir)
    p_red = [p.probs["red"] for p in torch_model.predict(test)]
    save_operating_point(OperatingPoint(["red"], _between([1 - p for p in p_red])), model_dir)
    cfg = export_cfg(model_dir, tiny_data, "formats=[onnx]")
    export(cfg)
    return Path(cfg.output_dir) / "onnx"


def _pixels(predictor: Predictor, paths: list[Path]) -> torch.Tensor:
    from vitft.data.images import load_image

    return torch.stack([predictor.transform(load_image(p)) for p in paths])


@pytest.fixture(scope="module")
def mobilevit_export(tmp_path_factory, tiny_data) -> Path:
    """A tiny MobileViT export with MobileViT's processor: shortest edge, crop, BGR, no mean."""
    processor = transformers.MobileViTImageProcessor(
        size={"shortest_edge": 72}, crop_size={"height": 64, "width": 64}
    )
    model_dir = _model_dir(tmp_path_factory.mktemp("lean_mvit"), MOBILEVIT_CONFIG, processor)
    cfg = export_cfg(model_dir, tiny_data, "formats=[onnx]")
    export(cfg)
    return Path(cfg.output_dir) / "onnx"


def test_an_onnx_predict_imports_neither_torch_nor_transformers(vit_export, tiny_data, tmp_path):
    """Nor scikit-learn, scipy or pandas (multi-label splits' iterstrat), with a folder as input."""
    image = sorted((tiny_data / "test").rglob("*.png"))[0]
    folder = tmp_path / "inputs"
    folder.mkdir()
    (folder / image.name).write_bytes(image.read_bytes())
    out = tmp_path / "p.csv"
    argv = [sys.executable, "-X", "importtime", "-m", "vitft", "predict"]
    args = [f"model_dir={vit_export}", f"inputs={folder}", f"output={out}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [*argv, *args, f"hydra.run.dir={tmp_path / 'hydra'}"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = {
        line.rsplit("|", 1)[1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "onnxruntime" in loaded and "vitft.deploy.predictor" in loaded
    assert "vitft.data.folder" in loaded  # the folder was listed by the same code as before
    heavy = {"torch", "torchvision", "transformers", "sklearn", "scipy", "pandas", "iterstrat"}
    loaded_heavy = {m for m in loaded if m.split(".")[0] in heavy}
    assert not loaded_heavy, sorted(loaded_heavy)[:20]
    rows = list(csv.DictReader(out.open()))
    assert [r["path"] for r in rows] == [str(folder / image.name)]
    assert {"ood_score", "unknown", "p_defective", "defective"} <= set(rows[0])


def _same(lean: list, ref: list, tol: float) -> None:
    assert len(lean) == len(ref)
    for a, b in zip(lean, ref, strict=True):
        assert (a.path, a.label, a.predicted, a.labels) == (b.path, b.label, b.predicted, b.labels)
        assert (a.unknown, a.defective) == (b.unknown, b.defective)
        assert a.confidence == pytest.approx(b.confidence, abs=tol)
        assert a.probs == pytest.approx(b.probs, abs=tol)
        for x, y in [(a.ood_score, b.ood_score), (a.p_defective, b.p_defective)]:
            assert (x is None) == (y is None)
            if x is not None:
                assert x == pytest.approx(y, rel=1e-3, abs=tol)


@pytest.mark.parametrize("tta", [False, True])
def test_lean_predictions_equal_the_torch_preprocessed_path(vit_export, tiny_data, tta):
    lean = Predictor.from_path(vit_export, lean=True, tta=tta)
    ref = Predictor.from_path(vit_export, lean=False, tta=tta)
    assert isinstance(lean.ood, ExportScorer) and lean.ood.threshold == ref.ood.threshold
    fields = ("ok_classes", "threshold", "max_escape", "chosen_on")
    point, ref_point = lean.operating_point, ref.operating_point
    assert [getattr(point, f) for f in fields] == [getattr(ref_point, f) for f in fields]
    assert lean.thresholds.tolist() == ref.thresholds.tolist()
    got = lean.predict_files(tiny_data / "test")
    want = ref.predict_files(tiny_data / "test")
    _same(got.predictions, want.predictions, 1e-4)
    assert {p.unknown for p in got.predictions} == {True, False}  # both sides of each threshold
    assert {p.defective for p in got.predictions} == {True, False}
    packed = lean.packed(np.stack([lean.transform(Image.new("RGB", (9, 9)))] * 2))
    assert isinstance(packed, np.ndarray) and packed.shape == (2, len(CLASSES) + 1)


def test_lean_mobilevit_predictions_equal_the_torch_preprocessed_path(mobilevit_export, tiny_data):
    config = json.loads((mobilevit_export / PROCESSOR_FILE).read_text())
    assert config["image_processor_type"] == "MobileViTImageProcessor"
    lean = Predictor.from_path(mobilevit_export, lean=True, class_thresholds={"red": 0.9})
    ref = Predictor.from_path(mobilevit_export, lean=False, class_thresholds={"red": 0.9})
    assert isinstance(lean.transform, ExportPreprocess) and lean.transform.bgr
    images = sorted((tiny_data / "test").rglob("*.png"))
    # Upscaled 32 -> 72 (bicubic): a few pixels one 8-bit step apart move probabilities ~2e-4.
    _same(lean.predict(images), ref.predict(images), 1e-3)


def test_auto_picks_lean_without_torch_and_torch_tensors_with_it(vit_export):
    """lean=None: with torch loaded (this process), the torch-tensor API serve and eval use."""
    assert not isinstance(Predictor.from_path(vit_export).transform, ExportPreprocess)
    with pytest.raises(VitftError, match="runs ONNX Runtime exports"):
        Predictor.from_path(ROOT / "conf", lean=True)
