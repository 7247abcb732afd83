"""Scan folder-structured datasets: ``root/{train,val,test}/<class>/*``.

Pure functions over paths (no decoding), so they are cheap and easy to test. When val or test is
absent, it is carved out of train by a stratified, seeded split (the same on every run).
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from vitft.core.errors import VitftError
from vitft.data.stratify import multilabel_split

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
SPLITS = ("train", "val", "test")
# OS and archive clutter that is never data.
JUNK_NAMES = {"thumbs.db", "desktop.ini", "__macosx"}

# A class index, or for multi-label data a 0/1 tuple with one entry per class (all zeros: none).
Label = int | tuple[int, ...]
Sample = tuple[Path, Label]


@dataclass
class DatasetSplits:
    root: Path
    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    # split name -> "folder" or "split from train"
    origin: dict[str, str] = field(default_factory=dict)
    # files under the class folders that are not images (by extension), per split
    ignored: dict[str, list[Path]] = field(default_factory=dict)
    # labels are 0/1 tuples (any number of classes per image) instead of class indices
    multilabel: bool = False

    def split(self, name: str) -> list[Sample]:
        return getattr(self, name)

    def counts(self, name: str) -> dict[str, int]:
        """Images per class (multi-label: images where the class is present)."""
        if self.multilabel:
            totals = [sum(col) for col in zip(*(y for _, y in self.split(name)), strict=True)]
            return dict(zip(self.classes, totals or [0] * len(self.classes), strict=True))
        c = Counter(label for _, label in self.split(name))
        return {cls: c.get(i, 0) for i, cls in enumerate(self.classes)}

    def summary(self) -> str:
        width = max(len(c) for c in [*self.classes, "images"])
        lines = [f"{'class':<{width}}  " + "  ".join(f"{s:>5}" for s in SPLITS)]
        counts = {s: self.counts(s) for s in SPLITS}
        for cls in self.classes:
            row = [counts[s][cls] for s in SPLITS]
            lines.append(f"{cls:<{width}}  " + "  ".join(f"{n:>5}" for n in row))
        if self.multilabel:  # classes overlap: the images themselves
            sizes = [len(self.split(s)) for s in SPLITS]
            lines.append(f"{'images':<{width}}  " + "  ".join(f"{n:>5}" for n in sizes))
        lines.append("origin: " + ", ".join(f"{s}={self.origin[s]}" for s in SPLITS))
        return "\n".join(lines)


def class_name(classes: list[str], label: int | tuple[int, ...]) -> str:
    """The class of a label, or for a multi-label 0/1 tuple its classes joined by ';'."""
    if isinstance(label, int):
        return classes[label]
    return ";".join(c for c, v in zip(classes, label, strict=True) if v) or "(none)"


def _is_hidden_or_junk(name: str) -> bool:
    return name.startswith(".") or name.lower() in JUNK_NAMES


def is_broken_link(p: Path) -> bool:
    """A symlink whose target is gone: a file that was meant to be data, so it is reported."""
    return p.is_symlink() and not p.exists()


def class_folders(split_dir: Path) -> list[str]:
    """Sorted class folder names in a split folder (hidden folders and junk excluded)."""
    return sorted(
        p.name for p in split_dir.iterdir() if p.is_dir() and not _is_hidden_or_junk(p.name)
    )


def list_images(class_dir: Path) -> tuple[list[Path], list[Path]]:
    """(image files, other files) under a class folder, recursively, in sorted order.

    Broken symlinks are listed too, so the file checks name them instead of losing them."""
    images, other = [], []
    for p in sorted(class_dir.rglob("*")):
        if not (p.is_file() or is_broken_link(p)) or any(
            _is_hidden_or_junk(part) for part in p.relative_to(class_dir).parts
        ):
            continue
        (images if p.suffix.lower() in IMAGE_EXTENSIONS else other).append(p)
    return images, other


def stratified_split(
    samples: list[Sample], fractions: dict[str, float], seed: int
) -> tuple[list[Sample], dict[str, list[Sample]]]:
    """Split ``samples`` per class; returns (rest, {name: part}). Same seed, same split."""
    by_class: dict[int, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(s[1], []).append(s)
    rest: list[Sample] = []
    parts: dict[str, list[Sample]] = {name: [] for name in fractions}
    for label in sorted(by_class):
        items = sorted(by_class[label])
        random.Random(f"{seed}-{label}").shuffle(items)
        start = 0
        for name, frac in fractions.items():
            # at least one per class in each carved split when the class has enough images
            n = max(1, round(frac * len(items))) if len(items) - start > 1 else 0
            parts[name].extend(items[start : start + n])
            start += n
        rest.extend(items[start:])
    return sorted(rest), {k: sorted(v) for k, v in parts.items()}


def _class_folders_of_splits(root: Path, present: list[str]) -> list[str]:
    """The class folders of train/, refused when there are none or the splits disagree."""
    train_dir = root / "train"
    found = {s: class_folders(root / s) for s in present}
    if not found["train"]:
        raise VitftError(f"{train_dir} has no class folders: put images in {train_dir}/<class>/")
    if len({tuple(v) for v in found.values()}) > 1:
        allc = sorted(set().union(*found.values()))
        diff = {s: sorted(set(allc) - set(v)) for s, v in found.items() if set(allc) - set(v)}
        raise VitftError(
            f"the splits of {root} have different class folders; missing: "
            + "; ".join(f"{s}/ lacks {m}" for s, m in diff.items())
            + ". Every split must hold the same class folders (add the missing ones or remove "
            "the extra ones)"
        )
    return found["train"]


def _check_task_classes(
    classes: list[str] | None, classes_found: list[str], train_dir: Path
) -> list[str]:
    """The class list: ``task.classes`` (its order) when given and it names the class folders,
    else the folders, sorted."""
    if not classes:
        return classes_found
    classes = [str(c) for c in classes]
    if sorted(classes) != classes_found:
        raise VitftError(
            f"task.classes={classes} does not match the class folders of {train_dir}: "
            f"{classes_found}. Fix task.classes or set task.classes=null to use the folders"
        )
    return classes


def _folder_samples(root: Path, present: list[str], classes: list[str]) -> tuple[dict, dict]:
    """(samples, ignored files) per split: every image of each class folder, labelled by its
    class's index; files without an image extension are logged and left out."""
    samples: dict[str, list[Sample]] = {}
    ignored: dict[str, list[Path]] = {}
    for split in present:
        samples[split], ignored[split] = [], []
        for label, cls in enumerate(classes):
            images, other = list_images(root / split / cls)
            if not images:
                raise VitftError(
                    f"class folder {root / split / cls} has no images "
                    f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder"
                )
            samples[split].extend((p, label) for p in images)
            ignored[split].extend(other)
        if ignored[split]:
            log.warning(
                "%s/: %d file(s) without an image extension are not used, e.g. %s",
                split,
                len(ignored[split]),
                ", ".join(str(p) for p in ignored[split][:3]),
            )
    return samples, ignored


