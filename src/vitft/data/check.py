"""vitft check-data: the data doctor's report for any data source (folders, manifests, HF).

Folders: ``doctor.check_dataset``. Manifests: every row (missing files, unknown or misspelled
labels with the closest class, duplicate rows, conflicting labels, empty labels), then every
listed file like a folder's (zero-byte, corrupt, truncated, unusual, duplicate bytes). HF datasets:
the same file checks on their images.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from vitft.core.errors import VitftError
from vitft.data.doctor import (
    MIN_PER_CLASS,
    DataReport,
    _duplicates,
    _item,
    inspect_files,
    unusual,
)
from vitft.data.folder import SPLITS, DatasetSplits, class_name
from vitft.data.manifest import manifest_splits, read_manifest


def check_manifest(
    file: str | Path,
    classes: list[str] | None = None,
    multilabel: bool | None = None,
    label_sep: str = ";",
    decode: bool = True,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    split_seed: int = 0,
    annotators: str = "majority",
    image_root: str | Path | None = None,
) -> DataReport:
    """Check every row and every listed file of a manifest."""
    report = DataReport(str(file), decode=decode)
    try:
        m = read_manifest(file, classes, multilabel, label_sep, annotators, image_root)
    except VitftError as err:
        report.errors.append(str(err))
        return report
    for p in m.problems:
        report.bad.append(_item(p["kind"], f"line {p['line']}", p["detail"]))
    for p in m.left_out:  # a labelling tool's tasks with no usable answer: not used, listed
        report.warnings.append(_item(p["kind"], f"line {p['line']}", f"{p['path']}: {p['detail']}"))
    for w in m.warnings:
        where = f"line {w['line']}" if w["line"] else str(m.file)
        report.warnings.append(_item(w["kind"], where, w["detail"]))
    try:  # the rows' problems are listed above even when none is usable
        splits = manifest_splits(m, val_fraction, test_fraction, split_seed)
    except VitftError as err:
        report.errors.append(str(err))
        return report
    return check_files(report, splits)


def check_files(report: DataReport, splits: DatasetSplits) -> DataReport:
    """The per-file checks of every image in ``splits`` (any source), added to ``report``."""
    report.classes = classes = splits.classes
    entries = [(s, path, label) for s in SPLITS for path, label in splits.split(s)]
    checks = inspect_files([p for _, p, _ in entries], report.decode)
    named = [(s, class_name(classes, y), fc) for (s, _, y), fc in zip(entries, checks, strict=True)]
    usable: Counter = Counter()
    for (split, _, label), (_, cls, fc) in zip(entries, named, strict=True):
        if fc.problem:
            report.bad.append(_item(fc.problem, fc.path, fc.detail, split, cls))
            continue
        hot = [label] if isinstance(label, int) else [i for i, v in enumerate(label) if v]
        usable.update((split, classes[i]) for i in hot)
        why = unusual(fc)
        if why:
            report.warnings.append(_item("unusual_image", fc.path, why, split, cls))
    report.counts = {s: {c: usable[s, c] for c in classes} for s in SPLITS}
    report.warnings.extend(_duplicates(named))
    for c in classes:
        n = usable["train", c]
        if n == 0:
            report.errors.append(f"class {c!r} has no usable training images in {splits.root}")
        elif n < MIN_PER_CLASS:
            report.warnings.append(
                _item("near_empty_class", splits.root, f"only {n} usable image(s)", "train", c)
            )
    return report
