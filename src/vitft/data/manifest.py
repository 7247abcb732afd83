"""Label manifests (``data=manifest``): a CSV or JSONL file of image paths and their labels, or a
labelling tool's export (Label Studio JSON / JSON-MIN, CVAT for images 1.1 XML) read as one.

Columns (CSV header or JSONL keys): ``path`` and ``label`` (one class) or ``labels`` (several,
joined by ``data.label_sep`` in a CSV, a list in JSONL; empty: none of the classes), plus an
optional ``split`` (train/val/test). Other columns are ignored. Paths are relative to the
manifest's folder or absolute. Without a split column, val and test are carved from train like
folders (seeded and stratified; iterative stratification for multi-label).

Every row problem names its line: a missing file, an unknown label (with the closest class), an
empty label, a path listed with conflicting labels. ``data.on_bad_file=fail`` stops with the list;
``skip`` trains without those rows and lists them in the log and ``<run>/skipped_rows.json``.
Export tasks with no usable answer (skipped, not annotated, annotators who disagree under
``data.annotators``) are listed the same way, whatever the policy.
"""

from __future__ import annotations

import csv
import difflib
import json
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from vitft.core.errors import VitftError
from vitft.data.cvat import read_cvat
from vitft.data.folder import DatasetSplits, Sample, carved_splits, is_broken_link
from vitft.data.labelstudio import read_export

log = logging.getLogger(__name__)

# .json: a Label Studio export (vitft.data.labelstudio); .xml: CVAT for images (vitft.data.cvat).
SUFFIXES = (".csv", ".jsonl", ".json", ".xml")
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
# Row problems that on_bad_file=skip may drop (each named by line in the log).
BAD_ROW_KINDS = ("missing_file", "unknown_label", "empty_label", "conflicting_labels")
SKIPPED_FILE = "skipped_rows.json"


# (line, path as written, labels, split, labels given as a list)
Parsed = tuple[int, str, tuple[str, ...], str | None, bool]


@dataclass
class Row:
    line: int
    path: Path
    labels: tuple[str, ...]
    split: str | None


@dataclass
class Manifest:
    file: Path
    multilabel: bool
    classes: list[str]
    rows: list[Row]  # usable rows, one per image
    problems: list[dict] = field(default_factory=list)  # bad rows: {kind, line, path, detail}
    warnings: list[dict] = field(default_factory=list)  # worth a look, rows still used
    # tasks of a labelling-tool export with no usable answer (skipped, not annotated, annotators
    # who disagree): not errors, but listed wherever the rows are used
    left_out: list[dict] = field(default_factory=list)

    def problem_list(self, limit: int = 20) -> str:
        return listing(self.problems, limit)


def listing(items: list[dict], limit: int = 20) -> str:
    """``line N: detail`` per item, the first ``limit`` of them."""
    lines = [f"  line {p['line']}: {p['detail']}" for p in items[:limit]]
    more = len(items) - limit
    return "\n".join(lines + ([f"  ... {more} more"] if more > 0 else []))


def _problem(kind: str, line: int, path: str, detail: str) -> dict:
    return {"kind": kind, "line": line, "path": path, "detail": detail}


def _records(
    file: Path, annotators: str, image_root: str | Path | None
) -> tuple[str, list[tuple[int, dict]], list[dict]]:
    """(label column, [(line, record)], left-out rows) of a manifest or labelling-tool export."""
    suffix, left_out = file.suffix.lower(), []
    if suffix == ".json":
        records, left_out = read_export(file, annotators, image_root)
    elif suffix == ".xml":
        records, left_out = read_cvat(file, image_root)
    elif suffix == ".csv":
        with file.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            reader.fieldnames = [c.strip() for c in reader.fieldnames or []]
            records = [(reader.line_num, row) for row in reader]
    else:
        records = _jsonl(file)
    columns = list(dict.fromkeys(k for _, rec in records for k in rec))
    if suffix == ".csv":
        columns = list(reader.fieldnames)
    label_col = "labels" if "labels" in columns else "label"
    if (records or suffix == ".csv") and ("path" not in columns or label_col not in columns):
        raise VitftError(
            f"{file} has columns {columns}; a manifest needs `path` and `label` (one class per "
            "image) or `labels` (multi-label), plus an optional `split`"
        )
    return label_col, records, left_out


def _jsonl(file: Path) -> list[tuple[int, dict]]:
    records = []
    for n, text in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            raise VitftError(f"{file} line {n}: not valid JSON ({err.msg})") from err
        if not isinstance(record, dict):
            raise VitftError(f"{file} line {n}: expected a JSON object with path and label")
        records.append((n, record))
    return records


def _labels(value, sep: str) -> tuple[tuple[str, ...], bool]:
    """(labels of one cell, whether the cell is a list)."""
    if isinstance(value, list):
        return tuple(str(v).strip() for v in value if str(v).strip()), True
    if value is None:
        return (), False
    return tuple(v.strip() for v in str(value).split(sep) if v.strip()), False