def scan_dataset(
    data_dir: str | Path,
    classes: list[str] | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    split_seed: int = 0,
) -> DatasetSplits:
    """Scan ``data_dir`` into train/val/test sample lists with one class list for all splits."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise VitftError(
            f"data dir {root} does not exist. Point the task at your dataset with "
            "task.data_dir=/path/to/root (it must hold train/<class>/ folders)"
        )
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise VitftError(
            f"{root} has no train/ folder. Expected layout: {root}/train/<class>/*.jpg "
            "(val/ and test/ are optional)"
        )
    present = [s for s in SPLITS if (root / s).is_dir()]
    classes_found = _class_folders_of_splits(root, present)
    classes = _check_task_classes(classes, classes_found, train_dir)
    samples, ignored = _folder_samples(root, present, classes)
    return carved_splits(
        samples, root, classes, val_fraction, test_fraction, split_seed, ignored=ignored
    )


def carved_splits(
    samples: dict[str, list[Sample]],
    root: Path,
    classes: list[str],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    multilabel: bool = False,
    given: str = "folder",
    ignored: dict[str, list[Path]] | None = None,
) -> DatasetSplits:
    """The splits of a scanned source: ``samples`` per split it gives (``given``: what gave
    them), with val/test carved out of train where it gives none (``carve_missing``)."""
    origin = carve_missing(samples, root, val_fraction, test_fraction, seed, multilabel, given)
    return DatasetSplits(
        root,
        classes,
        samples["train"],
        samples["val"],
        samples["test"],
        origin,
        ignored or {},
        multilabel=multilabel,
    )


def carve_missing(
    samples: dict[str, list[Sample]],
    root: Path,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    multilabel: bool = False,
    given: str = "folder",
) -> dict[str, str]:
    """Carve val/test out of train where ``samples`` lacks them (in place); returns the origins.

    Stratified per class; multi-label data uses iterative stratification (Sechidis et al. 2011).
    """
    origin = {s: given for s in samples}
    carve = {s: f for s, f in (("val", val_fraction), ("test", test_fraction)) if s not in samples}
    if carve:
        split = multilabel_split if multilabel else stratified_split
        samples["train"], parts = split(samples["train"], carve, seed)
        samples.update(parts)
        origin.update({s: f"split from train ({f:.0%}, seed {seed})" for s, f in carve.items()})
        for s in carve:
            if not samples[s]:
                raise VitftError(f"{root}: too few training images to carve a {s} split")
    return origin
