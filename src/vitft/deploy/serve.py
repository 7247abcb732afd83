"""``vitft serve``: a REST service (FastAPI + uvicorn) over any Predictor backend.

POST /predict    one or many images (multipart files, JSON base64, or a raw image body)
POST /explain    one image -> label + heatmap PNG (PyTorch ViT, MobileViT, ConvNeXt)
GET  /health     the process is up;   GET /ready   the model is loaded and the worker answers
GET  /metadata   classes, thresholds, model sha256, format, vitft version, limits, drift
GET  /metrics    Prometheus metrics (serve_metrics)
GET  /           a small page: drop images, see label, confidence and heatmap

Each request passes the gate (serve_guard: Host, API key, the body in full within its size and
time limits), then its images are checked from their headers and decoded one at a time on
``decode_threads`` threads (serve_input), micro-batched (batching) and answered per image: a bad
image is an item error, never the request's. ``max_concurrency`` requests hold a slot at once
(429 with Retry-After beyond it, never a queue that grows until the process dies).
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vitft import __version__
from vitft.core.errors import VitftError
from vitft.core.plots import overlay
from vitft.deploy.batching import ConcurrencyLimit, MicroBatcher
from vitft.deploy.explain import Explainer, methods_for
from vitft.deploy.metadata import METADATA_FILE, read_metadata, sha256
from vitft.deploy.predictor import UNCERTAIN, UNKNOWN, Predictor, resolve_inputs
from vitft.deploy.serve_capture import Capture, flag_of
from vitft.deploy.serve_guard import LOCAL_HOSTS, Access, Gate
from vitft.deploy.serve_input import (
    DEFAULT_FORMATS,
    BadInput,
    ImageLimits,
    ItemError,
    decode,
    request_images,
)
from vitft.deploy.serve_metrics import METRICS_IMPORT_ERROR, DriftWindow, Reference, ServeMetrics
from vitft.modelio.hf import load_model

try:  # the `serve` extra: pip install "vitft[serve]"
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.exceptions import HTTPException
    from starlette.middleware.cors import CORSMiddleware
except ImportError as _err:  # pragma: no cover - exercised only without the extra
    FastAPI = None  # type: ignore[assignment,misc]
    _IMPORT_ERROR: ImportError | None = _err
else:
    _IMPORT_ERROR = METRICS_IMPORT_ERROR

log = logging.getLogger(__name__)
API_KEY_ENV = "VITFT_API_KEY"


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
    return model is not None and bool(methods_for(model))


def _heatmap_explainer(model_dir: Path) -> Any:
    """An Explainer on its own copy of the model: eager attention must not slow /predict."""
    model, _ = load_model(model_dir)
    return Explainer(model)


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
        size = self.predictor.transform(Image.new("RGB", (8, 8))).shape
        # warm-up: the first pass is the slowest; the reference needs the model too
        await self.batcher.submit(torch.zeros(1, *size), max(self.settings.timeout_s, 300))
        s = self.settings
        ref = await self.in_pool(
            drift_reference, self.predictor, s.drift_reference, s.drift_reference_max, wait=None
        )
        self.metrics.drift.reference = ref
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        await self.batcher.stop()
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def in_pool(self, fn: Any, *args: Any, wait: float | None = -1.0) -> Any:
        """``fn(*args)`` on the decode threads, within ``timeout_s`` (``wait=None``: no limit)."""
        wait = self.settings.timeout_s if wait == -1.0 else wait
        future = asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
        try:
            return await asyncio.wait_for(future, wait)
        except asyncio.TimeoutError as err:
            raise BadInput(
                504, f"no answer within timeout_s={self.settings.timeout_s:g} s"
            ) from err

    async def forward(self, images: list[torch.Tensor]) -> list[torch.Tensor | Exception]:
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

    def prepare(self, raw: list[tuple[str, Any]]) -> list[torch.Tensor | ItemError]:
        """Each image decoded and preprocessed, one at a time (one full-size image in memory
        per decode thread), or its ItemError."""
        out: list[torch.Tensor | ItemError] = []
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
            probs, scores = self.predictor.unpack(torch.stack([o for _, o in ok]))
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
                    self.explainer = await self.in_pool(_heatmap_explainer, self.model_dir)
                png = await self.in_pool(_heatmap_png, self.explainer, self.predictor, image)
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


def _error(request: Request, status: int, detail: str, headers: dict | None = None) -> Any:
    rid = getattr(request.state, "request_id", None)
    return JSONResponse({"detail": detail, "request_id": rid}, status_code=status, headers=headers)


def _routes(app: Any, svc: Service) -> None:
    app.post("/predict")(svc.predict)
    app.post("/explain")(svc.explain)
    app.get("/health")(lambda: {"status": "ok"})
    app.get("/ready")(svc.readiness)
    app.get("/metadata")(svc.metadata)

    @app.get("/metrics")
    def metrics() -> Response:
        body, ctype = svc.metrics.exposition()
        return Response(body, media_type=ctype)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return resources.files("vitft.deploy").joinpath("serve_page.html").read_text()

    @app.exception_handler(BadInput)
    async def bad_input(request: Request, err: BadInput) -> JSONResponse:
        retry = {"Retry-After": "1"} if err.status == 429 else None
        return _error(request, err.status, err.reason, retry)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        return _error(request, err.status_code, str(err.detail), getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def crashed(request: Request, err: Exception) -> JSONResponse:
        rid = getattr(request.state, "request_id", None)
        return _error(request, 500, f"internal error; see the server log for request id {rid}")


def create_app(model_dir: str | Path, predictor: Predictor, settings: ServeSettings) -> Any:
    """The ASGI app serving ``predictor`` (loaded from ``model_dir``): FastAPI behind the gate."""
    if FastAPI is None or _IMPORT_ERROR is not None:
        raise VitftError(
            f"vitft serve needs FastAPI, uvicorn and prometheus-client ({_IMPORT_ERROR}): "
            'pip install "vitft[serve]"'
        )
    svc = Service(Path(model_dir), predictor, settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await svc.start()
        log.info("serving %s (%s): ready", svc.model_dir.name, svc.facts["format"])
        yield
        await svc.stop()

    app = FastAPI(title="vitft", version=__version__, lifespan=lifespan)
    app.state.service = svc
    _routes(app, svc)
    access = Access(settings.api_key or None, tuple(settings.allowed_hosts))
    gate = Gate(app, access, svc.max_bytes, settings.body_timeout_s, svc.metrics.request)
    if not settings.cors_origins:  # off by default: browsers on other origins get no answer
        return gate
    return CORSMiddleware(
        gate,
        allow_origins=list(settings.cors_origins),
        allow_methods=["GET", "POST"],
        allow_headers=["Content-Type", "X-API-Key", "Authorization", "X-Request-ID"],
    )


def _heatmap_png(explainer: Any, predictor: Predictor, image: Image.Image) -> str:
    pixels = predictor.transform(image)[None]
    method = "gradattn" if "gradattn" in explainer.methods else "gradcam"
    heat = explainer.explain(pixels, [method])[method][0]
    buf = io.BytesIO()
    shown = image.copy()
    shown.thumbnail((384, 384))
    overlay(shown, heat).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def settings_from(cfg: Any) -> ServeSettings:
    """ServeSettings from conf/serve.yaml; the API key from ``api_key`` or $VITFT_API_KEY."""
    drift = cfg.get("drift") or {}
    hosts = [str(h) for h in (cfg.get("allowed_hosts") or ["*"])]
    if str(cfg.host) not in ("0.0.0.0", "::", ""):  # the name it binds is always allowed
        hosts.append(str(cfg.host))
    formats = tuple(str(f).upper() for f in cfg.get("image_formats") or DEFAULT_FORMATS)
    return ServeSettings(
        max_request_mb=float(cfg.max_request_mb),
        max_images=int(cfg.max_images),
        max_concurrency=int(cfg.max_concurrency),
        batch_max_size=int(cfg.batch.max_size),
        batch_max_wait_ms=float(cfg.batch.max_wait_ms),
        max_pixels=int(cfg.get("max_pixels") or 40_000_000),
        image_formats=formats,
        body_timeout_s=float(cfg.get("body_timeout_s") or 60),
        timeout_s=float(cfg.get("timeout_s") or 60),
        decode_threads=int(cfg.get("decode_threads") or 2),
        api_key=str(cfg.get("api_key") or os.environ.get(API_KEY_ENV) or "") or None,
        allowed_hosts=tuple(hosts),
        cors_origins=tuple(str(o) for o in cfg.get("cors_origins") or ()),
        capture_dir=str(cfg.capture_dir) if cfg.get("capture_dir") else None,
        capture_max_mb=float(cfg.get("capture_max_mb") or 1000),
        drift_window=int(drift.get("window") or 500),
        drift_reference=str(drift["reference"]) if drift.get("reference") else None,
        drift_reference_max=int(drift.get("reference_max") or 500),
        drift_max_ks=float(drift.get("max_ks") or 0.2),
    )


def exposure_warnings(host: str, settings: ServeSettings) -> list[str]:
    """What is risky about binding ``host`` with these settings."""
    out = []
    local = host in LOCAL_HOSTS
    if not local and settings.api_key is None:
        out.append(
            f"host={host} serves beyond this machine WITHOUT an API key: anyone who can reach "
            f"the port can use the model. Set api_key= or ${API_KEY_ENV}."
        )
    if host in ("0.0.0.0", "::") and set(settings.allowed_hosts) <= set(LOCAL_HOSTS):
        out.append(
            f"host={host} with allowed_hosts={list(settings.allowed_hosts)}: requests addressed "
            "to this machine's name or IP get 400; add them to allowed_hosts"
        )
    return out


def serve(cfg: Any) -> None:
    """``vitft serve model_dir=...``: load the model, then run uvicorn until stopped."""
    if not cfg.get("model_dir"):
        raise VitftError("set model_dir=<run>/model or an export folder (<run>/export/onnx)")
    model_dir = Path(cfg.model_dir).expanduser()
    if not model_dir.is_dir():
        raise VitftError(f"model_dir={cfg.model_dir} is not a folder")
    try:
        import uvicorn
    except ImportError as err:
        raise VitftError(f'vitft serve needs uvicorn ({err}): pip install "vitft[serve]"') from err
    predictor = Predictor.from_path(
        model_dir,
        device=cfg.get("device"),
        threshold=float(cfg.get("threshold") or 0.0),
        class_thresholds={str(k): float(v) for k, v in dict(cfg.class_thresholds or {}).items()},
        tta=bool(cfg.get("tta")),
    )
    settings = settings_from(cfg)
    app = create_app(model_dir, predictor, settings)
    for warning in exposure_warnings(str(cfg.host), settings):
        log.warning(warning)
        print(f"WARNING: {warning}", flush=True)
    print(f"vitft serve: http://{cfg.host}:{cfg.port}/  ({model_dir})", flush=True)
    uvicorn.run(
        app,
        host=cfg.host,
        port=int(cfg.port),
        log_level=cfg.get("log_level", "info"),
        access_log=False,  # the gate logs each request as one JSON line with its id
    )
