"""Label manifests (data=manifest): reading, splits, row errors and the data doctor's checks."""

import json

import numpy as np
import pytest

from tests.conftest import CLASSES, make_image, make_multilabel_manifest
from vitft.core.errors import VitftError
from vitft.data.check import check_manifest
from vitft.data.manifest import read_manifest, scan_manifest
from vitft.data.sources import scan_data


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """A single-label CSV: 10 images per class, relative paths (one absolute)."""
    root = tmp_path_factory.mktemp("manifest")
    rng = np.random.default_rng(0)
    (root / "img").mkdir()
    rows = ["path,label,extra"]
    for label, cls in enumerate(CLASSES):
        for i in range(10):
            make_image(label, rng).save(root / "img" / f"{cls}_{i}.png")
            path = root / "img" / f"{cls}_{i}.png" if i == 0 else f"img/{cls}_{i}.png"
            rows.append(f"{path},{cls},ignored")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_single_label_csv_is_carved_stratified_and_seeded(single):
    data = {"source": "manifest", "data_dir": str(single / "labels.csv"), "split_seed": 3}
    a, b = scan_data(data), scan_data(data)
    assert not a.multilabel and a.classes == sorted(CLASSES)
    assert a.train == b.train and a.val == b.val  # same seed, same split
    assert sum(len(a.split(s)) for s in ("train", "val", "test")) == 30
    assert all(n >= 1 for s in ("val", "test") for n in a.counts(s).values())
    assert all(p.is_file() for p, _ in a.train + a.val + a.test)
    assert a.origin["train"] == "manifest" and "split from train" in a.origin["val"]


def test_split_column_and_task_class_order(tmp_path):
    file = make_multilabel_manifest(tmp_path, n=8)
    lines = file.read_text().splitlines()
    splits = ["train"] * 4 + ["validation"] * 2 + ["test"] * 2
    rows = [lines[0] + ",split"] + [f"{r},{s}" for r, s in zip(lines[1:], splits, strict=True)]
    file.write_text("\n".join(rows) + "\n")
    s = scan_manifest(file, classes=["stain", "scratch"])
    assert s.multilabel and s.classes == ["stain", "scratch"]
    assert [len(s.train), len(s.val), len(s.test)] == [4, 2, 2]
    assert s.origin == {"train": "split column", "val": "split column", "test": "split column"}
    # img_003 has both classes, img_001 only scratch (index 1 in this class order)
    labels = dict((p.name, y) for p, y in s.train)
    assert labels["img_003.png"] == (1, 1) and labels["img_001.png"] == (0, 1)


def test_multilabel_jsonl_is_inferred_and_split_iteratively(tmp_path):
    make_multilabel_manifest(tmp_path, n=60)
    with (tmp_path / "labels.jsonl").open("w") as f:
        for i in range(60):
            present = [c for k, c in enumerate(("scratch", "stain")) if (i >> k) & 1]
            f.write(json.dumps({"path": f"images/img_{i:03d}.png", "label": present}) + "\n")
    s = scan_manifest(tmp_path / "labels.jsonl", val_fraction=0.2, test_fraction=0.2)
    assert s.multilabel and s.classes == ["scratch", "stain"]
    assert (len(s.train), len(s.val), len(s.test)) == (36, 12, 12)
    for part in ("val", "test"):  # iterative stratification: each class ~its share (15 of 30)
        assert all(5 <= n <= 7 for n in s.counts(part).values())
        assert sum(1 for _, y in s.split(part) if not any(y)) >= 1  # images without a label


def test_row_errors_name_the_line_and_skip_lists_them(tmp_path):
    file = make_multilabel_manifest(tmp_path, n=12)
    lines = file.read_text().splitlines()
    lines[6] = "images/gone.png,scratch"  # line 7 of the file
    lines[7] = "images/img_006.png,stian"
    file.write_text("\n".join(lines) + "\n")
    with pytest.raises(VitftError) as err:
        scan_manifest(file, classes=["scratch", "stain"], on_bad_file="fail")
    msg = str(err.value)
    assert "line 7: images/gone.png: no such file" in msg
    assert "line 8: images/img_006.png: label 'stian'; did you mean 'stain'?" in msg
    out = tmp_path / "run"
    s = scan_manifest(file, classes=["scratch", "stain"], on_bad_file="skip", output_dir=out)
    assert len(s.train) + len(s.val) + len(s.test) == 10
    skipped = json.loads((out / "skipped_rows.json").read_text())["rows"]
    assert [(r["line"], r["kind"]) for r in skipped] == [(7, "missing_file"), (8, "unknown_label")]


