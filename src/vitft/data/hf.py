"""HF datasets (``data=hf``): a ``save_to_disk`` folder, an image folder, or a hub dataset id.

The dataset's image column becomes image files (the files an image folder already has, or the
embedded bytes written once, unchanged, under ``data.cache_dir``), so screening, the feature
cache and evaluation treat it like any other source. Labels come from ``data.label_column``: a
``ClassLabel`` (or strings) for one class per image, a list of them for multi-label.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

import datasets
from PIL import Image

from vitft.core.errors import VitftError
from vitft.data.folder import DatasetSplits, Sample, carved_splits
from vitft.data.manifest import SPLIT_NAMES

log = logging.getLogger(__name__)


def open_dataset(location: str, cache_dir: str | None = None, **hub: Any):
    """``load_from_disk`` for a saved dataset, ``imagefolder`` for a plain folder, else the hub."""
    path = Path(location).expanduser()
    if path.is_dir():
        if any((path / f).is_file() for f in ("dataset_dict.json", "state.json")):
            return datasets.load_from_disk(str(path))
        return datasets.load_dataset("imagefolder", data_dir=str(path), cache_dir=cache_dir)
    if path.exists() or location.startswith((".", "/", "~")):
        raise VitftError(
            f"data_dir={location} is not a dataset folder (save_to_disk output or an image folder)"
        )
    try:
        return datasets.load_dataset(location, cache_dir=cache_dir, **hub)
    except Exception as err:  # offline, unknown id, gated: the hub's own message says which
        raise VitftError(
            f"could not load HF dataset {location!r} from the hub ({type(err).__name__}: {err}). "
            "Without hub access, save it on a machine that has it (dataset.save_to_disk(dir)) "
            "and set task.data_dir=dir"
        ) from err


def _label_names(feature: Any) -> tuple[list[str] | None, bool]:
    """(class names the label column carries, or None; whether it holds lists of labels)."""
    inner = None
    if isinstance(feature, list):
        inner = feature[0]
    elif isinstance(feature, (datasets.List, datasets.LargeList)):
        inner = feature.feature
    top = inner if inner is not None else feature
    return (top.names if isinstance(top, datasets.ClassLabel) else None), inner is not None


def _image_files(ds, column: str, out_dir: Path) -> list[Path]:
    """One image file per row: its own file when it has one, else its bytes written once."""
    if isinstance(ds.features[column], datasets.Value):  # a column of file paths
        return [Path(p).expanduser() for p in ds[column]]
    cells = ds.cast_column(column, datasets.Image(decode=False))[column]
    files = []
    for i, cell in enumerate(cells):
        src = Path(cell["path"]) if cell.get("path") else None
        if cell.get("bytes") is None:
            if src is None or not src.is_file():
                raise VitftError(f"{column} row {i}: neither image bytes nor a readable file")
            files.append(src)
            continue
        data = cell["bytes"]
        suffix = src.suffix if src is not None and src.suffix else ""
        if not suffix:
            try:
                suffix = "." + Image.open(io.BytesIO(data)).format.lower()
            except Exception:  # the data doctor reports it as not an image
                suffix = ".bin"
        target = out_dir / f"{i:07d}{suffix}"
        if not (target.is_file() and target.stat().st_size == len(data)):
            out_dir.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(target.suffix + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)
        files.append(target)
    return files


def _named_splits(loaded, location: str) -> dict[str, Any]:
    """The dataset's splits under vitft's names (train/val/test); others are logged and left
    out, and a dataset without a train split is refused."""
    parts = loaded if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    named: dict[str, Any] = {}
    for key, ds in parts.items():
        split = SPLIT_NAMES.get(key.lower())
        if split is None or split in named:
            log.warning("HF dataset %s: split %r is not used (not train/val/test)", location, key)
            continue
        named[split] = ds
    if "train" not in named:
        raise VitftError(f"HF dataset {location} has no train split (splits: {list(parts)})")
    return named


def _check_columns(
    named: dict[str, Any], location: str, image_col: str, label_col: str, multilabel: bool | None
) -> tuple[list[str] | None, bool]:
    """Refuse a split without the image or label column, or a label column that contradicts
    ``task.multilabel``; returns the column's class names (or None) and whether it is
    multi-label."""
    for ds in named.values():
        missing = [c for c in (image_col, label_col) if c not in ds.column_names]
        if missing:
            raise VitftError(
                f"HF dataset {location} has no column {missing} (columns: {ds.column_names}); "
                "set data.image_column / data.label_column"
            )
    names, is_multi = _label_names(named["train"].features[label_col])
    if multilabel is False and is_multi:
        raise VitftError(f"{label_col} holds lists of labels but task.multilabel=false")
    if multilabel and not is_multi:
        raise VitftError(
            f"task.multilabel=true but {location}:{label_col} holds one label per image; "
            "use a column of label lists (or task.multilabel=null)"
        )
    return names, is_multi


def _labelled_files(
    named: dict[str, Any], location: str, cols: tuple[str, str], cache_dir: Path, names, is_multi
) -> dict[str, list[tuple[Path, list[str]]]]:
    """Per split, each row's image file and its label names (an empty single label refused)."""
    image_col, label_col = cols
    raw: dict[str, list[tuple[Path, list[str]]]] = {}
    for split, ds in named.items():
        files = _image_files(ds, image_col, cache_dir / "images" / ds._fingerprint / split)
        rows = []
        for i, (f, value) in enumerate(zip(files, ds[label_col], strict=True)):
            values = value if is_multi else [value]
            if not is_multi and value is None:
                raise VitftError(f"HF dataset {location} {split} row {i}: empty label")
            rows.append((f, [names[v] if names else str(v) for v in values if v is not None]))
        raw[split] = rows
    return raw


def _check_known(raw: dict[str, list], known: list[str], location: str) -> None:
    """Refuse the first row with a label outside the class list ``known``."""
    for split, rows in raw.items():
        for i, (_, lbs) in enumerate(rows):
            unknown = sorted(set(lbs) - set(known))
            if unknown:
                raise VitftError(
                    f"HF dataset {location} {split} row {i}: label {unknown} is not in "
                    f"task.classes {known}; fix task.classes or set it to null"
                )


def scan_hf(
    data: Any,
    classes: list[str] | None = None,
    multilabel: bool | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    split_seed: int = 0,
) -> DatasetSplits:
    """The splits of the HF dataset at ``data.data_dir`` (see the module docstring)."""
    location = str(data["data_dir"])
    image_col = data.get("image_column") or "image"
    label_col = data.get("label_column") or "label"
    cache_dir = Path(str(data.get("cache_dir") or ".cache/hf")).expanduser()
    hub = {k: data[k] for k in ("name", "revision") if data.get(k)}
    named = _named_splits(open_dataset(location, str(cache_dir), **hub), location)
    names, is_multi = _check_columns(named, location, image_col, label_col, multilabel)
    cols = (image_col, label_col)
    raw = _labelled_files(named, location, cols, cache_dir, names, is_multi)
    found = sorted({lb for rows in raw.values() for _, lbs in rows for lb in lbs})
    known = [str(c) for c in classes] if classes else (list(names) if names else found)
    _check_known(raw, known, location)
    index = {c: i for i, c in enumerate(known)}
    samples: dict[str, list[Sample]] = {
        split: sorted(
            (f, tuple(int(c in lbs) for c in known) if is_multi else index[lbs[0]])
            for f, lbs in rows
        )
        for split, rows in raw.items()
    }
    return carved_splits(
        samples,
        Path(location),
        known,
        val_fraction,
        test_fraction,
        split_seed,
        is_multi,
        "HF split",
    )
