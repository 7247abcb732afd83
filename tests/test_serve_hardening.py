"""vitft serve on a line: input limits, per-image results, access, a worker that cannot die
silently, metrics, drift and capture (in-process, FastAPI's TestClient, a tiny model)."""

import asyncio
import base64
import csv
import io
import json
import logging
import time

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import save_tiny_vit
from vitft.data.manifest import read_manifest
from vitft.deploy.batching import MicroBatcher
from vitft.deploy.predictor import Predictor, resolve_inputs
from vitft.deploy.serve import ServeSettings, create_app, exposure_warnings, settings_from
from vitft.deploy.serve_metrics import DriftWindow, Reference, ks_distance

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

LABELS = ["blue", "green", "red"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_vit(tmp_path_factory.mktemp("m") / "model", LABELS)


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def png(seed: int = 0, size: int = 40) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    return encode(Image.fromarray(arr))


def bomb() -> bytes:
    """A 12000 x 12000 px (144 Mpx) PNG of a few hundred KB: the header says what decoding costs."""
    return encode(Image.new("1", (12000, 12000)))


def client(model_dir, predictor=None, **settings) -> TestClient:
    predictor = predictor or Predictor.from_path(model_dir, threshold=0.5)
    app = create_app(model_dir, predictor, ServeSettings(**settings))
    return TestClient(app, raise_server_exceptions=False)


def files(*items):
    return [("files", (name, data, "image/png")) for name, data in items]


def test_one_bad_file_is_an_item_error_and_the_good_ones_are_answered(model_dir):
    big = bomb()
    gif = encode(Image.new("RGB", (8, 8)), "GIF")
    sent = files(("good.png", png(1)), ("broken.png", png(2)[:70]), ("bomb.png", big))
    sent += files(("anim.gif", gif), ("good2.png", png(3)))
    with client(model_dir) as c:
        t0 = time.perf_counter()
        r = c.post("/predict", files=sent)
        took = time.perf_counter() - t0
        alone = c.post("/predict", content=big, headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    rows = r.json()["predictions"]
    assert [p["name"] for p in rows] == [
        "good.png",
        "broken.png",
        "bomb.png",
        "anim.gif",
        "good2.png",
    ]
    assert rows[0]["label"] in LABELS + ["uncertain"] and rows[4]["confidence"] > 0
    assert rows[1]["status"] == 400 and "broken.png: unreadable" in rows[1]["error"]
    assert (
        rows[2]["status"] == 413
        and "12000x12000 = 144.0 Mpx is over max_pixels=40" in rows[2]["error"]
    )
    assert rows[3]["status"] == 400 and "allowed format" in rows[3]["error"]
    assert r.json()["errors"] == 3
    assert took < 5  # the bomb was refused from its header, never decoded
    assert alone.status_code == 413 and "max_pixels" in alone.json()["detail"]


def test_explain_goes_through_the_same_limits(model_dir):
    with client(model_dir, max_pixels=1000) as c:
        r = c.post("/explain", files={"file": ("a.png", png(3), "image/png")})
    assert r.status_code == 413 and "max_pixels=0.001 Mpx" in r.json()["detail"]


def test_api_key_hosts_cors_and_no_paths(model_dir):
    key = "s3cret-key"
    with client(model_dir, api_key=key, allowed_hosts=("localhost", "127.0.0.1")) as c:
        base = "http://localhost:8000"
        body = {"content": png(1), "headers": {"Content-Type": "image/png"}}
        anon = c.post(f"{base}/predict", **body)
        wrong = c.post(f"{base}/predict", content=png(1), headers={"X-API-Key": "nope"})
        with_key = c.post(
            f"{base}/predict",
            content=png(1),
            headers={"Content-Type": "image/png", "X-API-Key": key},
        )
        bearer = c.get(f"{base}/metadata", headers={"Authorization": f"Bearer {key}"})
        metrics = c.get(f"{base}/metrics")
        health = c.get(f"{base}/health")
        evil = c.get("http://evil.example/health")
        cors = c.get(f"{base}/health", headers={"Origin": "http://evil.example"})
    assert anon.status_code == 401 and "API key" in anon.json()["detail"]
    assert wrong.status_code == 401 and anon.headers["WWW-Authenticate"] == "Bearer"
    assert with_key.status_code == 200 and bearer.status_code == 200
    assert metrics.status_code == 401 and health.status_code == 200
    assert evil.status_code == 400 and "allowed_hosts" in evil.json()["detail"]
    assert "access-control-allow-origin" not in cors.headers  # CORS off by default
    text = json.dumps(bearer.json())
    assert str(model_dir) not in text and str(model_dir.parent) not in text and key not in text
    with client(model_dir, cors_origins=("http://line.example",)) as c:
        allowed = c.get("/health", headers={"Origin": "http://line.example"})
    assert allowed.headers["access-control-allow-origin"] == "http://line.example"


def test_settings_from_conf_and_the_exposure_warning(monkeypatch):
    from omegaconf import OmegaConf

    cfg = OmegaConf.load("conf/serve.yaml")
    cfg.host = "0.0.0.0"
    monkeypatch.delenv("VITFT_API_KEY", raising=False)
    settings = settings_from(cfg)
    assert settings.api_key is None and settings.max_pixels == 40_000_000
    assert settings.image_formats == ("PNG", "JPEG", "BMP", "TIFF", "WEBP")
    warned = " ".join(exposure_warnings("0.0.0.0", settings))
    assert "WITHOUT an API key" in warned and "allowed_hosts" in warned
    monkeypatch.setenv("VITFT_API_KEY", "from-env")
    cfg.host = "127.0.0.1"
    settings = settings_from(cfg)
    assert settings.api_key == "from-env" and exposure_warnings("127.0.0.1", settings) == []
    assert "127.0.0.1" in settings.allowed_hosts and "*" not in settings.allowed_hosts


def test_a_failing_image_fails_alone_and_errors_are_json(model_dir):
    predictor = Predictor.from_path(model_dir)
    inner = predictor.packed

    def picky(pixels):  # a backend that cannot take a bright image
        if (pixels.mean(dim=(1, 2, 3)) > 0.9).any():
            raise RuntimeError("backend exploded")
        return inner(pixels)

    predictor.packed = picky
    white = encode(Image.new("RGB", (40, 40), "white"))
    with client(model_dir, predictor, batch_max_wait_ms=50) as c:
        r = c.post(
            "/predict", files=files(("a.png", png(1)), ("white.png", white), ("b.png", png(2)))
        )
        predictor.records = lambda *a, **k: 1 / 0  # a bug after the forward pass
        crash = c.post("/predict", content=png(1), headers={"Content-Type": "image/png"})
        missing = c.get("/nothing-here")
        ready = c.get("/ready")
    rows = r.json()["predictions"]
    assert r.status_code == 200 and "error" not in rows[0] and "error" not in rows[2]
    assert rows[1]["status"] == 500 and "model failed on this image" in rows[1]["error"]
    assert "exploded" not in r.text  # no internals in a response
    assert crash.status_code == 500 and crash.json()["request_id"] == crash.headers["X-Request-ID"]
    assert "Traceback" not in crash.text and "ZeroDivision" not in crash.text
    assert missing.status_code == 404 and missing.json()["detail"]
    assert ready.status_code == 200


def test_worker_failures_are_isolated_and_the_worker_restarts():
    def fn(x):
        return x.flatten(1)[:, :2]

    async def main():
        batcher = MicroBatcher(fn, max_size=4, max_wait_ms=50)
        await batcher.start()
        # Two shapes in one batch: torch.stack fails; each image is answered alone.
        mixed = await batcher.submit_each([torch.ones(1, 1, 2), torch.ones(1, 2, 2)])
        real_collect = batcher._collect
        broken = {"once": True}

        async def collect():
            if broken.pop("once", False):
                raise RuntimeError("worker bug")
            return await real_collect()

        batcher._collect = collect  # taken on the worker's next round, which then fails
        await batcher.submit(torch.zeros(1, 1, 1, 2), timeout_s=5)
        await asyncio.sleep(0.05)
        after = await batcher.submit(torch.full((2, 1, 1, 2), 3.0), timeout_s=5)
        alive, restarts = batcher.alive, batcher.restarts
        await batcher.stop()
        return mixed, after, alive, restarts

    mixed, after, alive, restarts = asyncio.run(main())
    assert all(isinstance(m, torch.Tensor) for m in mixed)
    assert after.tolist() == [[3.0, 3.0], [3.0, 3.0]] and alive and restarts == 1


def test_worker_dies_or_hangs_ready_turns_503_and_requests_time_out(model_dir):
    predictor = Predictor.from_path(model_dir)
    inner, hang = predictor.packed, {"on": False}

    def slow(pixels):
        if hang["on"]:
            time.sleep(2)
        return inner(pixels)

    predictor.packed = slow
    with client(model_dir, predictor, timeout_s=0.5) as c:
        hang["on"] = True
        late = c.post("/predict", content=png(1), headers={"Content-Type": "image/png"})
        stalled = c.get("/ready")
        hang["on"] = False
        time.sleep(2)
        c.app.app.state.service.batcher._task.cancel()  # the worker is gone for good
        time.sleep(0.1)
        dead = c.get("/ready")
    assert late.status_code == 504 and "timeout_s=0.5" in late.json()["detail"]
    assert stalled.status_code == 503 and "forward pass" in stalled.json()["reason"]
    assert dead.status_code == 503 and "worker" in dead.json()["reason"]


def test_slow_body_gets_408_and_never_holds_a_slot(model_dir):
    app = create_app(model_dir, Predictor.from_path(model_dir), ServeSettings(body_timeout_s=0.3))
    sent = []

    async def main():
        async def receive():
            await asyncio.sleep(10)  # a client that never finishes its upload

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/predict", "headers": [], "state": {}}
        t0 = time.perf_counter()
        await app(scope, receive, send)
        return time.perf_counter() - t0

    took = asyncio.run(main())
    assert sent[0]["status"] == 408 and took < 2
    assert b"body_timeout_s=0.3" in sent[1]["body"]
    assert app.app.state.service.limit.in_flight == 0


def test_metrics_request_log_and_capture(model_dir, tmp_path, caplog):
    capture = tmp_path / "capture"
    predictor = Predictor.from_path(model_dir, threshold=0.99)  # every image is uncertain
    with client(model_dir, predictor, capture_dir=str(capture), drift_window=20) as c:
        with caplog.at_level(logging.INFO, logger="vitft.serve.access"):
            r = c.post(
                "/predict",
                files=files(("a.png", png(1)), ("b.png", png(2)), ("x.png", b"no")),
                headers={"X-Request-ID": "req-42"},
            )
        for i in range(3):
            c.post("/predict", content=png(10 + i), headers={"Content-Type": "image/png"})
        text = c.get("/metrics").text
        meta = c.get("/metadata").json()
    assert r.headers["X-Request-ID"] == "req-42"
    logged = [json.loads(rec.message) for rec in caplog.records if rec.name == "vitft.serve.access"]
    assert {"request_id": "req-42", "status": 200, "images": 3, "errors": 1}.items() <= logged[
        0
    ].items()
    assert 'vitft_requests_total{route="/predict",status="200"} 4.0' in text
    assert 'vitft_request_seconds_bucket{le="60.0",route="/predict"} 4.0' in text
    assert "vitft_batch_size_count" in text and "vitft_queue_depth 0.0" in text
    assert (
        sum(
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith("vitft_predicted_total{")
        )
        == 5
    )
    assert 'vitft_flagged_total{flag="uncertain"} 5.0' in text
    assert 'vitft_images_total{outcome="error"} 1.0' in text
    assert f'sha256="{meta["model_sha256"]}"' in text
    assert (
        'vitft_window{stat="uncertain_rate"} 1.0' in text
        and 'vitft_captured_total{result="saved"} 5.0' in text
    )
    # The capture folder is a manifest that training reads and a pool that select ranks.
    manifest = read_manifest(capture / "manifest.csv", LABELS, False, ";")
    assert len(manifest.rows) == 5 and not manifest.problems
    rows = list(csv.DictReader((capture / "manifest.csv").open()))
    assert (
        rows[0]["name"] == "a.png"
        and rows[0]["flag"] == "uncertain"
        and rows[0]["request_id"] == "req-42"
    )
    assert len(resolve_inputs(capture / "images")[0]) == 5


def test_capture_stops_at_its_size_cap(model_dir, tmp_path):
    predictor = Predictor.from_path(model_dir, threshold=0.99)
    one = len(png(1))
    with client(
        model_dir, predictor, capture_dir=str(tmp_path / "c"), capture_max_mb=1.5 * one / 1e6
    ) as c:
        c.post("/predict", files=files(("a.png", png(1)), ("b.png", png(1))))
        text = c.get("/metrics").text
    assert len(list((tmp_path / "c" / "images").rglob("*.png"))) == 1
    assert 'vitft_captured_total{result="full"} 1.0' in text


def test_drift_window_against_the_validation_reference(caplog):
    rng = np.random.default_rng(0)
    ref = Reference(unknown_rate=0.05, confidence=rng.uniform(0.8, 1.0, 400))
    window = DriftWindow(ref, window=200, max_ks=0.2)
    for _ in range(200):
        window.add(float(rng.uniform(0.8, 1.0)), None, bool(rng.random() < 0.05), False)
    assert not window.update()["drift"] and window.last["confidence_ks"] < 0.2
    with caplog.at_level(logging.WARNING, logger="vitft.deploy.serve_metrics"):
        for _ in range(200):  # the line changed: lower confidence
            window.add(float(rng.uniform(0.4, 0.7)), None, False, False)
    assert window.drifting and window.last["confidence_ks"] > 0.9
    assert any("drift detected" in r.message for r in caplog.records)
    unknowns = DriftWindow(Reference(unknown_rate=0.05), window=100)
    for i in range(100):
        unknowns.add(0.9, 1.0, i % 3 == 0, False)  # a third unknown, against 5 % on val
    assert unknowns.update()["drift"] and unknowns.last["unknown_rate"] == pytest.approx(0.34)
    assert ks_distance(np.arange(10.0), np.arange(10.0)) == 0.0


def test_drift_reference_from_val_images(model_dir, tmp_path):
    val = tmp_path / "val"
    val.mkdir()
    for i in range(6):
        (val / f"{i}.png").write_bytes(png(i))
    with client(model_dir, drift_reference=str(val), drift_window=5) as c:
        for i in range(5):
            c.post("/predict", content=png(i), headers={"Content-Type": "image/png"})
        drift = c.get("/metadata").json()["drift"]
    assert drift["images"] == 5 and drift["confidence_ks"] <= 0.5  # the same kind of images


def test_json_item_with_bad_base64_is_an_item_error(model_dir):
    with client(model_dir) as c:
        r = c.post("/predict", json={"images": [base64.b64encode(png(1)).decode(), "%%%"]})
    rows = r.json()["predictions"]
    assert r.status_code == 200 and rows[0]["confidence"] > 0 and "base64" in rows[1]["error"]


def test_bodies_in_memory_are_capped_across_requests(model_dir):
    with client(model_dir, max_uploads_mb=1e-5) as c:  # 10 bytes for all uploads together
        r = c.post("/predict", content=png(1), headers={"Content-Type": "image/png"})
        after = c.get("/health")
        held = c.app.buffered  # the gate gave back what the refused body held
    assert held == 0 and r.status_code == 503 and r.headers["Retry-After"] == "1"
    assert "max_uploads_mb=1e-05" in r.json()["detail"] and after.status_code == 200


def test_a_refused_upload_reads_its_413_over_a_real_socket(model_dir):
    """A body over max_request_mb is refused from its Content-Length, and the server goes on
    reading (and dropping) the rest before it closes: closed with unread bytes, the socket would
    reset, and the client could lose the 413 and see only "connection reset"."""
    import socket
    import threading

    uvicorn = pytest.importorskip("uvicorn")
    app = create_app(model_dir, Predictor.from_path(model_dir), ServeSettings(max_request_mb=1))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="error"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    body = b"\0" * 20_000_000
    statuses = []
    try:
        for _ in range(8):
            with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
                head = (
                    f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                    f"Content-Type: image/png\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n"
                )
                try:
                    conn.sendall(head.encode() + body)
                    statuses.append(conn.makefile("rb").readline().split()[1].decode())
                except OSError as err:
                    statuses.append(type(err).__name__)
    finally:
        server.should_exit = True
        thread.join(10)
    assert statuses == ["413"] * 8
