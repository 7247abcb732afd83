"""Predict labels for image files: one ``Predictor`` over any inference backend.

A backend is anything that maps a float32 pixel batch ``(N, 3, H, W)`` to logits ``(N, classes)``
(``vitft.deploy.backends``: PyTorch, or any export folder). The ``Predictor`` owns what is the
same for every backend: decoding, the model's own preprocessing (``ImageTransform``), batching,
TTA, the reject option, the unknown flag (an OOD score on the backbone features, from the PyTorch
model or an export that computes it), the defective verdict of an operating point, bad files.
Never imports Lightning: a checkpoint is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import glob
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from transformers import AutoImageProcessor

from vitft.core.errors import VitftError
from vitft.data.folder import list_images
from vitft.data.images import load_image
from vitft.data.transforms import ImageTransform
from vitft.deploy.backends import Backend, ExportedBackend, TorchBackend
from vitft.deploy.metadata import METADATA_FILE, metadata_operating_point, metadata_scorer
from vitft.modelio.checkpoint import load_classifier
from vitft.modelio.hf import model_info
from vitft.modelio.ood import has_ood, load_ood
from vitft.modelio.operating_point import load_operating_point
from vitft.models.multilabel import DEFAULT_THRESHOLD, decide, is_multilabel, label_sets
from vitft.models.ood import OODScorer
from vitft.models.operating_point import OperatingPoint, for_model

log = logging.getLogger(__name__)

UNCERTAIN = "uncertain"
UNKNOWN = "unknown"  # the label of an image unlike the training data (OOD score > threshold)


def _multilabel_args(meta: dict) -> dict:
    """Predictor arguments from a model's vitft.json or an export's metadata.json."""
    if not is_multilabel(meta):
        return {}
    if not meta.get("thresholds"):
        log.warning("multi-label model without tuned thresholds: every class at 0.5")
    return {"multilabel": True, "tuned_thresholds": meta.get("thresholds")}


def tta_views(pixel_values: torch.Tensor) -> list[torch.Tensor]:
    """The image, its flips and (square images only) its 90/180/270 degree rotations."""
    views = [pixel_values, pixel_values.flip(-1), pixel_values.flip(-2)]
    if pixel_values.shape[-1] == pixel_values.shape[-2]:
        views += [torch.rot90(pixel_values, k, dims=(-2, -1)) for k in (1, 2, 3)]
    return views


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


def _decode_error(path: Path, err: Exception) -> str:
    if path.is_file() and path.stat().st_size == 0:
        return "zero bytes"
    if isinstance(err, Image.UnidentifiedImageError):
        return "not an image (PIL cannot identify it)"
    return f"unreadable ({type(err).__name__}: {err})"


class _Files(Dataset):
    """Decode + preprocess one file; a bad file becomes an error entry, never an exception."""

    def __init__(self, paths: Sequence[Path], transform: Callable):
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, idx: int) -> tuple[int, torch.Tensor | None, str | None, float]:
        start = time.perf_counter()
        path = self.paths[idx]
        try:
            pixels = self.transform(load_image(path))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            return idx, None, _decode_error(path, err), 0.0
        return idx, pixels, None, (time.perf_counter() - start) * 1000


def _collate(items: list) -> list:
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


class Predictor:
    """Images in, labels + probabilities out, over any backend."""

    def __init__(
        self,
        backend: Backend,
        labels: list[str],
        processor: Any,
        threshold: float = 0.0,
        class_thresholds: dict[str, float] | None = None,
        tta: bool = False,
        batch_size: int = 32,
        num_workers: int = 0,
        multilabel: bool = False,
        tuned_thresholds: dict[str, float] | None = None,
        ood: OODScorer | None = None,
        operating_point: OperatingPoint | None = None,
    ):
        self.backend = backend
        if ood is not None and not backend.scores_ood:
            raise backend.no_ood_score()
        self.ood = ood
        self.labels = list(labels)
        self.multilabel = multilabel
        self.transform = ImageTransform(processor, None)
        self.tta = tta
        self.batch_size = batch_size
        self.num_workers = num_workers
        unknown = set(class_thresholds or {}) - set(self.labels)
        if unknown:
            raise VitftError(
                f"class_thresholds names {sorted(unknown)}, not classes of the model: {self.labels}"
            )
        per_class = {c: float(threshold) for c in self.labels}
        if multilabel:  # the model's tuned thresholds, unless threshold= sets one for all
            default = float(threshold) or DEFAULT_THRESHOLD
            tuned = {} if threshold else (tuned_thresholds or {})
            per_class = {c: float(tuned.get(c, default)) for c in self.labels}
        per_class.update({c: float(t) for c, t in (class_thresholds or {}).items()})
        self.thresholds = torch.tensor([per_class[c] for c in self.labels])
        self.operating_point = for_model(operating_point, self.labels, multilabel)

    @classmethod
    def from_path(
        cls,
        model_dir: str | Path | None = None,
        ckpt_path: str | Path | None = None,
        device: str | None = "cpu",
        ood: bool = True,
        **kwargs: Any,
    ) -> Predictor:
        """A Predictor over a model dir, an export folder (onnx, onnx_int8, torch_int8, tflite,
        ...: anything with a metadata.json) or a Lightning checkpoint. ``ood``: the unknown flag,
        when the model dir has an OOD scorer (model/ood.json) or the export computes the score."""
        if model_dir and (Path(model_dir) / METADATA_FILE).is_file():
            backend = ExportedBackend(model_dir, device=device)
            meta = backend.metadata
            scorer = metadata_scorer(meta) if ood and backend.scores_ood else None
            if ood and scorer is None and has_ood(meta.get("source_model")):
                log.warning(
                    "no ood_score: the %s export was made without the OOD scorer of %s; "
                    "re-export it with export.py ood=true",
                    backend.description,
                    meta.get("source_model"),
                )
            processor = AutoImageProcessor.from_pretrained(model_dir)
            args = {"ood": scorer, "operating_point": metadata_operating_point(meta), **kwargs}
            return cls(backend, meta["labels"], processor, **_multilabel_args(meta), **args)
        model, processor = load_classifier(model_dir, ckpt_path)
        meta = {"multilabel": is_multilabel(model.config)}
        if model_dir:
            meta.update(model_info(model_dir))
        backend = TorchBackend(model, device, meta.get("training_precision", ""))
        scorer = load_ood(model_dir) if ood and has_ood(model_dir) else None
        kwargs.setdefault("operating_point", load_operating_point(model_dir, model.labels))
        return cls(backend, model.labels, processor, **_multilabel_args(meta), ood=scorer, **kwargs)

    def probabilities(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Softmax (multi-label: per-class sigmoid) probabilities ``(N, classes)``, averaged over
        TTA views when enabled."""
        views = tta_views(pixel_values) if self.tta else [pixel_values]
        norm = torch.sigmoid if self.multilabel else lambda x: x.softmax(-1)
        probs = [norm(torch.as_tensor(self.backend(v.contiguous())).float()) for v in views]
        return torch.stack(probs).mean(0)

    def outputs(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(probabilities, OOD scores or None). The OOD score is of the image as given (TTA views
        are for the class decision), from the same forward pass as its logits."""
        if self.ood is None:
            return self.probabilities(pixel_values), None
        logits, scores = self.backend.scored(pixel_values.contiguous(), self.ood)
        if self.tta:
            return self.probabilities(pixel_values), scores
        norm = torch.sigmoid if self.multilabel else lambda x: x.softmax(-1)
        return norm(logits), scores

    def packed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``outputs`` as one tensor (probabilities, then the OOD score as a last column when
        there is a scorer): what the serve micro-batcher passes around; ``unpack`` splits it."""
        probs, scores = self.outputs(pixel_values)
        return probs if scores is None else torch.cat([probs, scores[:, None]], 1)

    def unpack(self, packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        n = len(self.labels)
        return packed[:, :n], (packed[:, n] if packed.shape[1] > n else None)

    def features(self, pixel_values: torch.Tensor, views: str | None = None) -> torch.Tensor:
        """Pooled backbone features ``(N, D)`` (PyTorch backend); with ``views``, the OOD
        scorer's ``(N, V, D')`` features over those views (``vitft.models.ood.view_features``)."""
        if not hasattr(self.backend, "features"):
            raise VitftError(
                f"backbone features need the PyTorch model; a {self.backend.description} export "
                "has none: pass model_dir=<run>/model"
            )
        return self.backend.features(pixel_values.contiguous(), views)

    def _decide(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        conf, idx = probs.max(-1)
        return conf, idx, conf < self.thresholds[idx]

    def predict(self, images: Sequence[Image.Image | str | Path]) -> list[Prediction]:
        """Predict PIL images or paths (a bad path raises; use predict_files to skip them)."""
        out: list[Prediction] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            t0 = time.perf_counter()
            pils = [img if isinstance(img, Image.Image) else load_image(img) for img in chunk]
            pixels = torch.stack([self.transform(img) for img in pils])
            probs, scores = self.outputs(pixels)
            ms = (time.perf_counter() - t0) * 1000 / len(chunk)
            names = [
                getattr(img, "filename", "") if isinstance(img, Image.Image) else str(img)
                for img in chunk
            ]
            out += self.records(names, probs, [ms] * len(chunk), scores)
        return out

    def records(
        self,
        paths: list[str],
        probs: torch.Tensor,
        ms: list[float],
        ood_scores: torch.Tensor | None = None,
    ) -> list[Prediction]:
        """One Prediction per row of ``probs`` (labels, reject, unknown flag, verdict, latency)."""
        if self.multilabel:
            out = self._label_sets(paths, probs, ms)
        else:
            out = self._single_label(paths, probs, ms)
        if point := self.operating_point:
            for p, verdict in zip(out, point.verdicts(probs, self.labels), strict=True):
                p.p_defective, p.defective = verdict
        if ood_scores is not None and self.ood is not None:
            unknown = self.ood.unknown(ood_scores)
            for i, p in enumerate(out):
                p.ood_score, p.unknown = float(ood_scores[i]), bool(unknown[i])
                if p.unknown:
                    p.label = UNKNOWN
        return out

    def _single_label(self, paths: list[str], probs: torch.Tensor, ms: list[float]) -> list:
        conf, idx, reject = self._decide(probs)
        return [
            Prediction(
                path=path,
                label=UNCERTAIN if reject[i] else self.labels[idx[i]],
                predicted=self.labels[idx[i]],
                confidence=float(conf[i]),
                probs={c: float(p) for c, p in zip(self.labels, probs[i], strict=True)},
                latency_ms=round(ms[i], 3),
            )
            for i, path in enumerate(paths)
        ]

    def _label_sets(self, paths: list[str], probs: torch.Tensor, ms: list[float]) -> list:
        conf, idx = probs.max(-1)
        sets = label_sets(decide(probs, self.thresholds), self.labels)
        return [
            Prediction(
                path=path,
                label=";".join(sets[i]),
                predicted=self.labels[idx[i]],
                confidence=float(conf[i]),
                probs={c: float(p) for c, p in zip(self.labels, probs[i], strict=True)},
                latency_ms=round(ms[i], 3),
                labels=sets[i],
            )
            for i, path in enumerate(paths)
        ]

    def predict_files(
        self, inputs: str | Path | Iterable[str | Path], progress: bool | None = None
    ) -> Results:
        """Predict every image under ``inputs``; bad files are reported by name and skipped."""
        paths, bad = resolve_inputs(inputs)
        results = Results(bad_files=bad)
        for good, pixels, pre_ms in self._batches(paths, results, progress, "predict"):
            t0 = time.perf_counter()
            probs, scores = self.outputs(pixels)
            share = (time.perf_counter() - t0) * 1000 / len(good)
            results.predictions += self.records(
                [str(p) for p in good], probs, [m + share for m in pre_ms], scores
            )
        for b in results.bad_files:
            log.warning("skipped %s: %s", b.path, b.reason)
        return results

    def features_files(
        self,
        inputs: str | Path | Iterable[str | Path],
        progress: bool | None = None,
        views: str | None = None,
    ) -> tuple[torch.Tensor, list[str], list[BadFile]]:
        """Backbone features ``(N, D)`` (with ``views``: ``(N, V, D)``) of every readable image
        under ``inputs`` (no TTA), the paths they belong to, and the bad files."""
        paths, bad = resolve_inputs(inputs)
        results = Results(bad_files=bad)
        feats: list[torch.Tensor] = []
        names: list[str] = []
        for good, pixels, _ in self._batches(paths, results, progress, "features"):
            feats.append(self.features(pixels, views))
            names += [str(p) for p in good]
        if not feats:
            return torch.zeros(0, 0), names, results.bad_files
        return torch.cat(feats), names, results.bad_files

    def _batches(self, paths: list[Path], results: Results, progress: bool | None, desc: str):
        """(paths, pixels, per-image decode ms) per batch of readable files; the unreadable ones
        are added to ``results.bad_files``."""
        loader = DataLoader(
            _Files(paths, self.transform),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=_collate,
        )
        if progress is None:
            progress = len(paths) > 4 * self.batch_size
        batches: Iterable = loader
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(loader, desc=desc, unit="batch")
        for items in batches:
            good = [it for it in items if it[1] is not None]
            for idx, _, err, _ in items:
                if err is not None:
                    results.bad_files.append(BadFile(str(paths[idx]), err))
            if good:
                pixels = torch.stack([it[1] for it in good])
                yield [paths[it[0]] for it in good], pixels, [it[3] for it in good]
