"""vitft serve: the REST API on a tiny model, in-process (FastAPI's TestClient)."""

import asyncio
import base64
import io
import json
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import save_tiny_vit
from vitft.deploy.batching import MicroBatcher
from vitft.deploy.metadata import sha256
from vitft.deploy.predictor import Predictor
from vitft.deploy.serve import ServeSettings, create_app

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

LABELS = ["blue", "green", "red"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_vit(tmp_path_factory.mktemp("m") / "model", LABELS)


def png(seed: int = 0, size: int = 40) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def client(model_dir, **settings) -> TestClient:
    predictor = Predictor.from_path(model_dir, threshold=0.5)
    return TestClient(create_app(model_dir, predictor, ServeSettings(**settings)))


def test_predict_multipart_json_raw_match_in_process(model_dir):
    predictor = Predictor.from_path(model_dir, threshold=0.5)
    images = [png(i) for i in range(3)]
    expected = predictor.predict([Image.open(io.BytesIO(b)) for b in images])
    with client(model_dir) as c:
        assert c.get("/health").json() == {"status": "ok"}
        assert c.get("/ready").status_code == 200
        files = [("files", (f"img{i}.png", b, "image/png")) for i, b in enumerate(images)]
        multi = c.post("/predict", files=files)
        body = {"images": [base64.b64encode(b).decode() for b in images]}
        as_json = c.post("/predict", json=body)
        raw = c.post("/predict", content=images[0], headers={"Content-Type": "image/png"})
    for r in (multi, as_json, raw):
        assert r.status_code == 200, r.text
        assert r.json()["latency_ms"] > 0 and float(r.headers["X-Latency-Ms"]) > 0
    preds = multi.json()["predictions"]
    assert [p["name"] for p in preds] == ["img0.png", "img1.png", "img2.png"]
    for got, want in zip(preds, expected, strict=True):
        assert got["predicted"] == want.predicted and got["label"] == want.label
        assert got["uncertain"] == (want.label == "uncertain")
        assert got["confidence"] == pytest.approx(want.confidence, abs=1e-5)
    assert as_json.json()["predictions"] == [
        {**p, "name": f"images[{i}]"} for i, p in enumerate(preds)
    ]
    assert raw.json()["predictions"][0]["probs"] == pytest.approx(preds[0]["probs"], abs=1e-6)


def test_metadata_and_page(model_dir):
    with client(model_dir, max_concurrency=3) as c:
        meta = c.get("/metadata").json()
        page = c.get("/")
    assert meta["classes"] == LABELS and meta["format"] == "pytorch"
    assert meta["thresholds"] == {c: 0.5 for c in LABELS}
    assert meta["model_sha256"] == sha256(model_dir / "model.safetensors")
    assert meta["vitft_version"] and meta["heatmap"] is True and "model_dir" not in meta
    assert meta["limits"]["max_concurrency"] == 3
    assert page.status_code == 200 and 'id="drop"' in page.text


@pytest.mark.parametrize(
    "kwargs, status, reason",
    [
        ({"content": b"not an image", "headers": {"Content-Type": "image/png"}}, 400, "not an"),
        ({"content": b"", "headers": {"Content-Type": "image/png"}}, 400, "zero bytes"),
        ({"json": {"images": ["%%%"]}}, 400, "base64"),
        ({"json": {"img": "x"}}, 422, "JSON body must be"),
        ({"content": b"x", "headers": {"Content-Type": "text/plain"}}, 415, "not supported"),
        ({"content": png(0)[:60], "headers": {"Content-Type": "image/png"}}, 400, "image"),
    ],
)
def test_bad_requests_are_4xx_with_a_reason(model_dir, kwargs, status, reason):
    with client(model_dir) as c:
        r = c.post("/predict", **kwargs)
    assert r.status_code == status, r.text
    assert reason in r.json()["detail"]


def test_request_size_and_image_count_limits(model_dir):
    with client(model_dir, max_request_mb=0.001, max_images=2) as c:
        big = c.post("/predict", content=png(0, 64), headers={"Content-Type": "image/png"})
        assert big.status_code == 413 and "max_request_mb" in big.json()["detail"]
    with client(model_dir, max_images=2) as c:
        many = c.post("/predict", json={"images": [b64(png(0))] * 3})
        assert many.status_code == 413 and "max_images=2" in many.json()["detail"]


def test_back_pressure_429_when_over_the_concurrency_limit(model_dir):
    predictor = Predictor.from_path(model_dir)
    gate = threading.Event()
    inner = predictor.probabilities

    def slow(pixels):
        gate.wait(10)
        return inner(pixels)

    predictor.probabilities = slow
    app = create_app(model_dir, predictor, ServeSettings(max_concurrency=1))
    gate.set()  # let the warm-up through
    with TestClient(app) as c:
        gate.clear()
        first: dict = {}
        t = threading.Thread(
            target=lambda: first.update(r=c.post("/predict", json={"image": b64(png(1))}))
        )
        t.start()
        for _ in range(200):
            if c.get("/metadata").json()["in_flight"] == 1:
                break
        busy = c.post("/predict", json={"image": b64(png(2))})
        gate.set()
        t.join(10)
    assert busy.status_code == 429 and busy.headers["Retry-After"] == "1"
    assert first["r"].status_code == 200


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_micro_batcher_groups_concurrent_images():
    sizes = []

    def fn(x):
        sizes.append(len(x))
        return x.flatten(1)[:, :2]

    async def main():
        batcher = MicroBatcher(fn, max_size=4, max_wait_ms=50)
        await batcher.start()
        outs = await asyncio.gather(
            *[batcher.submit(torch.full((1, 1, 1, 2), i)) for i in range(6)]
        )
        await batcher.stop()
        return outs

    outs = asyncio.run(main())
    assert sizes == [4, 2]  # six single-image requests, two forward passes
    assert [float(o[0, 0]) for o in outs] == [0, 1, 2, 3, 4, 5]


def test_explain_returns_a_heatmap_png(model_dir):
    with client(model_dir) as c:
        r = c.post("/explain", files={"file": ("a.png", png(3), "image/png")})
    assert r.status_code == 200, r.text
    heat = Image.open(io.BytesIO(base64.b64decode(r.json()["heatmap_png"])))
    assert heat.size == (40, 40) and heat.mode == "RGB"
    assert json.dumps(r.json())  # plain JSON