def suggest(name: str, classes: list[str]) -> str:
    """`` did you mean 'x'?`` for the closest class name, or nothing."""
    close = difflib.get_close_matches(name, classes, n=1, cutoff=0.6)
    if not close:
        close = [c for c in classes if c.lower() == name.lower()]
    return f"; did you mean {close[0]!r}?" if close else ""


def _parse(file: Path, label_col: str, records: list, sep: str) -> list[Parsed]:
    """Each record's (line, path, labels, split, labels given as a list)."""
    parsed = []
    for line, rec in records:
        labels, is_list = _labels(rec.get(label_col), sep)
        raw_split = str(rec.get("split") or "").strip()
        split = SPLIT_NAMES.get(raw_split.lower()) if raw_split else None
        if raw_split and split is None:
            raise VitftError(
                f"{file} line {line}: split {raw_split!r} is unknown; use train, val or test"
            )
        parsed.append((line, str(rec.get("path") or "").strip(), labels, split, is_list))
    with_split = [p for p in parsed if p[3]]
    if with_split and len(with_split) != len(parsed):
        line = next(p[0] for p in parsed if not p[3])
        raise VitftError(
            f"{file} line {line} has no split while other rows do: give every row a split "
            "(train, val or test) or drop the column to carve val/test from train"
        )
    return parsed


def _is_multilabel(file: Path, parsed: list[Parsed], label_col: str, given: bool | None) -> bool:
    """task.multilabel, or inferred: a `labels` column, a list cell or a row with several."""
    several = [(ln, lb) for ln, _, lb, _, _ in parsed if len(lb) > 1]
    if given is None:
        return label_col == "labels" or bool(several) or any(p[4] for p in parsed)
    if not given and several:
        line, labels = several[0]
        raise VitftError(
            f"{file} line {line} has several labels {list(labels)} but task.multilabel=false; "
            "set task.multilabel=true (or null to infer it) or give one label per row"
        )
    return bool(given)


def read_manifest(
    file: str | Path,
    classes: list[str] | None = None,
    multilabel: bool | None = None,
    label_sep: str = ";",
    annotators: str = "majority",
    image_root: str | Path | None = None,
) -> Manifest:
    """Read and check every row of a manifest (see the module docstring)."""
    file = Path(file).expanduser()
    if not file.is_file():
        raise VitftError(
            f"manifest {file} does not exist: set task.data_dir (data.data_dir) to a CSV or "
            "JSONL file of path,label rows (or a Label Studio / CVAT export)"
        )
    if file.suffix.lower() not in SUFFIXES:
        raise VitftError(f"manifest {file}: use a {', '.join(SUFFIXES)} file ({file.suffix} given)")
    label_col, records, left_out = _records(file, annotators, image_root)
    parsed = _parse(file, label_col, records, label_sep)
    if not parsed:
        raise VitftError(f"manifest {file} has no usable rows{_left_out_note(left_out)}")
    found = sorted({lb for p in parsed for lb in p[2]})
    known = [str(c) for c in classes] if classes else found
    m = Manifest(file, _is_multilabel(file, parsed, label_col, multilabel), known, [])
    m.left_out = left_out
    if not classes:
        _similar_names(m, Counter(lb for p in parsed for lb in p[2]))
    _add_rows(m, parsed, known)
    if not classes:  # a label seen only on bad rows is not a class
        m.classes = sorted({lb for r in m.rows for lb in r.labels})
    m.problems.sort(key=lambda p: p["line"])
    empty = [r.line for r in m.rows if not r.labels]
    if empty and m.multilabel:
        m.warnings.append(
            _problem(
                "no_labels", empty[0], "", f"{len(empty)} row(s) have no labels: negatives for "
                f"every class (first at line {empty[0]})"
            )
        )  # fmt: skip
    return m


def _left_out_note(left_out: list[dict]) -> str:
    if not left_out:
        return ""
    counts = Counter(p["kind"] for p in left_out)
    return " (left out: " + ", ".join(f"{k}: {n}" for k, n in counts.items()) + ")"


