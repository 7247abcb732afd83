"""Label Studio exports read as manifests (data=manifest): JSON and JSON-MIN, single and multiple
choices, skipped and unannotated tasks listed, and the policy for annotators who disagree."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import make_image
from vitft.core.errors import VitftError
from vitft.data.check import check_manifest
from vitft.data.labelstudio import read_export
from vitft.data.manifest import scan_manifest


def _ann(choices, created, cancelled=False):
    result = [
        {
            "from_name": "choice",
            "to_name": "image",
            "type": "choices",
            "value": {"choices": choices},
        }
    ]
    return {
        "result": [] if cancelled else result,
        "was_cancelled": cancelled,
        "created_at": created,
    }


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("ls_images")
    rng = np.random.default_rng(0)
    for i in range(12):
        make_image(i % 3, rng).save(root / f"im{i}.png")
    return root


def _full_export(images, tmp_path):
    """Tasks 0-8 answered by one annotator; 9 skipped, 10 never annotated, 11 two vs one."""
    tasks = []
    for i in range(12):
        url = f"/data/local-files/?d=im{i}.png"
        anns = [_ann([("a", "b", "c")[i % 3]], f"2025-01-01T00:00:{i:02d}")]
        if i == 9:
            anns = [_ann([], "2025-01-01", cancelled=True)]
        elif i == 10:
            anns = []
        elif i == 11:
            anns = [_ann(["b"], "2025-01-02"), _ann(["c"], "2025-01-03"), _ann(["c"], "2025-01-04")]
        tasks.append({"id": 100 + i, "data": {"image": url}, "annotations": anns})
    out = tmp_path / "export.json"
    out.write_text(json.dumps(tasks))
    return out


def test_json_export_lists_skipped_and_unannotated_tasks(images, tmp_path):
    export = _full_export(images, tmp_path)
    splits = scan_manifest(export, image_root=images, output_dir=tmp_path / "run")
    assert splits.classes == ["a", "b", "c"] and not splits.multilabel
    used = {p.name: splits.classes[y] for s in ("train", "val", "test") for p, y in splits.split(s)}
    assert len(used) == 10 and used["im11.png"] == "c"  # majority: two of three said c
    assert used["im4.png"] == "b" and "im9.png" not in used and "im10.png" not in used
    left = json.loads((tmp_path / "run" / "skipped_rows.json").read_text())["left_out"]
    assert [(r["kind"], r["detail"]) for r in left] == [
        ("skipped_task", "task 109: skipped by the annotator"),
        ("unlabelled_task", "task 110: not annotated"),
    ]
    report = check_manifest(export, image_root=images)
    assert {w["kind"] for w in report.warnings} >= {"skipped_task", "unlabelled_task"}


@pytest.mark.parametrize(("policy", "label"), [("majority", "c"), ("first", "b"), ("drop", None)])
def test_annotators_who_disagree_follow_the_policy(images, tmp_path, policy, label):
    records, left_out = read_export(_full_export(images, tmp_path), policy, images)
    got = {r["path"].rsplit("/", 1)[1]: r["label"] for _, r in records}
    assert got.get("im11.png") == label
    if label is None:
        assert left_out[-1]["kind"] == "annotators_disagree"
        assert "['c'] x2, ['b'] x1" in left_out[-1]["detail"]


def test_a_tie_is_left_out_and_bad_policies_are_named(images, tmp_path):
    tasks = [{"id": 1, "data": {"path": str(images / "im0.png")}, "annotations": [
        _ann(["a"], "1"), _ann(["b"], "2")]}]  # fmt: skip
    (tmp_path / "tie.json").write_text(json.dumps(tasks))
    records, left_out = read_export(tmp_path / "tie.json")
    assert not records and "no majority" in left_out[0]["detail"]
    with pytest.raises(VitftError, match="data.annotators='vote' is unknown"):
        read_export(tmp_path / "tie.json", "vote")
    (tmp_path / "bad.json").write_text('{"not": "a list"}')
    with pytest.raises(VitftError, match="expected a Label Studio export"):
        read_export(tmp_path / "bad.json")


def test_json_min_single_and_multiple_choices(images, tmp_path):
    single = [
        {"image": f"/data/local-files/?d=im{i}.png", "id": i, "choice": "ab"[i % 2],
         "annotator": 1, "annotation_id": i, "created_at": "x", "updated_at": "x", "lead_time": 1}
        for i in range(8)
    ]  # fmt: skip
    single.append({"image": "/data/local-files/?d=im8.png", "id": 8, "annotation_id": None})
    (tmp_path / "min.json").write_text(json.dumps(single))
    records, left_out = read_export(tmp_path / "min.json", image_root=images)
    assert [r["label"] for _, r in records] == ["a", "b"] * 4
    assert [(x["kind"], x["detail"]) for x in left_out] == [
        ("unlabelled_task", "task 8: not annotated")
    ]
    multi = [
        {"image": f"/data/local-files/?d=im{i}.png", "id": i, "defects": {"choices": ["a", "b"]}
         if i % 2 else "a", "annotator": 1, "annotation_id": i}
        for i in range(6)
    ]  # fmt: skip
    (tmp_path / "multi.json").write_text(json.dumps(multi))
    splits = scan_manifest(tmp_path / "multi.json", image_root=images)
    assert splits.multilabel and splits.classes == ["a", "b"]
    labels = {p.name: y for s in ("train", "val", "test") for p, y in splits.split(s)}
    assert labels["im1.png"] == (1, 1) and labels["im0.png"] == (1, 0)


def test_urls_that_are_not_local_files_are_named(tmp_path):
    tasks = [
        {"id": 1, "data": {"image": "https://example.com/a.png"}, "annotations": [_ann(["a"], "1")]}
    ]
    (tmp_path / "web.json").write_text(json.dumps(tasks))
    report = check_manifest(tmp_path / "web.json")
    assert "not a local file: https://example.com/a.png" in " ".join(
        b["detail"] for b in report.bad
    ) + " ".join(report.errors)
