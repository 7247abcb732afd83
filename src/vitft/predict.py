"""Predict labels for image files: one ``Predictor`` over any inference backend.

A backend is anything that maps a float32 pixel batch ``(N, 3, H, W)`` to logits ``(N, classes)``
(``TorchBackend`` here; ONNX/TFLite exports plug in the same way). The ``Predictor`` owns what is
the same for every backend: decoding (``load_image``), the model's own preprocessing
(``ImageTransform``), batching, test-time augmentation, the reject option and bad-file handling.
Never imports Lightning: a checkpoint is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from transformers import AutoConfig, AutoModelForImageClassification

from vitft.data.folder import list_images
from vitft.data.images import load_image
from vitft.data.transforms import ImageTransform
from vitft.errors import VitftError
from vitft.export.hf import load_model, model_info
from vitft.export.metadata import read_metadata
from vitft.models.classifier import ImageClassifier
from vitft.multilabel import DEFAULT_THRESHOLD, decide, is_multilabel, label_sets

log = logging.getLogger(__name__)

UNCERTAIN = "uncertain"
# (N, 3, H, W) float32 pixels -> (N, classes) logits
Backend = Callable[[torch.Tensor], torch.Tensor]


def load_checkpoint(ckpt_path: str | Path) -> tuple[ImageClassifier, Any]:
    """Rebuild the plain model + image processor from a vitft Lightning checkpoint."""
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise VitftError(f"ckpt_path={ckpt_path} does not exist (or is not a file)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a torch file, or pickled code (weights_only)
        raise VitftError(
            f"could not read checkpoint {path} ({type(err).__name__}: {err}); is it complete "
            "and written by train.py?"
        ) from err
    meta = ckpt.get("vitft")
    if not meta:
        raise VitftError(
            f"{path} is not a vitft checkpoint (no 'vitft' block): pass a checkpoint written by "
            "train.py (outputs/<run>/checkpoints/best.ckpt) or model_dir=outputs/<run>/model"
        )
    backbone_cfg = dict(meta["backbone_config"])
    config = AutoConfig.for_model(backbone_cfg.pop("model_type"), **backbone_cfg)
    hf_model = AutoModelForImageClassification.from_config(config)
    model = ImageClassifier.from_hf(hf_model, meta["head"])
    prefix = "model."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    model.load_state_dict(state)
    proc = dict(meta["processor"])
    processor = getattr(transformers, proc.pop("image_processor_type")).from_dict(proc)
    return model.eval(), processor


def load_classifier(
    model_dir: str | Path | None = None, ckpt_path: str | Path | None = None
) -> tuple[ImageClassifier, Any]:
    """The model + processor from exactly one of an HF model dir or a Lightning checkpoint."""
    if bool(model_dir) == bool(ckpt_path):
        raise VitftError(
            "set exactly one of model_dir=<run>/model or ckpt_path=<run>/checkpoints/best.ckpt"
        )
    return load_model(model_dir) if model_dir else load_checkpoint(ckpt_path)


def exported_backend(folder: str | Path, threads: int | None = None):
    """(backend, labels, processor) of an export folder written by export.py."""
    from transformers import AutoImageProcessor

    from vitft.export.runtime import load_exported

    run, meta = load_exported(folder, threads=threads)

    def backend(pixel_values: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(run(pixel_values.numpy().astype("float32")))

    return backend, meta["labels"], AutoImageProcessor.from_pretrained(folder)


def _multilabel_args(meta: dict) -> dict:
    """Predictor arguments from a model's vitft.json or an export's metadata.json."""
    if not is_multilabel(meta):
        return {}
    if not meta.get("thresholds"):
        log.warning("multi-label model without tuned thresholds: every class at 0.5")
    return {"multilabel": True, "tuned_thresholds": meta.get("thresholds")}


def pick_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class TorchBackend:
    """The PyTorch model as a backend (eval mode, no grad)."""

    def __init__(self, model: torch.nn.Module, device: str | torch.device | None = "cpu"):
        self.device = pick_device(str(device) if device else None)
        self.model = model.eval().to(self.device)

    @torch.inference_mode()
    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values.to(self.device)).float().cpu()


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
    ):
        self.backend = backend
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

    @classmethod
    def from_path(
        cls,
        model_dir: str | Path | None = None,
        ckpt_path: str | Path | None = None,
        device: str | None = "cpu",
        **kwargs: Any,
    ) -> Predictor:
        """A Predictor over a model dir, an export folder (onnx, onnx_int8, torch_int8, tflite,
        ...: anything with a metadata.json) or a Lightning checkpoint."""
        if model_dir and (Path(model_dir) / "metadata.json").is_file():
            meta = read_metadata(model_dir)
            return cls(*exported_backend(model_dir), **_multilabel_args(meta), **kwargs)
        model, processor = load_classifier(model_dir, ckpt_path)
        meta = {"multilabel": is_multilabel(model.config)}
        if model_dir:
            meta.update(model_info(model_dir))
        backend = TorchBackend(model, device)
        return cls(backend, model.labels, processor, **_multilabel_args(meta), **kwargs)

    def probabilities(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Softmax (multi-label: per-class sigmoid) probabilities ``(N, classes)``, averaged over
        TTA views when enabled."""
        views = tta_views(pixel_values) if self.tta else [pixel_values]
        norm = torch.sigmoid if self.multilabel else lambda x: x.softmax(-1)
        probs = [norm(torch.as_tensor(self.backend(v.contiguous())).float()) for v in views]
        return torch.stack(probs).mean(0)

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
            probs = self.probabilities(pixels)
            ms = (time.perf_counter() - t0) * 1000 / len(chunk)
            names = [
                getattr(img, "filename", "") if isinstance(img, Image.Image) else str(img)
                for img in chunk
            ]
            out += self.records(names, probs, [ms] * len(chunk))
        return out

    def records(self, paths: list[str], probs: torch.Tensor, ms: list[float]) -> list[Prediction]:
        """One Prediction per row of ``probs`` (labels, reject option, latency)."""
        if self.multilabel:
            return self._label_sets(paths, probs, ms)
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

            batches = tqdm(loader, desc="predict", unit="batch")
        for items in batches:
            good = [it for it in items if it[1] is not None]
            for idx, _, err, _ in items:
                if err is not None:
                    results.bad_files.append(BadFile(str(paths[idx]), err))
            if not good:
                continue
            t0 = time.perf_counter()
            probs = self.probabilities(torch.stack([it[1] for it in good]))
            share = (time.perf_counter() - t0) * 1000 / len(good)
            results.predictions += self.records(
                [str(paths[it[0]]) for it in good], probs, [it[3] + share for it in good]
            )
        for b in results.bad_files:
            log.warning("skipped %s: %s", b.path, b.reason)
        return results


