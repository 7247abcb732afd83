"""Where a dataset comes from (``conf/data/``): class folders, a label manifest or an HF dataset.

``scan_data(cfg.data)`` turns any of them into the same ``DatasetSplits`` (train/val/test lists of
``(image file, label)``), so screening, the feature cache, training, evaluation and export parity
never need to know the source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vitft.core.errors import VitftError
from vitft.data.folder import DatasetSplits, scan_dataset
from vitft.data.manifest import SUFFIXES, scan_manifest

SOURCES = ("folder", "manifest", "hf")


def source_of(data: Any) -> str:
    source = data.get("source") or "folder"
    if source not in SOURCES:
        raise VitftError(f"data.source={source!r} is unknown; use data=folder, manifest or hf")
    return source


def infer_source(location: str | Path) -> str:
    """The source a path looks like: a manifest file, a saved HF dataset, or class folders."""
    path = Path(str(location)).expanduser()
    if path.suffix.lower() in SUFFIXES:
        return "manifest"
    if any((path / f).is_file() for f in ("dataset_dict.json", "state.json")):
        return "hf"
    return "folder"


def scan_data(
    data: Any, multilabel: bool | None = None, output_dir: str | Path | None = None
) -> DatasetSplits:
    """The train/val/test samples of ``data`` (a ``cfg.data`` section, or a dict of it).

    ``multilabel``: ``task.multilabel`` (null: inferred from the labels; folders are single-label).
    """
    source = source_of(data)
    split_args = {
        "val_fraction": data.get("val_fraction", 0.15),
        "test_fraction": data.get("test_fraction", 0.15),
        "split_seed": data.get("split_seed", 0),
    }
    classes = list(data["classes"]) if data.get("classes") else None
    location = data.get("data_dir")
    if not location:
        raise VitftError("data.data_dir is not set: point task.data_dir at the dataset")
    if source == "manifest":
        return scan_manifest(
            location,
            classes,
            multilabel,
            data.get("label_sep") or ";",
            on_bad_file=data.get("on_bad_file", "skip"),
            output_dir=output_dir,
            annotators=data.get("annotators") or "majority",
            image_root=data.get("image_root"),
            **split_args,
        )
    if source == "hf":
        try:  # the `datasets` package is the optional extra vitft[hf]
            from vitft.data.hf import scan_hf
        except ModuleNotFoundError as err:
            raise VitftError(
                f"data=hf needs the datasets package ({err}): pip install 'vitft[hf]'"
            ) from err
        return scan_hf(data, classes, multilabel, **split_args)
    if Path(str(location)).suffix.lower() in SUFFIXES:
        raise VitftError(
            f"data_dir={location} is a manifest file: add data=manifest to read it "
            "(data=folder reads <root>/train/<class>/ folders)"
        )
    if multilabel:
        raise VitftError(
            "task.multilabel=true needs labels with several classes per image: class folders "
            "hold one class per image; use data=manifest (path,labels) or data=hf"
        )
    return scan_dataset(location, classes, **split_args)
