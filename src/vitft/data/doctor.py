"""Data doctor: find what is wrong with a folder dataset before anyone spends GPU hours on it.

``check_dataset(root)`` walks every file (``vitft check-data``); ``screen(splits)`` runs the
same per-file checks on a scanned dataset before training and applies ``data.on_bad_file``.

Per file: zero-byte, not an image (whatever the extension), corrupt, truncated (fast path: the
JPEG/PNG end marker; ``decode=True``: a full decode), unusual modes (16-bit, CMYK, palette, alpha)
and sizes. Across files: exact duplicates by content hash inside a split (with conflicting labels
when their classes differ) and across splits (leakage), near-empty classes, class-name mismatches
between splits, hidden files and junk.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import warnings
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from vitft.core.errors import VitftError
from vitft.data.folder import (
    IMAGE_EXTENSIONS,
    SPLITS,
    DatasetSplits,
    _is_hidden_or_junk,
    class_folders,
    class_name,
    is_broken_link,
    scan_dataset,
)

log = logging.getLogger(__name__)

# A file with one of these problems cannot be trained on (data.on_bad_file decides what happens).
# too_large: over PIL's decompression-bomb limit (Image.MAX_IMAGE_PIXELS, 89 Mpx).
# broken_link: a symlink whose target is missing.
BAD_KINDS = ("zero_byte", "not_an_image", "corrupt", "truncated", "too_large", "broken_link")
# Modes that load_image converts, but that usually mean an export setting to look at.
USUAL_MODES = ("RGB", "L")
MIN_SIDE, MAX_SIDE, MAX_ASPECT = 32, 10_000, 5.0
# Below this many usable images a class is reported as near-empty.
MIN_PER_CLASS = 5
CHECKS = ("header", "decode", "off")
POLICIES = ("fail", "skip")


@dataclass
class FileCheck:
    """What one file is: its hash, format, mode and size, or the problem that makes it unusable."""

    path: str
    bytes: int = 0
    sha256: str = ""
    format: str | None = None
    mode: str | None = None
    size: tuple[int, int] | None = None
    problem: str | None = None  # one of BAD_KINDS
    detail: str = ""


def _trailer_ok(fmt: str | None, data: bytes) -> bool:
    """Cheap truncation test: a JPEG ends with EOI (FF D9), a PNG with its IEND chunk."""
    tail = data.rstrip(b"\x00")[-16:]  # some cameras pad with zeros after the end marker
    if fmt == "JPEG":
        return tail.endswith(b"\xff\xd9")
    if fmt == "PNG":
        return b"IEND" in tail
    return True


def inspect_file(path: str | Path, decode: bool = False) -> FileCheck:
    """Check one file: header (and end marker) always, full decode when ``decode``."""
    path = Path(path)
    if is_broken_link(path):
        target = os.readlink(path)
        return FileCheck(str(path), problem="broken_link", detail=f"broken symlink to {target}")
    try:
        data = path.read_bytes()
    except OSError as err:
        return FileCheck(str(path), problem="corrupt", detail=f"unreadable: {err}")
    fc = FileCheck(str(path), bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    if not data:
        return replace(fc, problem="zero_byte", detail="empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fc = replace(fc, format=img.format, mode=img.mode, size=tuple(img.size))
                if decode:
                    img.load()
    except UnidentifiedImageError:
        head = data[:8].hex(" ")
        return replace(fc, problem="not_an_image", detail=f"not an image (starts with {head})")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        detail = f"too large to decode safely (downscale it to use it): {err}"
        return replace(fc, problem="too_large", detail=detail)
    except (OSError, SyntaxError, ValueError) as err:
        kind = "truncated" if "truncated" in str(err) else "corrupt"
        return replace(fc, problem=kind, detail=f"{type(err).__name__}: {err}")
    if not _trailer_ok(fc.format, data):
        return replace(fc, problem="truncated", detail=f"{fc.format} file has no end marker")
    return fc


def inspect_files(paths: list[Path], decode: bool = False) -> list[FileCheck]:
    """inspect_file over many files, in threads (the work is I/O and C code)."""
    workers = min(16, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda p: inspect_file(p, decode), paths))


def unusual(fc: FileCheck) -> str | None:
    """Why an image's mode or size deserves a look (None when it is ordinary)."""
    if fc.mode and fc.mode not in USUAL_MODES:
        return f"mode {fc.mode} (converted to 8-bit RGB for training)"
    if fc.size:
        w, h = fc.size
        if min(w, h) < MIN_SIDE or max(w, h) > MAX_SIDE or max(w, h) / max(1, min(w, h)) > 5:
            return f"size {w}x{h}"
    return None