def write_predictions(results: Results, output: str | Path, labels: list[str]) -> Path:
    """CSV (one row per image, ``prob_<class>`` columns) or JSON (by the file's suffix)."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix.lower() == ".json":
        doc = {
            "labels": labels,
            "predictions": [asdict(p) for p in results.predictions],
            "bad_files": [asdict(b) for b in results.bad_files],
        }
        output.write_text(json.dumps(doc, indent=2))
        return output
    with output.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "path",
                "label",
                "predicted",
                "confidence",
                *[f"prob_{c}" for c in labels],
                "latency_ms",
            ]
        )
        for p in results.predictions:
            writer.writerow(
                [p.path, p.label, p.predicted, f"{p.confidence:.6f}"]
                + [f"{p.probs[c]:.6f}" for c in labels]
                + [f"{p.latency_ms:.3f}"]
            )
    return output


def predict(cfg: Any) -> Results:
    """predict.py: predict ``cfg.inputs`` and write ``cfg.output`` (CSV, or JSON by suffix)."""
    if cfg.get("format") not in (None, "csv", "json"):
        raise VitftError(f"format={cfg.format!r} is unknown; use csv or json")
    if not cfg.get("inputs"):
        raise VitftError("set inputs=<image | folder | glob> (a list works too)")
    transformers.utils.logging.disable_progress_bar()
    thresholds = cfg.get("class_thresholds") or {}
    predictor = Predictor.from_path(
        cfg.get("model_dir"),
        cfg.get("ckpt_path"),
        device=cfg.get("device"),
        threshold=float(cfg.get("threshold") or 0.0),
        class_thresholds={str(k): float(v) for k, v in dict(thresholds).items()},
        tta=bool(cfg.get("tta")),
        batch_size=int(cfg.get("batch_size", 32)),
        num_workers=int(cfg.get("num_workers", 0)),
    )
    inputs = cfg.inputs if isinstance(cfg.inputs, str) else list(cfg.inputs)
    results = predictor.predict_files(inputs, progress=cfg.get("progress"))
    output = Path(cfg.output)
    if cfg.get("format"):
        output = output.with_suffix("." + cfg.format)
    write_predictions(results, output, predictor.labels)
    n_unc = sum(p.label == UNCERTAIN for p in results.predictions)
    print(
        f"predicted {len(results.predictions)} image(s) -> {output}"
        + (f"; {n_unc} uncertain (below threshold)" if n_unc else "")
    )
    if results.bad_files:
        print(f"skipped {len(results.bad_files)} bad file(s):")
        for b in results.bad_files:
            print(f"  {b.path}: {b.reason}")
    return results
