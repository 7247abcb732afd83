"""``vitft serve``: a REST service (FastAPI + uvicorn) over any Predictor backend.

POST /predict    one or many images (multipart files, JSON base64, or a raw image body)
POST /explain    one image -> label + heatmap PNG (PyTorch ViT, MobileViT, ConvNeXt)
GET  /health     the process is up;   GET /ready   the model is loaded and warmed up
GET  /metadata   classes, thresholds, model sha256, format, vitft version, limits
GET  /           a small page: drop an image, see label, confidence and heatmap

Limits: ``max_request_mb`` (413), ``max_images`` per request (413), ``max_concurrency`` requests
in flight (429 with Retry-After, never a queue that grows until the process dies), and dynamic
micro-batching of the images of concurrent requests (``batch.max_size``, ``batch.max_wait_ms``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vitft import __version__
from vitft.core.errors import VitftError
from vitft.core.plots import overlay
from vitft.data.images import load_image
from vitft.deploy.batching import ConcurrencyLimit, MicroBatcher
from vitft.deploy.explain import Explainer, methods_for
from vitft.deploy.metadata import METADATA_FILE, read_metadata, sha256
from vitft.deploy.predictor import UNCERTAIN, UNKNOWN, Predictor
from vitft.modelio.hf import load_model

try:  # the `serve` extra: pip install "vitft[serve]"
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.concurrency import run_in_threadpool
except ImportError as _err:  # pragma: no cover - exercised only without the extra
    FastAPI = None  # type: ignore[assignment,misc]
    _IMPORT_ERROR: ImportError | None = _err
else:
    _IMPORT_ERROR = None

log = logging.getLogger(__name__)


@dataclass
class ServeSettings:
    """The limits of one service (conf/serve.yaml)."""

    max_request_mb: float = 20.0
    max_images: int = 64
    max_concurrency: int = 32
    batch_max_size: int = 16
    batch_max_wait_ms: float = 5.0


class BadInput(Exception):
    """A request the client must fix: answered with ``status`` and the reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def decode(data: bytes, name: str) -> Image.Image:
    """8-bit RGB from the bytes of one image file; a bad file raises BadInput(400)."""
    if not data:
        raise BadInput(400, f"{name}: zero bytes")
    try:
        return load_image(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise BadInput(413, f"{name}: too many pixels ({err})") from err
    except Image.UnidentifiedImageError as err:
        raise BadInput(400, f"{name}: not an image (PIL cannot identify it)") from err
    except (OSError, ValueError, SyntaxError) as err:
        raise BadInput(400, f"{name}: unreadable image ({type(err).__name__}: {err})") from err


def _b64(value: Any, name: str) -> bytes:
    if not isinstance(value, str):
        raise BadInput(422, f"{name}: expected a base64 string, got {type(value).__name__}")
    if value.startswith("data:") and "," in value:  # a data URL from a browser
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as err:
        raise BadInput(400, f"{name}: not valid base64 ({err})") from err


def json_images(doc: Any) -> list[tuple[str, bytes]]:
    """``{"image": b64}``, ``{"images": [b64, ...]}`` or ``{"images": [{"name", "data"}]}``."""
    if not isinstance(doc, dict) or not ({"image", "images"} & set(doc)):
        raise BadInput(422, 'JSON body must be {"image": "<base64>"} or {"images": [...]}')
    items = [doc["image"]] if "image" in doc else doc["images"]
    if not isinstance(items, list):
        raise BadInput(422, '"images" must be a list of base64 strings or {name, data} objects')
    out = []
    for i, item in enumerate(items):
        name = f"images[{i}]"
        if isinstance(item, dict):
            name = str(item.get("name") or name)
            item = item.get("data")
        out.append((name, _b64(item, name)))
    return out


async def request_images(request: Request, max_bytes: int) -> list[tuple[str, bytes]]:
    """The (name, bytes) of every image in a multipart, JSON or raw-image request."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        form = await request.form(max_part_size=max_bytes)
        files = [v for _, v in form.multi_items() if hasattr(v, "read")]
        return [(f.filename or f"file[{i}]", await f.read()) for i, f in enumerate(files)]
    if ctype == "application/json":
        try:
            doc = await request.json()
        except ValueError as err:
            raise BadInput(400, f"body is not valid JSON ({err})") from err
        return json_images(doc)
    if ctype.startswith("image/") or ctype == "application/octet-stream":
        return [("body", await request.body())]
    raise BadInput(
        415,
        f"Content-Type {ctype or '(none)'} is not supported: send multipart/form-data files, "
        'JSON {"images": [<base64>]}, or a raw image/* body',
    )


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is answered 413 before it is read."""

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._reject(scope, receive, send)
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:  # chunked upload without a Content-Length
                raise BadInput(413, self._reason())
            return message

        await self.app(scope, counted, send)

    def _reason(self) -> str:
        return f"request body over max_request_mb={self.max_bytes / 1e6:g} MB"

    async def _reject(self, scope: dict, receive: Any, send: Any) -> None:
        await JSONResponse({"detail": self._reason()}, status_code=413)(scope, receive, send)


def model_facts(model_dir: Path, predictor: Predictor) -> dict:
    """What /metadata reports about the served model."""
    if (model_dir / METADATA_FILE).is_file():
        meta = read_metadata(model_dir)
        weights = model_dir / meta["file"]
        fmt, precision, runtime = meta["format"], meta.get("precision"), meta.get("runtime")
    else:
        weights = model_dir / "model.safetensors"
        fmt, precision, runtime = "pytorch", "fp32", "pytorch"
    return {
        "model_dir": str(model_dir),
        "format": fmt,
        "precision": precision,
        "runtime": runtime,
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


def create_app(model_dir: str | Path, predictor: Predictor, settings: ServeSettings) -> Any:
    """The FastAPI app serving ``predictor`` (loaded from ``model_dir``)."""
    if FastAPI is None:
        raise VitftError(
            f'vitft serve needs FastAPI and uvicorn ({_IMPORT_ERROR}): pip install "vitft[serve]"'
        )
    model_dir = Path(model_dir)
    facts = model_facts(model_dir, predictor)
    heatmap = has_heatmap(predictor)
    batcher = MicroBatcher(predictor.packed, settings.batch_max_size, settings.batch_max_wait_ms)
    limit = ConcurrencyLimit(settings.max_concurrency)
    max_bytes = int(settings.max_request_mb * 1e6)
    state: dict[str, Any] = {"ready": False, "explainer": None}
    explain_lock = asyncio.Lock()

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await batcher.start()
        size = predictor.transform(Image.new("RGB", (8, 8))).shape
        await batcher.submit(torch.zeros(1, *size))  # warm-up: the first pass is the slowest
        state["ready"] = True
        log.info("serving %s (%s) — ready", model_dir, facts["format"])
        yield
        state["ready"] = False
        await batcher.stop()

    app = FastAPI(title="vitft", version=__version__, lifespan=lifespan)

    @app.exception_handler(BadInput)
    async def _bad_input(_request: Request, err: BadInput) -> JSONResponse:
        return JSONResponse({"detail": err.reason}, status_code=err.status)

    async def images_of(request: Request) -> list[tuple[str, Image.Image]]:
        raw = await request_images(request, max_bytes)
        if not raw:
            raise BadInput(400, "no image in the request")
        if len(raw) > settings.max_images:
            raise BadInput(413, f"{len(raw)} images; at most max_images={settings.max_images}")
        return await run_in_threadpool(lambda: [(n, decode(b, n)) for n, b in raw])

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        if not limit.try_acquire():
            return JSONResponse(
                {"detail": f"busy: {limit.limit} requests in flight (max_concurrency)"},
                status_code=429,
                headers={"Retry-After": "1"},
            )
        try:
            t0 = time.perf_counter()
            images = await images_of(request)
            pixels = await run_in_threadpool(
                lambda: torch.stack([predictor.transform(img) for _, img in images])
            )
            probs, scores = predictor.unpack(await batcher.submit(pixels))
            ms = (time.perf_counter() - t0) * 1000
            records = predictor.records([n for n, _ in images], probs, [ms] * len(images), scores)
            preds = []
            for r in records:
                row = asdict(r)
                row["name"] = row.pop("path")
                row.pop("latency_ms")
                row["uncertain"] = r.label == UNCERTAIN
                preds.append(row)
            return JSONResponse(
                {"predictions": preds, "latency_ms": round(ms, 3)},
                headers={"X-Latency-Ms": f"{ms:.3f}"},
            )
        finally:
            limit.release()

    @app.post("/explain")
    async def explain(request: Request) -> JSONResponse:
        if not heatmap:
            raise BadInput(
                404,
                "heatmaps need a PyTorch ViT, MobileViT or ConvNeXt model dir; this is "
                f"{facts['format']}",
            )
        name, image = (await images_of(request))[0]
        async with explain_lock:  # one gradient pass at a time, off the event loop
            if state["explainer"] is None:
                state["explainer"] = await run_in_threadpool(_heatmap_explainer, model_dir)
            png = await run_in_threadpool(_heatmap_png, state["explainer"], predictor, image)
        return JSONResponse({"name": name, "method": "gradattn", "heatmap_png": png})

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        ok = state["ready"]
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/metadata")
    async def metadata() -> dict:
        return {
            **facts,
            "heatmap": heatmap,
            "limits": asdict(settings),
            "in_flight": limit.in_flight,
            "recent_batch_sizes": batcher.batch_sizes[-32:],
        }

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return resources.files("vitft.deploy").joinpath("serve_page.html").read_text()

    return BodyLimit(app, max_bytes) if max_bytes > 0 else app


def _heatmap_png(explainer: Any, predictor: Predictor, image: Image.Image) -> str:
    pixels = predictor.transform(image)[None]
    method = "gradattn" if "gradattn" in explainer.methods else "gradcam"
    heat = explainer.explain(pixels, [method])[method][0]
    buf = io.BytesIO()
    shown = image.copy()
    shown.thumbnail((384, 384))
    overlay(shown, heat).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


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
    settings = ServeSettings(
        max_request_mb=float(cfg.max_request_mb),
        max_images=int(cfg.max_images),
        max_concurrency=int(cfg.max_concurrency),
        batch_max_size=int(cfg.batch.max_size),
        batch_max_wait_ms=float(cfg.batch.max_wait_ms),
    )
    app = create_app(model_dir, predictor, settings)
    print(f"vitft serve: http://{cfg.host}:{cfg.port}/  ({model_dir})", flush=True)
    uvicorn.run(app, host=cfg.host, port=int(cfg.port), log_level=cfg.get("log_level", "info"))