@dataclass
class DataReport:
    root: str
    classes: list[str] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # usable images
    errors: list[str] = field(default_factory=list)  # training cannot proceed
    bad: list[dict] = field(default_factory=list)  # unusable files
    warnings: list[dict] = field(default_factory=list)  # worth a look, training proceeds
    decode: bool = False

    def can_train(self, on_bad_file: str = "skip") -> bool:
        return not self.errors and not (self.bad and on_bad_file == "fail")

    def reasons(self, on_bad_file: str = "skip") -> list[str]:
        out = list(self.errors)
        if self.bad and on_bad_file == "fail":
            out.append(f"{len(self.bad)} bad file(s) and data.on_bad_file=fail")
        return out

    def to_json(self) -> dict:
        return asdict(self)

    def text(self, on_bad_file: str = "skip") -> str:
        lines = [f"dataset {self.root} ({'full decode' if self.decode else 'header check'})"]
        if self.classes:
            splits = [s for s in SPLITS if s in self.counts]
            width = max(len(c) for c in [*self.classes, "class"])
            lines.append(f"{'class':<{width}}  " + "  ".join(f"{s:>6}" for s in splits))
            for c in self.classes:
                row = [self.counts[s].get(c, 0) for s in splits]
                lines.append(f"{c:<{width}}  " + "  ".join(f"{n:>6}" for n in row))
        for title, items in (("bad files (not used)", self.bad), ("warnings", self.warnings)):
            if items:
                lines.append(f"{title}: {len(items)}")
                by_kind = Counter(i["kind"] for i in items)
                for kind, n in sorted(by_kind.items()):
                    lines.append(f"  {kind}: {n}")
                    for item in [i for i in items if i["kind"] == kind][:10]:
                        lines.append(f"    {item['path']}: {item['detail']}")
                    if n > 10:
                        lines.append(f"    ... {n - 10} more in data_report.json")
        for err in self.errors:
            lines.append(f"ERROR: {err}")
        verdict = "OK: training can proceed" if self.can_train(on_bad_file) else "NOT OK: "
        if not self.can_train(on_bad_file):
            verdict += "; ".join(self.reasons(on_bad_file))
        lines.append(verdict)
        return "\n".join(lines)


def _item(kind: str, path: Path | str, detail: str, split: str = "", cls: str = "") -> dict:
    return {"kind": kind, "path": str(path), "detail": detail, "split": split, "class": cls}


def _duplicates(checked: list[tuple[str, str, FileCheck]]) -> list[dict]:
    """Exact duplicates by content hash: inside a split, and across splits (leakage)."""
    groups: dict[str, list[tuple[str, str, FileCheck]]] = defaultdict(list)
    for entry in checked:
        if entry[2].sha256 and not entry[2].problem:
            groups[entry[2].sha256].append(entry)
    out = []
    for group in groups.values():
        if len(group) < 2:
            continue
        first_split, first_cls, first = group[0]
        for split, cls, fc in group[1:]:
            if split != first_split:
                kind, what = "duplicate_across_splits", f"leakage: same bytes as {first.path}"
            else:
                kind, what = "duplicate_in_split", f"same bytes as {first.path}"
            if cls != first_cls:
                what += f" (labelled {first_cls} there: conflicting labels)"
            out.append(_item(kind, fc.path, what, split, cls))
    return out