def test_conflicts_duplicates_and_empty_labels(tmp_path, single):
    rows = ["path,label", "img/red_1.png,red", "img/red_1.png,red", "img/red_2.png,red",
            "img/red_2.png,green", "img/red_3.png,", "img/red_4.png,red;green"]  # fmt: skip
    (single / "bad.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(VitftError, match="line 7 has several labels"):
        read_manifest(single / "bad.csv", multilabel=False)
    (single / "bad.csv").write_text("\n".join(rows[:-1]) + "\n")
    m = read_manifest(single / "bad.csv")
    kinds = [(p["line"], p["kind"]) for p in m.problems]
    assert kinds == [(4, "conflicting_labels"), (5, "conflicting_labels"), (6, "empty_label")]
    assert [(w["line"], w["kind"]) for w in m.warnings] == [(3, "duplicate_row")]
    assert [r.path.name for r in m.rows] == ["red_1.png"]  # the duplicate is used once


def test_wrong_source_and_columns_are_clear(tmp_path, single):
    with pytest.raises(VitftError, match="add data=manifest"):
        scan_data({"data_dir": str(single / "labels.csv")})
    (tmp_path / "x.csv").write_text("file,class\na.png,red\n")
    with pytest.raises(VitftError, match="needs `path` and `label`"):
        read_manifest(tmp_path / "x.csv")
    with pytest.raises(VitftError, match="class folders hold one class"):
        scan_data({"data_dir": str(single)}, multilabel=True)


def test_doctor_checks_a_manifest(tmp_path):
    file = make_multilabel_manifest(tmp_path, n=24)
    (tmp_path / "images" / "img_001.png").write_bytes(b"")  # zero bytes
    extra = "images/img_002.png,scratch\nimages/nope.png,\nimages/img_004.png,stian\n"
    file.write_text(file.read_text() + extra)
    report = check_manifest(file, decode=False)
    bad = {(b["kind"], b["path"].split("/")[-1]) for b in report.bad}
    assert ("zero_byte", "img_001.png") in bad
    assert ("missing_file", "line 27") in bad
    assert ("conflicting_labels", "line 4") in bad and ("conflicting_labels", "line 26") in bad
    warnings = {w["kind"]: w["detail"] for w in report.warnings}
    assert "did you mean 'stain'" in warnings["similar_labels"]  # inferred classes
    assert report.classes == ["scratch", "stain"]  # 'stian' is only on a bad row
    assert not report.can_train("fail") and report.can_train("skip")


def test_cvat_image_tags_are_labels(tmp_path, single):
    """CVAT for images 1.1: one tag per image (several: multi-label); untagged images listed."""
    images = [f"{c}_{i}.png" for c in CLASSES for i in range(1, 10)]
    body = "".join(
        f'<image id="{n}" name="img/{name}" width="32" height="32">'
        f'<tag label="{name.split("_")[0]}" source="manual"/></image>'
        for n, name in enumerate(images)
    )
    body += '<image id="99" name="img/red_0.png" width="32" height="32"/>'
    xml = f"<annotations><version>1.1</version><meta/>{body}</annotations>"
    (tmp_path / "annotations.xml").write_text(xml)
    data = {"source": "manifest", "data_dir": str(tmp_path / "annotations.xml")}
    with pytest.raises(VitftError, match="no such file"):  # names are relative to image_root
        scan_data({**data, "on_bad_file": "fail"})
    splits = scan_data({**data, "image_root": str(single)}, output_dir=tmp_path / "run")
    assert splits.classes == sorted(CLASSES) and not splits.multilabel
    named = {
        p.name: splits.classes[y] for s in ("train", "val", "test") for p, y in splits.split(s)
    }
    assert len(named) == 27 and all(n.startswith(c) for n, c in named.items())
    left = json.loads((tmp_path / "run" / "skipped_rows.json").read_text())["left_out"]
    assert [(r["kind"], r["line"]) for r in left] == [("unlabelled_task", 28)]
    multi = xml.replace(
        'source="manual"/></image><image id="1"',
        'source="manual"/><tag label="x"/></image><image id="1"',
    )
    (tmp_path / "multi.xml").write_text(multi)
    m = read_manifest(tmp_path / "multi.xml", image_root=single)
    assert m.multilabel and m.rows[0].labels == ("red", "x")
