import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import CLASSES, make_dataset
from vitft.core.errors import VitftError
from vitft.data.folder import scan_dataset, stratified_split
from vitft.data.images import load_image


def test_scan_reads_all_splits(tiny_data):
    splits = scan_dataset(tiny_data)
    assert splits.classes == sorted(CLASSES)
    assert {s: len(splits.split(s)) for s in ("train", "val", "test")} == {
        "train": 24,
        "val": 9,
        "test": 9,
    }
    assert splits.origin == {"train": "folder", "val": "folder", "test": "folder"}


def test_given_classes_must_match_folders(tiny_data):
    with pytest.raises(VitftError, match="task.classes"):
        scan_dataset(tiny_data, classes=["red", "green", "yellow"])


def test_split_is_stratified_and_deterministic(tmp_path):
    root = make_dataset(tmp_path / "d", counts={"train": 20})
    a = scan_dataset(root, val_fraction=0.2, test_fraction=0.1, split_seed=7)
    b = scan_dataset(root, val_fraction=0.2, test_fraction=0.1, split_seed=7)
    c = scan_dataset(root, val_fraction=0.2, test_fraction=0.1, split_seed=8)
    assert a.val == b.val and a.test == b.test and a.train == b.train
    assert a.val != c.val
    # stratified: every class gets its share in every split
    assert set(a.counts("val").values()) == {4}
    assert set(a.counts("test").values()) == {2}
    assert set(a.counts("train").values()) == {14}
    # no overlap, nothing dropped
    paths = [p for s in ("train", "val", "test") for p, _ in a.split(s)]
    assert len(paths) == len(set(paths)) == 60
    assert a.origin["val"].startswith("split from train")


def test_stratified_split_keeps_tiny_classes():
    samples = [(f"a{i}", 0) for i in range(10)] + [("b0", 1), ("b1", 1)]
    rest, parts = stratified_split(samples, {"val": 0.2}, seed=0)
    assert sum(1 for _, y in parts["val"] if y == 1) == 1
    assert sum(1 for _, y in rest if y == 1) == 1


def test_class_mismatch_between_splits_is_reported(tmp_path):
    root = make_dataset(tmp_path / "d", counts={"train": 2, "val": 2})
    (root / "val" / "blue").rename(root / "val" / "purple")
    with pytest.raises(VitftError) as err:
        scan_dataset(root)
    msg = str(err.value)
    assert "val/ lacks ['blue']" in msg and "train/ lacks ['purple']" in msg


@pytest.mark.parametrize(
    "setup, match",
    [
        (lambda r: None, "does not exist"),
        (lambda r: (r / "val").mkdir(parents=True), "no train/ folder"),
        (lambda r: (r / "train").mkdir(parents=True), "no class folders"),
        (lambda r: (r / "train" / "empty").mkdir(parents=True), "has no images"),
    ],
)
def test_bad_layouts_fail_with_the_fix(tmp_path, setup, match):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(VitftError, match=match):
        scan_dataset(root)


def test_hidden_files_and_non_images_are_not_samples(tmp_path):
    root = make_dataset(tmp_path / "d", counts={"train": 3})
    (root / "train" / "red" / ".DS_Store").write_bytes(b"x")
    (root / "train" / "red" / "notes.txt").write_text("x")
    splits = scan_dataset(root)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 9
    assert [p.name for p in splits.ignored["train"]] == ["notes.txt"]


def test_image_modes_become_rgb(tmp_path):
    arr16 = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(arr16).save(tmp_path / "g16.png")
    Image.new("RGBA", (8, 8), (10, 20, 30, 128)).save(tmp_path / "rgba.png")
    Image.new("P", (8, 8), 3).save(tmp_path / "pal.png")
    Image.new("L", (8, 8), 77).save(tmp_path / "gray.jpg")
    for name in ("g16.png", "rgba.png", "pal.png", "gray.jpg"):
        img = load_image(tmp_path / name)
        assert img.mode == "RGB", name
    g16 = np.asarray(load_image(tmp_path / "g16.png"))
    assert g16.max() > 200 and g16.min() == 0  # rescaled from 16-bit, not clipped at 255
    assert tuple(np.asarray(load_image(tmp_path / "rgba.png"))[0, 0]) == (10, 20, 30)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 20))  # white on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW when displayed
    img.save(tmp_path / "rot.jpg", exif=exif)
    out = load_image(tmp_path / "rot.jpg")
    assert out.size == (20, 40)
    assert np.asarray(out)[2, 10].mean() > 200  # white band now at the top


def test_batched_processing_equals_per_image(tmp_path):
    """The loader's collate runs the processor once per batch: same pixels as one at a time."""
    import torch
    from transformers import ViTConfig

    from vitft.data.transforms import ImageTransform
    from vitft.models.backbone import default_image_processor

    rng = np.random.default_rng(0)
    images = [  # different sizes and aspect ratios in one batch
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        for h, w in ((32, 32), (40, 24), (64, 48))
    ]
    transform = ImageTransform(default_image_processor(ViTConfig(image_size=32)))
    x, y = transform.collate([(transform.prepare(img), i) for i, img in enumerate(images)])
    assert x.shape == (3, 3, 32, 32) and y.tolist() == [0, 1, 2]
    torch.testing.assert_close(x, torch.stack([transform(img) for img in images]), rtol=0, atol=0)


def test_broken_symlink_is_named_as_a_bad_file(tmp_path):
    from vitft.data.doctor import check_dataset, screen

    root = make_dataset(tmp_path / "d", counts={"train": 6, "val": 2, "test": 2})
    link = root / "train" / "red" / "gone.png"
    link.symlink_to(tmp_path / "moved_away.png")
    report = check_dataset(root)
    assert [(b["kind"], b["path"]) for b in report.bad] == [("broken_link", str(link))]
    assert "moved_away.png" in report.bad[0]["detail"]
    splits = scan_dataset(root)
    assert link in [p for p, _ in splits.train]
    kept = screen(splits, output_dir=tmp_path / "run")
    assert link not in [p for p, _ in kept.train]
    listed = json.loads((tmp_path / "run" / "bad_files.json").read_text())["files"]
    assert [(f["kind"], f["path"], f["class"]) for f in listed] == [
        ("broken_link", str(link), "red")
    ]
