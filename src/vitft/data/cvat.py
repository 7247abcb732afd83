"""CVAT for images 1.1 (XML): image-level tags as classification labels.

``<annotations><image name="a/b.png"><tag label="crack"/></image>...</annotations>``: one class per
tag (several tags: multi-label). Image names are relative to ``image_root`` (the folder the task's
images were uploaded from; default the XML's folder). Images without a tag are returned as
left-out rows with the reason; shapes (boxes, polygons) are not classification labels and are
ignored.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from vitft.core.errors import VitftError


def read_cvat(
    file: str | Path, image_root: str | Path | None = None
) -> tuple[list[tuple[int, dict]], list[dict]]:
    """([(image position, {path, labels})], [left-out image: {kind, line, path, detail}])."""
    file = Path(file)
    try:
        root = ET.parse(file).getroot()
    except ET.ParseError as err:
        raise VitftError(f"{file}: not valid XML ({err})") from err
    if root.tag != "annotations":
        raise VitftError(
            f"{file}: expected a CVAT for images 1.1 export (<annotations> root), got <{root.tag}>"
        )
    base = Path(image_root).expanduser() if image_root else file.parent
    records, left_out = [], []
    for n, image in enumerate(root.iter("image"), start=1):
        name = image.get("name") or ""
        path = str(base / name) if name else ""
        labels = sorted({t.get("label", "") for t in image.findall("tag")} - {""})
        if labels:
            records.append((n, {"path": path, "labels": labels}))
        else:
            detail = f"image id {image.get('id')} ({name}): no tag"
            left_out.append({"kind": "unlabelled_task", "line": n, "path": path, "detail": detail})
    if not records and not left_out:
        raise VitftError(f"{file}: no <image> elements (export the task as CVAT for images 1.1)")
    if all(len(r["labels"]) == 1 for _, r in records):
        for _, r in records:
            r["label"] = r.pop("labels")[0]
    return records, left_out
