"""Label Studio's formats, in both directions (the documented JSON, so no SDK is needed here).

Out: ``import_tasks`` turns images plus the model's guesses into an import file for an
image-classification project (each task carries the guess as a pre-annotation with its score, so
whoever labels only corrects it), and ``label_config`` is the project's XML.

In: ``read_export`` reads a project's export (JSON, or JSON-MIN) into manifest records
(``path`` and ``label`` or ``labels``). Tasks that were skipped or never annotated, and tasks
whose annotators disagree beyond what ``annotators`` resolves, are returned as left-out rows with
the reason, never dropped silently.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qs, quote, urlparse
from xml.sax.saxutils import quoteattr

from vitft.core.errors import VitftError

# What several annotators who disagree on a task come to: the most common answer (a tie is left
# out), the first submitted answer, or nothing (the task is left out).
POLICIES = ("majority", "first", "drop")
# Label Studio serves files under its LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT at this URL.
LOCAL_FILES = "/data/local-files/?d="
IMAGE_KEY = "image"
FROM_NAME = "choice"


def label_config(classes: list[str], multilabel: bool = False) -> str:
    """The labelling interface: the image and one choice per class (several when multi-label)."""
    choice = "multiple" if multilabel else "single-radio"
    lines = [
        "<View>",
        f'  <Image name="{IMAGE_KEY}" value="${IMAGE_KEY}" zoom="true"/>',
        f'  <Choices name="{FROM_NAME}" toName="{IMAGE_KEY}" choice="{choice}" showInline="true">',
        *(f"    <Choice value={quoteattr(c)}/>" for c in classes),
        "  </Choices>",
        "</View>",
    ]
    return "\n".join(lines) + "\n"


def image_url(path: str | Path, image_root: str | Path) -> str:
    """A local file as Label Studio's local-files URL (relative to its document root)."""
    path, root = Path(path).resolve(), Path(image_root).expanduser().resolve()
    try:
        rel = path.relative_to(root)
    except ValueError as err:
        raise VitftError(
            f"{path} is not under image_root={root}; set image_root to a folder that holds every "
            "image (Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT)"
        ) from err
    return LOCAL_FILES + quote(rel.as_posix())


def import_tasks(
    items: list[dict], image_root: str | Path, model_version: str = "vitft"
) -> list[dict]:
    """Import tasks from ``[{path, labels: [class, ...], score, **extra data}]``.

    ``labels`` and ``score`` become the pre-annotation; ``path`` stays in the task data, so the
    export leads back to the file whatever URL Label Studio serves it under.
    """
    tasks = []
    for item in items:
        extra = {k: v for k, v in item.items() if k not in ("path", "labels", "score")}
        data = {IMAGE_KEY: image_url(item["path"], image_root), "path": str(item["path"]), **extra}
        value = {"choices": list(item["labels"])}
        result = [{"from_name": FROM_NAME, "to_name": IMAGE_KEY, "type": "choices", "value": value}]
        pred = {"model_version": model_version, "score": float(item["score"]), "result": result}
        tasks.append({"data": data, "predictions": [pred]})
    return tasks


def write_import(
    out: str | Path, tasks: list[dict], classes: list[str], multilabel: bool = False
) -> tuple[Path, Path]:
    """Write the import JSON and ``label_config.xml`` beside it; returns both paths."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(tasks, indent=2))
    config = out.parent / "label_config.xml"
    config.write_text(label_config(classes, multilabel))
    return out, config


def _path_of(data: dict, image_root: Path) -> str:
    """The local file a task's data points at (``path``, or the image URL mapped back)."""
    if data.get("path"):
        return str(data["path"])
    url = data.get(IMAGE_KEY)
    if url is None:  # a project whose image field has another name
        url = next((v for v in data.values() if isinstance(v, str)), "")
    parsed = urlparse(str(url))
    if parsed.path.startswith("/data/local-files"):
        return str(image_root / parse_qs(parsed.query).get("d", [""])[0])
    if parsed.scheme in ("http", "https", "s3", "gs") or parsed.path.startswith("/data/upload"):
        return f"(not a local file: {url})"
    return str(url)


