"""What a prediction is (``Prediction``, ``BadFile``, ``Results``), and the image files it is made
from: inputs resolved to files, each decoded and preprocessed, a bad file an entry, never an
exception."""

from __future__ import annotations

import glob
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from vitft.core.errors import VitftError
from vitft.data.folder import list_images
from vitft.data.images import load_image

UNCERTAIN = "uncertain"
UNKNOWN = "unknown"  # the label of an image unlike the training data (OOD score > threshold)


@dataclass
class Prediction:
    path: str
    label: str  # the predicted class, or "uncertain" below its threshold
    predicted: str  # the most probable class, whatever its confidence
    confidence: float
    probs: dict[str, float]
    latency_ms: float  # decode + preprocess of this image + its share of the batch's forward
    # Multi-label models: every class at or above its threshold (empty: none); else None.
    labels: list[str] | None = None
    # With an OOD scorer (model/ood.json, or an export's metadata ood block): higher is less like
    # the training data; unknown: above the scorer's threshold (then label is "unknown"). Else None.
    ood_score: float | None = None
    unknown: bool | None = None
    # With an operating point (model/operating_point.json, an export's metadata): defective is
    # p_defective >= its threshold; label stays the class (it may be an ok one). Else None.
    p_defective: float | None = None
    defective: bool | None = None


@dataclass
class BadFile:
    path: str
    reason: str


@dataclass
class Results:
    predictions: list[Prediction] = field(default_factory=list)
    bad_files: list[BadFile] = field(default_factory=list)


def decode_error(path: Path, err: Exception) -> str:
    if path.is_file() and path.stat().st_size == 0:
        return "zero bytes"
    if isinstance(err, Image.UnidentifiedImageError):
        return "not an image (PIL cannot identify it)"
    return f"unreadable ({type(err).__name__}: {err})"


class Files:
    """Decode + preprocess one file; a bad file becomes an error entry, never an exception."""

    def __init__(self, paths: Sequence[Path], transform: Callable):
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, idx: int) -> tuple[int, Any, str | None, float]:
        start = time.perf_counter()
        path = self.paths[idx]
        try:
            pixels = self.transform(load_image(path))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            return idx, None, decode_error(path, err), 0.0
        return idx, pixels, None, (time.perf_counter() - start) * 1000


def collate(items: list) -> list:
    return items


def resolve_inputs(inputs: str | Path | Iterable[str | Path]) -> tuple[list[Path], list[BadFile]]:
    """Image files from files, folders (recursive) and globs; non-image files are reported."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    files: list[Path] = []
    bad: list[BadFile] = []
    for item in inputs:
        p = Path(str(item)).expanduser()
        if p.is_dir():
            images, other = list_images(p)
            files += images
            bad += [BadFile(str(o), "not an image (extension)") for o in other]
        elif p.is_file():
            files.append(p)
        else:
            matches = sorted(Path(m) for m in glob.glob(str(p), recursive=True))
            found = [m for m in matches if m.is_file()]
            if not found:
                raise VitftError(f"inputs={item}: no such file, folder, or glob match")
            files += found
    return files, bad
