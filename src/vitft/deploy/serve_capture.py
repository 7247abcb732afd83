"""``capture_dir=``: keep what the line saw that the model was unsure of, for the next labelling.

Images flagged unknown or uncertain are saved as received (their own bytes and format) under
``<capture_dir>/images/<day>/``, and one row per image is appended to
``<capture_dir>/manifest.csv`` with the columns ``data=manifest`` reads (``path`` relative to the
manifest, ``label``: the model's guess, to be corrected by whoever labels it) plus the flag,
confidence, OOD score, request id and time. ``vitft select pool=<capture_dir>/images`` ranks
them. Once the images reach ``capture_max_mb``, new ones are counted but not saved.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path

from PIL import Image

log = logging.getLogger(__name__)

MANIFEST = "manifest.csv"
COLUMNS = ["path", "label", "flag", "predicted", "confidence", "ood_score", "name", "request_id"]
COLUMNS.append("time")
SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}


def flag_of(row: dict) -> str | None:
    """ "unknown", "uncertain" or None (not worth capturing) for one prediction row."""
    if row.get("unknown"):
        return "unknown"
    return "uncertain" if row.get("uncertain") else None


class Capture:
    """Saves flagged images and their manifest rows under ``folder``, up to ``max_mb``."""

    def __init__(self, folder: str | Path, max_mb: float = 1000.0):
        self.folder = Path(folder).expanduser()
        self.images = self.folder / "images"
        self.images.mkdir(parents=True, exist_ok=True)
        self.manifest = self.folder / MANIFEST
        self.max_bytes = int(max_mb * 1e6)
        self.used = sum(p.stat().st_size for p in self.images.rglob("*") if p.is_file())
        self.full_logged = False
        self._lock = threading.Lock()  # saves come from several request threads

    def save(self, data: bytes, row: dict, flag: str, request_id: str) -> bool:
        """Save one flagged image and its manifest row; False when the folder is full."""
        with self._lock:
            if self.used + len(data) > self.max_bytes:
                if not self.full_logged:
                    log.warning("capture_dir is full (capture_max_mb); new images are not saved")
                    self.full_logged = True
                return False
            fmt = Image.open(io.BytesIO(data)).format  # header only: the bytes passed decode
            now = datetime.now(timezone.utc)
            rel = Path("images", now.strftime("%Y-%m-%d"))
            (self.folder / rel).mkdir(parents=True, exist_ok=True)
            # Never the client's file name in a path: it is only a column of the manifest.
            file = rel / f"{now.strftime('%H%M%S')}_{uuid.uuid4().hex[:12]}{SUFFIX.get(fmt, '')}"
            (self.folder / file).write_bytes(data)
            self.used += len(data)
            self._append(file, row, flag, request_id, now)
            return True

    def _append(self, file: Path, row: dict, flag: str, rid: str, now: datetime) -> None:
        new = not self.manifest.is_file()
        with self.manifest.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            if new:
                w.writeheader()
            w.writerow(
                {
                    "path": file.as_posix(),
                    "label": row["predicted"],
                    "flag": flag,
                    "predicted": row["predicted"],
                    "confidence": f"{row['confidence']:.6g}",
                    "ood_score": "" if row.get("ood_score") is None else f"{row['ood_score']:.6g}",
                    "name": re.sub(r"[^\w.\- ]", "_", str(row.get("name", "")))[:120],
                    "request_id": rid,
                    "time": now.isoformat(timespec="seconds"),
                }
            )