def _add_rows(m: Manifest, parsed: list[Parsed], known: list[str]) -> None:
    """Usable rows into ``m.rows``; each bad one (by its line) into ``m.problems``."""
    by_path: dict[Path, list[tuple[int, str, tuple[str, ...], str | None]]] = defaultdict(list)
    for line, raw, labels, split, _ in parsed:
        if not raw:
            m.problems.append(_problem("missing_file", line, raw, "empty path"))
            continue
        path = Path(raw).expanduser()
        path = path if path.is_absolute() else m.file.parent / path
        unknown = [lb for lb in labels if lb not in known]
        if unknown:
            what = ", ".join(f"{u!r}{suggest(u, known)}" for u in unknown)
            m.problems.append(
                _problem("unknown_label", line, raw, f"{raw}: label {what} is not a class {known}")
            )
        elif not labels and not m.multilabel:
            m.problems.append(_problem("empty_label", line, raw, f"{raw}: empty label"))
        else:
            by_path[path].append((line, raw, tuple(sorted(set(labels))), split))
    for path, entries in by_path.items():
        line, raw, labels, split = entries[0]
        if len({(lb, sp) for _, _, lb, sp in entries}) > 1:
            seen = "; ".join(
                f"line {n}: {list(lb)}{f' ({sp})' if sp else ''}" for n, _, lb, sp in entries
            )
            for n, _, _, _ in entries:
                m.problems.append(
                    _problem("conflicting_labels", n, raw, f"{raw} is listed differently: {seen}")
                )
            continue
        for n, _, _, _ in entries[1:]:
            m.warnings.append(_problem("duplicate_row", n, raw, f"repeats line {line} (used once)"))
        if not path.is_file():
            why = "broken symlink" if is_broken_link(path) else "no such file"
            m.problems.append(_problem("missing_file", line, raw, f"{raw}: {why}"))
            continue
        m.rows.append(Row(line, path, labels, split))


def _similar_names(m: Manifest, counts: Counter) -> None:
    """Inferred classes that look like misspellings of a more frequent one."""
    for name, n in counts.items():
        others = [c for c in counts if c != name and counts[c] >= max(2 * n, n + 1)]
        hint = suggest(name, others)
        if hint:
            m.warnings.append(
                _problem("similar_labels", 0, "", f"label {name!r} ({n} row(s)){hint} (set "
                "task.classes to reject labels outside the class list)")
            )  # fmt: skip


def scan_manifest(
    file: str | Path,
    classes: list[str] | None = None,
    multilabel: bool | None = None,
    label_sep: str = ";",
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    split_seed: int = 0,
    on_bad_file: str = "skip",
    output_dir: str | Path | None = None,
    annotators: str = "majority",
    image_root: str | Path | None = None,
) -> DatasetSplits:
    """A manifest as train/val/test samples; bad rows fail or are skipped (``on_bad_file``)."""
    m = read_manifest(file, classes, multilabel, label_sep, annotators, image_root)
    if m.left_out:
        log.warning(
            "%d task(s) of %s have no usable label and are not used%s:\n%s",
            len(m.left_out), m.file, _left_out_note(m.left_out), listing(m.left_out),
        )  # fmt: skip
    for w in m.warnings:
        level = logging.INFO if w["kind"] == "no_labels" else logging.WARNING
        log.log(level, "%s%s: %s", m.file, f" line {w['line']}" if w["line"] else "", w["detail"])
    skipped_file = Path(output_dir) / SKIPPED_FILE if output_dir is not None else None
    if skipped_file is not None:
        skipped_file.unlink(missing_ok=True)
        if m.left_out and not m.problems:
            _write_skipped(skipped_file, m)
    if m.problems:
        counts = ", ".join(f"{k}: {n}" for k, n in Counter(p["kind"] for p in m.problems).items())
        if on_bad_file == "fail":
            raise VitftError(
                f"{len(m.problems)} bad row(s) in {m.file} ({counts}):\n{m.problem_list()}\n"
                "Fix the manifest (vitft check-data data=manifest lists every problem), or "
                "set data.on_bad_file=skip to train without these rows"
            )
        log.warning(
            "data.on_bad_file=skip: %d row(s) of %s not used (%s)%s:\n%s",
            len(m.problems), m.file, counts,
            f", listed in {skipped_file}" if skipped_file else "", m.problem_list(),
        )  # fmt: skip
        if skipped_file is not None:
            _write_skipped(skipped_file, m)
    return manifest_splits(m, val_fraction, test_fraction, split_seed)


def _write_skipped(out: Path, m: Manifest) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"manifest": str(m.file), "rows": m.problems, "left_out": m.left_out}
    out.write_text(json.dumps(payload, indent=2))


def manifest_splits(
    m: Manifest, val_fraction: float = 0.15, test_fraction: float = 0.15, split_seed: int = 0
) -> DatasetSplits:
    """The usable rows of a read manifest as train/val/test (carved where there is no split)."""
    if not m.rows:
        raise VitftError(f"manifest {m.file}: no usable rows left")
    index = {c: i for i, c in enumerate(m.classes)}
    samples: dict[str, list[Sample]] = defaultdict(list)
    for r in m.rows:
        if m.multilabel:
            label = tuple(int(c in r.labels) for c in m.classes)
        else:
            label = index[r.labels[0]]
        samples[r.split or "train"].append((r.path, label))
    if "train" not in samples:
        raise VitftError(f"manifest {m.file} has no train rows (split column)")
    samples = {s: sorted(v) for s, v in samples.items()}
    given = "split column" if any(r.split for r in m.rows) else "manifest"
    return carved_splits(
        samples, m.file, m.classes, val_fraction, test_fraction, split_seed, m.multilabel, given
    )
