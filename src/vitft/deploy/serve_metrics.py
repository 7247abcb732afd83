"""What the service exposes at /metrics (Prometheus, through prometheus-client), and drift.

Every app has its own registry, so two services (or tests) in one process never share counters.
Drift: a rolling window of the last ``window`` images' confidence, OOD score and unknown flag,
compared with the validation reference: the unknown rate the OOD threshold was calibrated to on
the val split, and (with ``drift.reference=<folder>``) the confidence and OOD-score
distributions of those images (two-sample Kolmogorov-Smirnov distance).
"""

from __future__ import annotations

import json
import logging
import math
from collections import deque
from dataclasses import dataclass

import numpy as np

try:  # the `serve` extra
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        Counter,
        Gauge,
        Histogram,
        generate_latest,
    )
except ImportError as _err:  # pragma: no cover - exercised only without the extra
    CollectorRegistry = None  # type: ignore[assignment,misc]
    METRICS_IMPORT_ERROR: ImportError | None = _err
else:
    METRICS_IMPORT_ERROR = None

log = logging.getLogger(__name__)

ROUTES = ("/predict", "/explain", "/metadata", "/metrics", "/health", "/ready", "/")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two CDFs."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / len(a)
    cdf_b = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


@dataclass
class Reference:
    """The validation reference: expected unknown rate; confidence and OOD-score samples."""

    unknown_rate: float | None = None
    confidence: np.ndarray | None = None
    ood_score: np.ndarray | None = None


class DriftWindow:
    """The last ``window`` images, and whether they moved away from ``reference``."""

    def __init__(self, reference: Reference, window: int = 500, max_ks: float = 0.2):
        self.reference = reference
        self.window = int(window)
        self.max_ks = float(max_ks)
        self.min_images = min(self.window, 100)  # fewer: too noisy to call drift
        self.confidence: deque[float] = deque(maxlen=self.window)
        self.ood_score: deque[float] = deque(maxlen=self.window)
        self.unknown: deque[bool] = deque(maxlen=self.window)
        self.uncertain: deque[bool] = deque(maxlen=self.window)
        self.drifting = False
        self._since = 0
        self.last: dict = self._report()

    def add(self, confidence: float, ood_score: float | None, unknown: bool, uncertain: bool):
        self.confidence.append(confidence)
        if ood_score is not None:
            self.ood_score.append(ood_score)
        self.unknown.append(unknown)
        self.uncertain.append(uncertain)
        self._since += 1
        if self._since >= max(1, self.window // 20):  # the KS test is not free: every 5%
            self._since = 0
            self.update()

    def update(self) -> dict:
        self.last = self._report()
        if self.last["drift"] != self.drifting:
            self.drifting = self.last["drift"]
            say = log.warning if self.drifting else log.info
            say("drift %s: %s", "detected" if self.drifting else "cleared", json.dumps(self.last))
        return self.last

    def _report(self) -> dict:
        n, ref = len(self.confidence), self.reference
        rate = float(np.mean(self.unknown)) if n else math.nan
        conf_ks = ood_ks = math.nan
        if n and ref.confidence is not None:
            conf_ks = ks_distance(np.asarray(self.confidence), ref.confidence)
        if self.ood_score and ref.ood_score is not None:
            ood_ks = ks_distance(np.asarray(self.ood_score), ref.ood_score)
        drift = False
        if n >= self.min_images:
            if ref.unknown_rate is not None:
                p = ref.unknown_rate  # binomial: 3 standard errors over the calibrated rate
                drift |= rate > p + 3 * math.sqrt(max(p * (1 - p), 1e-4) / n) + 0.01
            drift |= any(k > self.max_ks for k in (conf_ks, ood_ks) if not math.isnan(k))
        return {
            "images": n,
            "unknown_rate": rate,
            "unknown_rate_reference": ref.unknown_rate,
            "uncertain_rate": float(np.mean(self.uncertain)) if n else math.nan,
            "confidence_mean": float(np.mean(self.confidence)) if n else math.nan,
            "confidence_ks": conf_ks,
            "ood_ks": ood_ks,
            "drift": bool(drift),
        }


class ServeMetrics:
    """The Prometheus metrics of one service."""

    def __init__(self, model: dict, drift: DriftWindow):
        r = self.registry = CollectorRegistry()
        self.drift = drift
        self.requests = Counter("vitft_requests", "HTTP requests", ["route", "status"], registry=r)
        self.latency = Histogram(
            "vitft_request_seconds",
            "Request latency",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "vitft_batch_size", "Images per forward pass", buckets=BATCH_BUCKETS, registry=r
        )
        self.images = Counter("vitft_images", "Images answered", ["outcome"], registry=r)
        self.predicted = Counter("vitft_predicted", "Most probable class", ["class"], registry=r)
        self.flagged = Counter(
            "vitft_flagged", "Images flagged unknown/uncertain", ["flag"], registry=r
        )
        self.captured = Counter(
            "vitft_captured", "Flagged images saved to capture_dir", ["result"], registry=r
        )
        self.queue_depth = Gauge(
            "vitft_queue_depth", "Images waiting for a forward pass", registry=r
        )
        self.in_flight = Gauge("vitft_in_flight", "Requests holding a concurrency slot", registry=r)
        self.restarts = Gauge("vitft_worker_restarts", "Batch worker restarts", registry=r)
        info = Gauge(
            "vitft_model_info", "The served model", ["sha256", "format", "version"], registry=r
        )
        info.labels(
            str(model.get("model_sha256")),
            str(model.get("format")),
            str(model.get("vitft_version")),
        ).set(1)
        window = Gauge(
            "vitft_window", "Rolling window over the last drift.window images", ["stat"], registry=r
        )
        for stat in (
            "unknown_rate",
            "uncertain_rate",
            "confidence_mean",
            "confidence_ks",
            "ood_ks",
        ):
            window.labels(stat).set_function(lambda s=stat: _num(self.drift.last[s]))
        ref = Gauge("vitft_unknown_rate_reference", "Unknown rate on the val split", registry=r)
        ref.set_function(lambda: _num(self.drift.reference.unknown_rate))
        Gauge(
            "vitft_drift", "1: the window moved away from the reference", registry=r
        ).set_function(lambda: float(self.drift.drifting))

    def request(self, path: str, status: int, seconds: float) -> None:
        route = path if path in ROUTES else "other"  # bounded label values
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def prediction(self, row: dict) -> None:
        """Count one answered image (a predictor result dict) and add it to the drift window."""
        self.images.labels("ok").inc()
        self.predicted.labels(row["predicted"]).inc()
        unknown, uncertain = bool(row.get("unknown")), bool(row.get("uncertain"))
        for flag, on in (("unknown", unknown), ("uncertain", uncertain)):
            if on:
                self.flagged.labels(flag).inc()
        self.drift.add(row["confidence"], row.get("ood_score"), unknown, uncertain)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _num(value: float | None) -> float:
    return math.nan if value is None else float(value)