def _check_class_names(root: Path, present: list[str], report: DataReport) -> dict[str, list]:
    """Each split's class folders; the union goes into ``report.classes``, a split missing
    some is an error, and names that differ only by case are a warning."""
    found = {s: class_folders(root / s) for s in present}
    report.classes = sorted(set().union(*found.values()))
    for s, names in found.items():
        missing = sorted(set(report.classes) - set(names))
        if missing:
            report.errors.append(f"class-name mismatch: {s}/ lacks {missing}")
    lower = Counter(c.lower() for c in report.classes)
    for c in report.classes:
        if lower[c.lower()] > 1:
            report.warnings.append(_item("similar_class_names", root, f"{c!r} differs by case"))
    return found


def _class_files(root: Path, present: list[str], report: DataReport) -> list[tuple]:
    """(split, class, path) of each file in a class folder; hidden, junk and stray: warnings."""
    files: list[tuple[str, str, Path]] = []
    for split in present:
        for p in sorted((root / split).rglob("*")):
            rel = p.relative_to(root / split)
            if any(_is_hidden_or_junk(part) for part in rel.parts):
                if p.is_file() or _is_hidden_or_junk(p.name):
                    report.warnings.append(_item("hidden_or_junk", p, "skipped", split))
                continue
            if not (p.is_file() or is_broken_link(p)):
                continue
            if len(rel.parts) == 1:
                report.warnings.append(_item("stray_file", p, "not in a class folder", split))
                continue
            files.append((split, rel.parts[0], p))
    return files


def _count_usable(checked: list[tuple], report: DataReport) -> Counter:
    """Usable images per (split, class); the rest go into the report: non-image files as
    warnings, bad images as bad, and usable but unusual images as warnings too."""
    usable: Counter = Counter()
    for split, cls, fc in checked:
        is_image_ext = Path(fc.path).suffix.lower() in IMAGE_EXTENSIONS
        if not is_image_ext:
            what = f"an image ({fc.format}) with an extension training does not read"
            if fc.problem:
                what = "not an image file; ignored by training"
            report.warnings.append(_item("non_image_file", fc.path, what, split, cls))
            continue
        if fc.problem:
            report.bad.append(_item(fc.problem, fc.path, fc.detail, split, cls))
            continue
        usable[split, cls] += 1
        why = unusual(fc)
        if why:
            report.warnings.append(_item("unusual_image", fc.path, why, split, cls))
    return usable


def check_dataset(
    data_dir: str | Path,
    classes: list[str] | None = None,
    decode: bool = True,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
) -> DataReport:
    """Walk every file under ``data_dir`` and report (see the module docstring)."""
    root = Path(data_dir).expanduser()
    report = DataReport(str(root), decode=decode)
    if not root.is_dir():
        report.errors.append(f"data dir {root} does not exist")
        return report
    present = [s for s in SPLITS if (root / s).is_dir()]
    if "train" not in present:
        report.errors.append(f"{root} has no train/ folder (expected train/<class>/*.jpg)")
        return report
    found = _check_class_names(root, present, report)
    files = _class_files(root, present, report)
    checks = inspect_files([p for _, _, p in files], decode)
    checked = [(s, c, fc) for (s, c, _), fc in zip(files, checks, strict=True)]
    usable = _count_usable(checked, report)
    report.counts = {s: {c: usable[s, c] for c in report.classes} for s in present}
    image_checked = [e for e in checked if Path(e[2].path).suffix.lower() in IMAGE_EXTENSIONS]
    report.warnings.extend(_duplicates(image_checked))
    for s in present:
        for c in found[s]:
            n = usable[s, c]
            if n == 0:
                report.errors.append(f"class folder {root / s / c} has no usable images")
            elif n < MIN_PER_CLASS:
                report.warnings.append(
                    _item("near_empty_class", root / s / c, f"only {n} usable image(s)", s, c)
                )
    if not report.errors:  # what training itself would say about the layout
        try:
            scan_dataset(root, classes, val_fraction, test_fraction)
        except VitftError as err:
            report.errors.append(str(err))
    return report