def _choices(result: list[dict]) -> tuple[str, ...]:
    return tuple(
        c
        for r in result
        if r.get("type") == "choices"
        for c in r.get("value", {}).get("choices", [])
    )


def _resolve(answers: list[tuple[str, ...]], policy: str) -> tuple[tuple[str, ...] | None, str]:
    """(labels, why not) of one task's submitted answers, oldest first, under ``policy``."""
    counts = Counter(answers).most_common()
    if len(counts) == 1 or policy == "first":
        return answers[0], ""
    shown = ", ".join(f"{list(a)} x{n}" for a, n in counts)
    if policy == "drop":
        return None, f"annotators disagree ({shown}); data.annotators=drop"
    if counts[0][1] == counts[1][1]:
        return None, f"annotators disagree with no majority ({shown})"
    return counts[0][0], ""


def _full_tasks(raw: list[dict]) -> list[tuple[int, dict, list[dict]]]:
    """(task id, data, annotations) of a JSON export."""
    return [
        (t.get("id", n), t.get("data", {}), t.get("annotations", [])) for n, t in enumerate(raw)
    ]


def _choice_key(raw: list[dict]) -> str:
    """JSON-MIN names the answer after the Choices control: vitft's, or the one non-data key."""
    meta = {"id", "annotator", "annotation_id", "created_at", "updated_at", "lead_time"}
    keys = {k for row in raw for k in row} - meta - {IMAGE_KEY, "path", "agreement"}
    if FROM_NAME in keys or len(keys) != 1:
        return FROM_NAME
    return keys.pop()


def _min_tasks(raw: list[dict]) -> list[tuple[int, dict, list[dict]]]:
    """The same from JSON-MIN: one flat row per annotation (a task with none: one row without
    an answer; skipped tasks are not in it), the answer under the Choices control's name."""
    key, tasks = _choice_key(raw), {}
    meta = {"annotator", "annotation_id", "created_at", "updated_at", "lead_time", "agreement"}
    for n, row in enumerate(raw):
        value = row.get(key)
        if isinstance(value, str):
            value = {"choices": [value]}
        data = {k: v for k, v in row.items() if k not in meta and k not in ("id", key)}
        task_id = row.get("id", n)
        tasks.setdefault(task_id, (task_id, data, []))
        if value is not None:
            result = [{"type": "choices", "value": value}]
            tasks[task_id][2].append({"result": result, "created_at": row.get("created_at")})
    return list(tasks.values())


def read_export(
    file: str | Path, policy: str = "majority", image_root: str | Path | None = None
) -> tuple[list[tuple[int, dict]], list[dict]]:
    """([(task position, {path, labels})], [left-out task: {kind, line, path, detail}])."""
    if policy not in POLICIES:
        raise VitftError(f"data.annotators={policy!r} is unknown; use one of {list(POLICIES)}")
    file = Path(file)
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise VitftError(f"{file}: not valid JSON ({err.msg} at line {err.lineno})") from err
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise VitftError(f"{file}: expected a Label Studio export (a JSON list of tasks)")
    full = any("annotations" in t or "data" in t for t in raw)
    root = Path(image_root).expanduser() if image_root else file.parent
    records, left_out = [], []
    for n, (task_id, data, answered) in enumerate(
        (_full_tasks if full else _min_tasks)(raw), start=1
    ):
        path = _path_of(data, root)
        done = sorted(
            (a for a in answered if not a.get("was_cancelled")),
            key=lambda a: str(a.get("created_at") or ""),
        )  # oldest first: data.annotators=first takes the first submitted answer
        answers = [_choices(a.get("result", [])) for a in done]
        why = ""
        if not done:
            why = "skipped by the annotator" if answered else "not annotated"
            kind = "skipped_task" if answered else "unlabelled_task"
        else:
            labels, why = _resolve(answers, policy)
            kind = "annotators_disagree"
        if why:
            left_out.append(
                {"kind": kind, "line": n, "path": path, "detail": f"task {task_id}: {why}"}
            )
        else:
            records.append((n, {"path": path, "labels": list(labels)}))
    if all(len(r["labels"]) <= 1 for _, r in records):  # one choice per task: single-label
        for _, r in records:
            r["label"] = (r.pop("labels") or [""])[0]
    return records, left_out
