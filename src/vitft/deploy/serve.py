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

import logging
import os
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from vitft import __version__
from vitft.core.errors import VitftError
from vitft.deploy.predictor import Predictor
from vitft.deploy.serve_guard import LOCAL_HOSTS, Access, Gate
from vitft.deploy.serve_input import DEFAULT_FORMATS, BadInput
from vitft.deploy.serve_metrics import METRICS_IMPORT_ERROR
from vitft.deploy.serve_service import ServeSettings, Service

__all__ = ["ServeSettings", "create_app", "serve", "settings_from"]

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
    uploads = int(settings.max_uploads_mb * 1e6)
    gate = Gate(app, access, svc.max_bytes, settings.body_timeout_s, svc.metrics.request, uploads)
    if not settings.cors_origins:  # off by default: browsers on other origins get no answer
        return gate
    return CORSMiddleware(
        gate,
        allow_origins=list(settings.cors_origins),
        allow_methods=["GET", "POST"],
        allow_headers=["Content-Type", "X-API-Key", "Authorization", "X-Request-ID"],
    )


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
        max_uploads_mb=float(cfg.get("max_uploads_mb") or 0),
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