def _bad_files(splits: DatasetSplits, check: str) -> list[dict]:
    """Check every file of ``splits`` (``check``: header or decode) and return the bad ones;
    images that stand in more than one split are a warning in the log."""
    entries = [(s, path, label) for s in SPLITS for path, label in splits.split(s)]
    checks = inspect_files([p for _, p, _ in entries], decode=check == "decode")
    named = [
        (s, class_name(splits.classes, label), fc)
        for (s, _, label), fc in zip(entries, checks, strict=True)
    ]
    bad = [_item(fc.problem, fc.path, fc.detail, s, c) for s, c, fc in named if fc.problem]
    leaks = [d for d in _duplicates(named) if d["kind"] == "duplicate_across_splits"]
    if leaks:
        log.warning(
            "%d image(s) appear in more than one split (same bytes), e.g. %s; "
            "run vitft check-data for the list",
            len(leaks),
            leaks[0]["path"],
        )
    return bad


def _report_bad(
    bad: list[dict], splits: DatasetSplits, on_bad_file: str, output_dir: str | Path | None
) -> str:
    """Write ``bad_files.json``, then raise (``fail``) or log (``skip``) the bad files; returns
    their per-class counts, as the messages give them."""
    per_class = Counter((b["split"], b["class"]) for b in bad)
    counts = ", ".join(f"{s}/{c}: {n}" for (s, c), n in sorted(per_class.items()))
    listing = "\n".join(f"  {b['path']}: {b['detail']}" for b in bad[:20])
    more = f"\n  ... {len(bad) - 20} more" if len(bad) > 20 else ""
    if output_dir is not None:
        out = Path(output_dir) / "bad_files.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"policy": on_bad_file, "per_class": counts, "files": bad}
        out.write_text(json.dumps(payload, indent=2))
    if on_bad_file == "fail":
        raise VitftError(
            f"{len(bad)} bad file(s) in {splits.root} ({counts}):\n{listing}{more}\n"
            "Fix or remove them (vitft check-data lists every problem), or set "
            "data.on_bad_file=skip to train without them"
        )
    log.warning(
        "data.on_bad_file=skip: %d bad file(s) not used (%s)%s:\n%s%s",
        len(bad),
        counts,
        f", listed in {Path(output_dir) / 'bad_files.json'}" if output_dir else "",
        listing,
        more,
    )
    return counts


def _without_bad(splits: DatasetSplits, bad: list[dict], counts: str) -> DatasetSplits:
    """``splits`` less the bad files; refused when that leaves a class with no images (in any
    split of a single-label dataset, in train of a multi-label one)."""
    drop = {b["path"] for b in bad}
    kept = {s: [(p, y) for p, y in splits.split(s) if str(p) not in drop] for s in SPLITS}
    out_splits = replace(splits, **kept)
    for s in SPLITS:
        for c, n in out_splits.counts(s).items():
            if n == 0 and (s == "train" or not splits.multilabel):
                raise VitftError(
                    f"{s} split of {splits.root}: class {c!r} has no usable images left after "
                    f"skipping bad files ({counts}); fix or replace them"
                )
    return out_splits


def screen(
    splits: DatasetSplits,
    on_bad_file: str = "skip",
    check: str = "header",
    output_dir: str | Path | None = None,
) -> DatasetSplits:
    """Before training: check every file of ``splits`` and apply ``data.on_bad_file``.

    ``skip``: bad files are dropped, listed in ``<run>/bad_files.json`` and in the log with
    per-class counts. ``fail``: VitftError listing them, before the first step.
    """
    if on_bad_file not in POLICIES:
        raise VitftError(f"data.on_bad_file={on_bad_file!r} is unknown; use one of {POLICIES}")
    if check not in CHECKS:
        raise VitftError(f"data.check={check!r} is unknown; use one of {CHECKS}")
    if check == "off":
        return splits
    bad = _bad_files(splits, check)
    if not bad:
        if output_dir is not None:
            (Path(output_dir) / "bad_files.json").unlink(missing_ok=True)
        return splits
    counts = _report_bad(bad, splits, on_bad_file, output_dir)
    return _without_bad(splits, bad, counts)
