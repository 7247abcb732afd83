"""The state of one `vitft serve` service and its request handlers (serve.create_app routes to
them): the images of a request are decoded one at a time on ``decode_threads`` threads, micro-
batched, and answered per image; metrics, drift and capture are fed from the answers.

Pixels are numpy arrays for an ONNX Runtime export and torch tensors for a PyTorch model dir;
this module imports no torch (the heatmap side, ``serve_heatmap``, loads only for a model dir).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vitft import __version__
from vitft.core.errors import VitftError
from vitft.core.files import sha256
from vitft.core.lazy import attach
from vitft.deploy.arrays import stack
from vitft.deploy.batching import ConcurrencyLimit, MicroBatcher
from vitft.deploy.metadata_file import METADATA_FILE, read_metadata
from vitft.deploy.predictor import UNCERTAIN, UNKNOWN, Predictor, resolve_inputs
from vitft.deploy.serve_capture import Capture, flag_of
from vitft.deploy.serve_input import (
    DEFAULT_FORMATS,
    BadInput,
    ImageLimits,
    ItemError,
    decode,
    request_images,
)
from vitft.deploy.serve_metrics import DriftWindow, Reference, ServeMetrics

try:  # the `serve` extra
    from fastapi import Request
    from fastapi.responses import JSONResponse
except ImportError:  # pragma: no cover - serve.create_app says what to install
    Request = JSONResponse = Any  # type: ignore[assignment,misc]

log = logging.getLogger(__name__)
# The heatmap's PyTorch side, imported on first use: only a PyTorch model dir has heatmaps.
_heatmap, _ = attach(
    "vitft.deploy",
    {n: "vitft.deploy.serve_heatmap" for n in ("heatmap_explainer", "heatmap_png", "methods_for")},
)


@dataclass
class ServeSettings:
    """The limits and options of one service (conf/serve.yaml documents each)."""

    max_request_mb: float = 20.0
    max_images: int = 64
    max_concurrency: int = 32
    batch_max_size: int = 16
    batch_max_wait_ms: float = 5.0
    max_pixels: int = 40_000_000
    image_formats: tuple[str, ...] = DEFAULT_FORMATS
    body_timeout_s: float = 60.0
    max_uploads_mb: float = 1000.0  # bodies held in memory by all requests together
    timeout_s: float = 60.0
    decode_threads: int = 2
    api_key: str | None = None
    # "*": no Host check. `vitft serve` defaults to the loopback names plus the host it binds.
    allowed_hosts: tuple[str, ...] = ("*",)
    cors_origins: tuple[str, ...] = ()
    capture_dir: str | None = None
    capture_max_mb: float = 1000.0
    drift_window: int = 500
    drift_reference: str | None = None
    drift_reference_max: int = 500
    drift_max_ks: float = 0.2

    def public(self) -> dict:
        """The limits /metadata shows: no key, no server path."""
        hidden = {"api_key", "capture_dir", "drift_reference"}
        return {k: v for k, v in asdict(self).items() if k not in hidden}


def model_facts(model_dir: Path, predictor: Predictor) -> dict:
    """What /metadata reports about the served model."""
    if (model_dir / METADATA_FILE).is_file():
        meta = read_metadata(model_dir)
        weights = model_dir / meta["file"]
        fmt, precision, runtime = meta["format"], meta.get("precision"), meta.get("runtime")
    else:
        weights = model_dir / "model.safetensors"
        fmt, precision, runtime = "pytorch", "fp32", "pytorch"
    return {  # never the model dir's path: a response must not show the server's folders
        "model_name": model_dir.name,
        "format": fmt,
        "precision": precision,
        "runtime": runtime,
        "providers": list(predictor.backend.providers),  # what really runs it (e.g. CUDA)
        "model_file": weights.name,
        "model_sha256": sha256(weights) if weights.is_file() else None,
        "classes": predictor.labels,
        "thresholds": {
            c: float(t) for c, t in zip(predictor.labels, predictor.thresholds, strict=True)
        },
        "uncertain_label": UNCERTAIN,
        # The unknown flag (model/ood.json, or an export's metadata.json ood block): predictions
        # carry ood_score and unknown, and label "unknown" above the threshold. None: no scorer.
        "ood": {
            "method": predictor.ood.method,
            "threshold": predictor.ood.threshold,
            "acceptance": predictor.ood.acceptance,
            "unknown_label": UNKNOWN,
        }
        if predictor.ood is not None
        else None,
        "tta": predictor.tta,
        "vitft_version": __version__,
    }


def has_heatmap(predictor: Predictor) -> bool:
    """Heatmaps need the PyTorch model of a backbone that explain supports."""
    model = predictor.backend.torch_model
    return model is not None and bool(_heatmap("methods_for")(model))


def drift_reference(predictor: Predictor, folder: str | None, limit: int) -> Reference:
    """The validation reference of the drift window: the unknown rate the OOD threshold was
    calibrated to, and (``folder``: val images) their confidence and OOD-score distributions."""
    rate = None
    if predictor.ood is not None:
        accepted = (getattr(predictor.ood, "info", None) or {}).get("calibration_accepted")
        accepted = accepted if accepted is not None else predictor.ood.acceptance
        rate = None if accepted is None else 1.0 - float(accepted)
    if not folder:
        return Reference(rate)
    paths, _ = resolve_inputs(Path(folder).expanduser())
    if not paths:
        raise VitftError(f"drift.reference={folder} has no images: point it at the val images")
    paths = paths[:: max(1, -(-len(paths) // max(1, limit)))]  # spread over the folder
    preds = predictor.predict_files(paths, progress=False).predictions
    scores = [p.ood_score for p in preds if p.ood_score is not None]
    log.info("drift: reference of %d images from drift.reference", len(preds))
    return Reference(
        rate, np.array([p.confidence for p in preds]), np.array(scores) if scores else None
    )


def result_row(record: Any) -> dict:
    """A predictor result as the client sees it: every key passed through, plus ``uncertain``."""
    row = asdict(record) if is_dataclass(record) else dict(record)
    row["name"] = row.pop("path")
    row.pop("latency_ms", None)  # the request's latency_ms is the one that counts
    row["uncertain"] = row["label"] == UNCERTAIN
    return row


class Service:
    """The state of one service and its request handlers (create_app routes to them)."""

    def __init__(self, model_dir: Path, predictor: Predictor, settings: ServeSettings):
        self.model_dir, self.predictor, self.settings = model_dir, predictor, settings
        self.facts = model_facts(model_dir, predictor)
        self.heatmap = has_heatmap(predictor)
        self.limits = ImageLimits(int(settings.max_pixels), tuple(settings.image_formats))
        self.limit = ConcurrencyLimit(settings.max_concurrency)
        self.max_bytes = int(settings.max_request_mb * 1e6)
        drift = DriftWindow(Reference(), settings.drift_window, settings.drift_max_ks)
        self.metrics = ServeMetrics(self.facts, drift)
        self.batcher = MicroBatcher(
            predictor.packed,
            settings.batch_max_size,
            settings.batch_max_wait_ms,
            on_batch=self.metrics.batch_size.observe,
        )
        self.metrics.queue_depth.set_function(lambda: self.batcher.depth)
        self.metrics.in_flight.set_function(lambda: self.limit.in_flight)
        self.metrics.restarts.set_function(lambda: self.batcher.restarts)
        self.capture = (
            Capture(settings.capture_dir, settings.capture_max_mb)
            if (settings.capture_dir)
            else None
        )
        self.pool = ThreadPoolExecutor(max(1, settings.decode_threads), "vitft-decode")
        self.ready = False
        self.explainer: Any = None
        self.explain_lock = asyncio.Lock()

    async def start(self) -> None:
        await self.batcher.start()
        # warm-up: the first pass is the slowest; the reference needs the model too
        blank = stack([self.predictor.transform(Image.new("RGB", (8, 8)))]) * 0
        await self.batcher.submit(blank, max(self.settings.timeout_s, 300))
        s = self.settings  # the reference predicts up to drift.reference_max images: more time
        args = (self.predictor, s.drift_reference, s.drift_reference_max)
        ref = await self.in_pool(drift_reference, *args, wait=max(s.timeout_s, 900))
        self.metrics.drift.reference = ref
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        await self.batcher.stop()
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def in_pool(self, fn: Any, *args: Any, wait: float | None = None) -> Any:
        """``fn(*args)`` on the decode threads, within ``wait`` s (default: ``timeout_s``)."""
        wait = self.settings.timeout_s if wait is None else wait
        future = asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
        try:
            return await asyncio.wait_for(future, wait)
        except asyncio.TimeoutError as err:
            raise BadInput(504, f"no answer within timeout_s={wait:g} s") from err

    async def forward(self, images: list[Any]) -> list[Any]:
        try:
            return await self.batcher.submit_each(images, self.settings.timeout_s)
        except asyncio.TimeoutError as err:
            raise BadInput(
                504, f"no answer within timeout_s={self.settings.timeout_s:g} s"
            ) from err

    @asynccontextmanager
    async def slot(self):
        if not self.limit.try_acquire():
            raise BadInput(429, f"busy: {self.limit.limit} requests in flight (max_concurrency)")
        try:
            yield
        finally:
            self.limit.release()

    async def raw_images(self, request: Request) -> list[tuple[str, Any]]:
        n_max = self.settings.max_images
        raw = await request_images(request, self.max_bytes, n_max + 1)
        if not raw:
            raise BadInput(400, "no image in the request")
        if len(raw) > n_max:
            raise BadInput(413, f"{len(raw)} images; at most max_images={n_max}")
        return raw

    def prepare(self, raw: list[tuple[str, Any]]) -> list[Any]:
        """Each image decoded and preprocessed, one at a time (one full-size image in memory
        per decode thread), or its ItemError."""
        out: list[Any] = []  # pixels (numpy or torch) or ItemError
        for name, data in raw:
            try:
                if isinstance(data, BadInput):
                    raise data
                out.append(self.predictor.transform(decode(data, name, self.limits)))
            except BadInput as err:
                out.append(ItemError(name, err.status, err.reason))
            except Exception as err:  # noqa: BLE001  (the image's error, not the request's)
                log.warning("preprocessing %s failed: %r", name, err)
                out.append(ItemError(name, 400, f"{name}: cannot be preprocessed"))
        return out

    async def predict(self, request: Request) -> JSONResponse:
        t0 = time.perf_counter()
        raw = await self.raw_images(request)
        async with self.slot():
            items = await self.in_pool(self.prepare, raw)
            good = [i for i, x in enumerate(items) if not isinstance(x, ItemError)]
            outs = await self.forward([items[i] for i in good])
        rid = request.state.request_id
        for i, out in zip(good, outs, strict=True):
            if isinstance(out, BaseException):
                log.error("request %s: the model failed on %s: %r", rid, raw[i][0], out)
                items[i] = ItemError(raw[i][0], 500, f"the model failed on this image ({rid})")
        ms = (time.perf_counter() - t0) * 1000
        rows = self.answer(raw, items, outs, good, ms)
        await self.keep_flagged(raw, rows, rid)
        errors = [r for r in rows if "error" in r]
        request.state.log = {"images": len(rows), "errors": len(errors)}
        doc: dict[str, Any] = {
            "predictions": rows,
            "errors": len(errors),
            "latency_ms": round(ms, 3),
        }
        status = 200
        if len(errors) == len(rows):  # nothing to answer: the request fails with its first error
            status = errors[0]["status"]
            doc["detail"] = "; ".join(e["error"] for e in errors[:3])
        return JSONResponse(doc, status_code=status, headers={"X-Latency-Ms": f"{ms:.3f}"})

    def answer(self, raw: list, items: list, outs: list, good: list[int], ms: float) -> list[dict]:
        """One row per image, in the request's order: its prediction or its error."""
        rows: list[dict] = [x.as_dict() if isinstance(x, ItemError) else {} for x in items]
        ok = [
            (i, o) for i, o in zip(good, outs, strict=True) if not isinstance(items[i], ItemError)
        ]
        if ok:
            probs, scores = self.predictor.unpack(stack([o for _, o in ok]))
            names = [raw[i][0] for i, _ in ok]
            records = self.predictor.records(names, probs, [ms] * len(ok), scores)
            for (i, _), record in zip(ok, records, strict=True):
                rows[i] = result_row(record)
                self.metrics.prediction(rows[i])
        for row in rows:
            if "error" in row:
                self.metrics.images.labels("error").inc()
        return rows

    async def keep_flagged(self, raw: list, rows: list[dict], rid: str) -> None:
        """capture_dir: save the unknown and uncertain images of this request."""
        if self.capture is None:
            return
        for (_, data), row in zip(raw, rows, strict=True):
            flag = None if "error" in row else flag_of(row)
            if flag is not None:
                kept = await self.in_pool(self.capture.save, data, row, flag, rid)
                self.metrics.captured.labels("saved" if kept else "full").inc()

    async def explain(self, request: Request) -> JSONResponse:
        if not self.heatmap:
            raise BadInput(
                404,
                "heatmaps need a PyTorch ViT, MobileViT or ConvNeXt model dir; this is "
                f"{self.facts['format']}",
            )
        name, data = (await self.raw_images(request))[0]
        if isinstance(data, BadInput):
            raise data
        async with self.slot():
            image = await self.in_pool(decode, data, name, self.limits)
            try:  # one gradient pass at a time
                await asyncio.wait_for(self.explain_lock.acquire(), self.settings.timeout_s)
            except asyncio.TimeoutError as err:
                raise BadInput(503, "busy: another heatmap is being computed") from err
            try:
                if self.explainer is None:
                    make = _heatmap("heatmap_explainer")
                    self.explainer = await self.in_pool(make, self.model_dir)
                args = (self.explainer, self.predictor, image)
                png = await self.in_pool(_heatmap("heatmap_png"), *args)
            finally:
                self.explain_lock.release()
        return JSONResponse({"name": name, "method": "gradattn", "heatmap_png": png})

    def readiness(self) -> JSONResponse:
        why = None
        if not self.ready:
            why = "loading the model"
        elif not self.batcher.alive:
            why = "the batch worker is not running"
        elif self.batcher.stalled(self.settings.timeout_s):
            why = f"a forward pass has run for over timeout_s={self.settings.timeout_s:g} s"
        doc = {"ready": why is None, **({"reason": why} if why else {})}
        return JSONResponse(doc, status_code=200 if why is None else 503)

    def metadata(self) -> dict:
        return {
            **self.facts,
            "heatmap": self.heatmap,
            "limits": self.settings.public(),
            "auth": self.settings.api_key is not None,
            "capture": self.capture is not None,
            "in_flight": self.limit.in_flight,
            "recent_batch_sizes": self.batcher.batch_sizes[-32:],
            "drift": self.metrics.drift.last,
        }
