"""Predict labels for image files: one ``Predictor`` over any inference backend.

A backend is anything that maps a float32 pixel batch ``(N, 3, H, W)`` to logits ``(N, classes)``
(``vitft.deploy.backends``: PyTorch, or any export folder; ``vitft.deploy.ort_backend``: an ONNX
Runtime export on numpy arrays). The ``Predictor`` owns what is the same for every backend:
decoding, the model's own preprocessing, batching, TTA, the reject option, the unknown flag (an OOD
score on the backbone features, from the PyTorch model or an export that computes it), the
defective verdict of an operating point, bad files.

An ONNX Runtime export runs on numpy end to end (preprocessing from the export's own files,
``vitft.deploy.preprocess``): this module imports neither torch nor transformers, and the PyTorch
side (``vitft.deploy.predictor_torch``) is imported only when it is asked for. Never imports
Lightning: a checkpoint is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vitft.core.errors import VitftError
from vitft.core.lazy import attach
from vitft.data.images import load_image
from vitft.deploy.arrays import contiguous, normalized, stack, torch_module, tta_views
from vitft.deploy.metadata_file import METADATA_FILE, read_metadata
from vitft.deploy.ort_backend import lean_export_parts
from vitft.deploy.predictions import (
    UNCERTAIN,
    UNKNOWN,
    BadFile,
    Files,
    Prediction,
    Results,
    collate,
    resolve_inputs,
)
from vitft.deploy.preprocess import ExportPreprocess, ProcessorPreprocess
from vitft.models.multilabel_rule import DEFAULT_THRESHOLD, decide, is_multilabel, label_sets
from vitft.models.verdict import for_model

__all__ = [
    "UNCERTAIN",
    "UNKNOWN",
    "BadFile",
    "Prediction",
    "Predictor",
    "Results",
    "resolve_inputs",
    "tta_views",
]
log = logging.getLogger(__name__)
# The PyTorch side, imported on first use: it loads torch and transformers, which an ONNX Runtime
# export run without torch never needs. The backends stay importable from here, as before.
_torch_side, _ = attach(
    "vitft.deploy",
    {
        "export_parts": "vitft.deploy.predictor_torch",
        "model_parts": "vitft.deploy.predictor_torch",
        "ImageTransform": "vitft.data.transforms",
    },
)
__getattr__, __dir__ = attach(
    __name__,
    {name: "vitft.deploy.backends" for name in ("Backend", "ExportedBackend", "TorchBackend")},
)


def _multilabel_args(meta: dict) -> dict:
    """Predictor arguments from a model's vitft.json or an export's metadata.json."""
    if not is_multilabel(meta):
        return {}
    if not meta.get("thresholds"):
        log.warning("multi-label model without tuned thresholds: every class at 0.5")
    return {"multilabel": True, "tuned_thresholds": meta.get("thresholds")}


def _image_transform(processor: Any) -> Callable:
    """PIL image -> ``(3, H, W)`` pixels: an export's own preprocessing (numpy) as it is, an HF
    image processor through ``ImageTransform`` (torch)."""
    if isinstance(processor, (ExportPreprocess, ProcessorPreprocess)):
        return processor
    return _torch_side("ImageTransform")(processor, None)


class Predictor:
    """Images in, labels + probabilities out, over any backend.

    Pixels, logits and probabilities are torch tensors over a PyTorch-side backend and numpy
    arrays over an ONNX Runtime export run without torch (``Predictor.from_path(lean=...)``);
    the decisions (``records``) are the same for both."""

    def __init__(
        self,
        backend: Any,
        labels: list[str],
        processor: Any,
        threshold: float = 0.0,
        class_thresholds: dict[str, float] | None = None,
        tta: bool = False,
        batch_size: int = 32,
        num_workers: int = 0,
        multilabel: bool = False,
        tuned_thresholds: dict[str, float] | None = None,
        ood: Any = None,
        operating_point: Any = None,
    ):
        self.backend = backend
        if ood is not None and not backend.scores_ood:
            raise backend.no_ood_score()
        self.ood = ood  # an OODScorer, or an export's ExportScorer: .threshold, .unknown(scores)
        self.labels = list(labels)
        self.multilabel = multilabel
        self.transform = _image_transform(processor)
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
        self.thresholds = np.array([per_class[c] for c in self.labels], np.float32)
        # An OperatingPoint: .verdicts(probs, labels) on numpy or torch probabilities
        self.operating_point = for_model(operating_point, self.labels, multilabel)

    @classmethod
    def from_path(
        cls,
        model_dir: str | Path | None = None,
        ckpt_path: str | Path | None = None,
        device: str | None = "cpu",
        ood: bool = True,
        lean: bool | None = None,
        **kwargs: Any,
    ) -> Predictor:
        """A Predictor over a model dir, an export folder (onnx, onnx_int8, torch_int8, tflite,
        ...: anything with a metadata.json) or a Lightning checkpoint. ``ood``: the unknown flag,
        when the model dir has an OOD scorer (model/ood.json) or the export computes the score.

        ``lean``: an ONNX Runtime export on numpy, preprocessed from its own files, without
        loading torch or transformers. None: lean unless torch is loaded already (a process that
        has it, e.g. serve or eval, gets the torch tensors it works in; the answers are the same).
        """
        export = bool(model_dir) and (Path(model_dir) / METADATA_FILE).is_file()
        meta = read_metadata(model_dir) if export else {}
        ort = meta.get("runtime") == "onnxruntime"
        if lean and not ort:
            raise VitftError(
                f"lean=true runs ONNX Runtime exports; {model_dir} is "
                + (f"a {meta.get('runtime')} export" if export else "not an export folder")
            )
        if ort and (lean or (lean is None and "torch" not in sys.modules)):
            backend, labels, processor, args = lean_export_parts(model_dir, device, ood)
        else:
            if export:
                parts = _torch_side("export_parts")(model_dir, device, ood)
            else:
                parts = _torch_side("model_parts")(model_dir, ckpt_path, device, ood)
            backend, labels, processor, args = parts
        meta = args.pop("meta")
        return cls(backend, labels, processor, **_multilabel_args(meta), **{**args, **kwargs})

    def probabilities(self, pixel_values: Any) -> Any:
        """Softmax (multi-label: per-class sigmoid) probabilities ``(N, classes)``, averaged over
        TTA views when enabled."""
        views = tta_views(pixel_values) if self.tta else [pixel_values]
        probs = [normalized(self.backend(contiguous(v)), self.multilabel) for v in views]
        return stack(probs).mean(0)

    def outputs(self, pixel_values: Any) -> tuple[Any, Any | None]:
        """(probabilities, OOD scores or None). The OOD score is of the image as given (TTA views
        are for the class decision), from the same forward pass as its logits."""
        if self.ood is None:
            return self.probabilities(pixel_values), None
        logits, scores = self.backend.scored(contiguous(pixel_values), self.ood)
        if self.tta:
            return self.probabilities(pixel_values), scores
        return normalized(logits, self.multilabel), scores

    def packed(self, pixel_values: Any) -> Any:
        """``outputs`` as one array (probabilities, then the OOD score as a last column when
        there is a scorer): what the serve micro-batcher passes around; ``unpack`` splits it."""
        probs, scores = self.outputs(pixel_values)
        if scores is None:
            return probs
        if isinstance(probs, np.ndarray):
            return np.concatenate([probs, np.asarray(scores, probs.dtype)[:, None]], 1)
        return torch_module().cat([probs, scores[:, None]], 1)

    def unpack(self, packed: Any) -> tuple[Any, Any | None]:
        n = len(self.labels)
        return packed[:, :n], (packed[:, n] if packed.shape[1] > n else None)

    def features(self, pixel_values: Any, views: str | None = None) -> Any:
        """Pooled backbone features ``(N, D)`` (PyTorch backend); with ``views``, the OOD
        scorer's ``(N, V, D')`` features over those views (``vitft.models.ood.view_features``)."""
        if not hasattr(self.backend, "features"):
            raise VitftError(
                f"backbone features need the PyTorch model; a {self.backend.description} export "
                "has none: pass model_dir=<run>/model"
            )
        return self.backend.features(pixel_values.contiguous(), views)

    def _decide(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx = probs.argmax(-1)
        conf = np.take_along_axis(probs, idx[:, None], -1)[:, 0]
        return conf, idx, conf < self.thresholds[idx]

    def predict(self, images: Sequence[Image.Image | str | Path]) -> list[Prediction]:
        """Predict PIL images or paths (a bad path raises; use predict_files to skip them)."""
        out: list[Prediction] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            t0 = time.perf_counter()
            pils = [img if isinstance(img, Image.Image) else load_image(img) for img in chunk]
            pixels = stack([self.transform(img) for img in pils])
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
        probs: Any,
        ms: list[float],
        ood_scores: Any = None,
    ) -> list[Prediction]:
        """One Prediction per row of ``probs`` (labels, reject, unknown flag, verdict, latency)."""
        rows = np.asarray(probs, np.float32)
        if self.multilabel:
            out = self._label_sets(paths, rows, ms)
        else:
            out = self._single_label(paths, rows, ms)
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

    def _single_label(self, paths: list[str], probs: np.ndarray, ms: list[float]) -> list:
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

    def _label_sets(self, paths: list[str], probs: np.ndarray, ms: list[float]) -> list:
        conf, idx = probs.max(-1), probs.argmax(-1)
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
    ) -> tuple[Any, list[str], list[BadFile]]:
        """Backbone features ``(N, D)`` (with ``views``: ``(N, V, D)``) of every readable image
        under ``inputs`` (no TTA), the paths they belong to, and the bad files."""
        paths, bad = resolve_inputs(inputs)
        results = Results(bad_files=bad)
        feats: list[Any] = []
        names: list[str] = []
        for good, pixels, _ in self._batches(paths, results, progress, "features"):
            feats.append(self.features(pixels, views))
            names += [str(p) for p in good]
        torch = torch_module()  # features come from the PyTorch model
        if not feats:
            return torch.zeros(0, 0), names, results.bad_files
        return torch.cat(feats), names, results.bad_files

    def _loader(self, paths: list[Path]) -> Iterable[list]:
        """Batches of ``_Files`` items; worker processes (num_workers > 0) by torch's DataLoader."""
        files = Files(paths, self.transform)
        if self.num_workers <= 0:
            for start in range(0, len(files), self.batch_size):
                yield [files[i] for i in range(start, min(start + self.batch_size, len(files)))]
            return
        from torch.utils.data import DataLoader

        yield from DataLoader(
            files, batch_size=self.batch_size, num_workers=self.num_workers, collate_fn=collate
        )

    def _batches(self, paths: list[Path], results: Results, progress: bool | None, desc: str):
        """(paths, pixels, per-image decode ms) per batch of readable files; the unreadable ones
        are added to ``results.bad_files``."""
        if progress is None:
            progress = len(paths) > 4 * self.batch_size
        batches: Iterable = self._loader(paths)
        if progress:
            from tqdm.auto import tqdm

            total = -(-len(paths) // self.batch_size)
            batches = tqdm(batches, desc=desc, unit="batch", total=total)
        for items in batches:
            good = [it for it in items if it[1] is not None]
            for idx, _, err, _ in items:
                if err is not None:
                    results.bad_files.append(BadFile(str(paths[idx]), err))
            if good:
                pixels = stack([it[1] for it in good])
                yield [paths[it[0]] for it in good], pixels, [it[3] for it in good]
