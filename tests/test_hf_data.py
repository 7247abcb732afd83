"""HF datasets (data=hf): save_to_disk folders, image folders, label columns, hub errors."""

import io

import datasets
import numpy as np
import pytest
from omegaconf import OmegaConf, open_dict

from tests.conftest import CLASSES, TINY_VIT_CONFIG, make_cfg, make_dataset, make_image
from vitft.apps.train import train
from vitft.core.errors import VitftError
from vitft.data import hf
from vitft.data.sources import infer_source, scan_data


def _png(label: int, rng) -> bytes:
    buf = io.BytesIO()
    make_image(label, rng).save(buf, format="PNG")
    return buf.getvalue()


def save_dataset(root, multilabel: bool = False, n: int = 12):
    """A DatasetDict (train, validation) with embedded PNG bytes, saved with save_to_disk."""
    rng = np.random.default_rng(0)
    names = list(CLASSES)
    if multilabel:
        label_feature = datasets.List(datasets.ClassLabel(names=names))
        labels = [[k for k in range(3) if (i >> k) & 1] for i in range(n)]
    else:
        label_feature = datasets.ClassLabel(names=names)
        labels = [i % 3 for i in range(n)]
    features = datasets.Features({"img": datasets.Image(), "tags": label_feature})

    def part(idx):
        first = [labels[i][0] if multilabel and labels[i] else labels[i] for i in idx]
        rows = {"img": [{"bytes": _png(int(f or 0), rng), "path": None} for f in first]}
        rows["tags"] = [labels[i] for i in idx]
        return datasets.Dataset.from_dict(rows, features=features)

    dd = datasets.DatasetDict({"train": part(range(n)), "validation": part(range(n // 2))})
    dd.save_to_disk(str(root))
    return root


def _data(location, tmp_path, **kw):
    return {"source": "hf", "data_dir": str(location), "image_column": "img",
            "label_column": "tags", "cache_dir": str(tmp_path / "hf_cache"), **kw}  # fmt: skip


def test_saved_dataset_becomes_image_files(tmp_path):
    root = save_dataset(tmp_path / "ds")
    assert infer_source(root) == "hf"
    s = scan_data(_data(root, tmp_path))
    assert s.classes == list(CLASSES) and not s.multilabel
    assert len(s.train) + len(s.test) == 12 and len(s.val) == 6  # test carved from train
    assert s.origin["val"] == "HF split" and "split from train" in s.origin["test"]
    files = [p for p, _ in s.train + s.val + s.test]
    assert all(p.suffix == ".png" and p.is_file() for p in files)
    stamp = {p: p.stat().st_mtime_ns for p in files}
    again = scan_data(_data(root, tmp_path))  # the files are written once
    assert {p: p.stat().st_mtime_ns for p, _ in again.train + again.val + again.test} == stamp


def test_list_of_class_labels_is_multilabel(tmp_path):
    s = scan_data(_data(save_dataset(tmp_path / "ds", multilabel=True), tmp_path))
    assert s.multilabel and s.classes == list(CLASSES)
    labels = {y for _, y in s.train + s.val + s.test}
    assert (0, 0, 0) in labels and (1, 1, 0) in labels
    with pytest.raises(VitftError, match="task.multilabel=false"):
        scan_data(_data(tmp_path / "ds", tmp_path), multilabel=False)


def test_imagefolder_keeps_its_own_files(tmp_path):
    root = make_dataset(tmp_path / "folder", counts={"train": 4, "test": 2})
    s = scan_data(_data(root, tmp_path, image_column="image", label_column="label"))
    assert s.classes == sorted(CLASSES)
    assert all(root in p.parents for p, _ in s.train + s.test)  # no copies
    assert s.origin["test"] == "HF split"


def test_columns_classes_and_hub_errors_are_clear(tmp_path, monkeypatch):
    root = save_dataset(tmp_path / "ds")
    with pytest.raises(VitftError, match=r"no column \['image'\].*set data.image_column"):
        scan_data(_data(root, tmp_path, image_column="image"))
    with pytest.raises(VitftError, match="not in task.classes"):
        scan_data(_data(root, tmp_path, classes=["red", "green"]))

    def offline(*args, **kwargs):
        raise ConnectionError("hub unreachable")

    monkeypatch.setattr(hf.datasets, "load_dataset", offline)
    with pytest.raises(VitftError, match="save_to_disk"):
        scan_data(_data("someone/defects", tmp_path))


def test_training_on_a_saved_multilabel_dataset(tmp_path):
    root = save_dataset(tmp_path / "ds", multilabel=True, n=24)
    cfg = make_cfg(tmp_path / "run", None, "task=folder", f"task.data_dir={root}", "data=hf",
                   "data.image_column=img", "data.label_column=tags")  # fmt: skip
    with open_dict(cfg):
        cfg.model.config = TINY_VIT_CONFIG
        cfg.data.cache_dir = str(tmp_path / "hf_cache")
    OmegaConf.resolve(cfg)
    metrics, objects = train(cfg)
    assert objects["summary"]["multilabel"] and "test/hamming" in metrics


def test_doctor_checks_the_images_of_a_saved_dataset(tmp_path):
    from vitft.data.check import check_files
    from vitft.data.doctor import DataReport

    s = scan_data(_data(save_dataset(tmp_path / "ds"), tmp_path))
    s.train[0][0].write_bytes(b"")  # an embedded image that went bad on disk
    report = check_files(DataReport(str(tmp_path / "ds")), s)
    assert [b["kind"] for b in report.bad] == ["zero_byte"]
    assert sum(report.counts["val"].values()) == 6 and report.can_train("skip")
