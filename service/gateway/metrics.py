"""The gateway's Prometheus metrics: names, buckets and label sets in one place.

Names are a contract (docs/architecture.md, Metrics). Durations are seconds with
geometric buckets from 100 µs to ~13 s (decoding a thumbnail takes well under a
millisecond, a cold batch seconds); batch sizes use powers of two. Label values are fixed
sets chosen here (route templates, status codes, backend names, failure reasons), never
client input.

Each `GatewayMetrics` registers into its own `CollectorRegistry` (injectable, so tests
and several apps in one process never collide). When `PROMETHEUS_MULTIPROC_DIR` is set
(several uvicorn workers), values go to that directory and `render()` aggregates all
workers' files.

A single process also exports prometheus-client's `process_*` metrics (CPU seconds,
resident memory, open file descriptors). In multiprocess mode it cannot: those are read
from `/proc` at scrape time by whichever worker answers, and summing or picking one
worker's would mislead, so there the container's own metrics (cAdvisor) stand in.
"""

from __future__ import annotations

import os
from typing import Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client import multiprocess as prom_multiprocess

DURATION_BUCKETS: tuple[float, ...] = tuple(0.0001 * 2**i for i in range(18))  # 100 µs..13 s
BATCH_SIZE_BUCKETS: tuple[float, ...] = tuple(float(2**i) for i in range(11))  # 1..1024

#: Every route label; a template not here (or in V2_VERSIONED) counts as UNMATCHED_ROUTE.
ROUTES = ("/", "/classify", "/healthz", "/readyz", "/metrics", "/v1/model", "/docs",
          "/docs/oauth2-redirect", "/docs/assets/{name}", "/redoc", "/openapi.json",
          "/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/{model_name}",
          "/v2/models/{model_name}/ready", "/v2/models/{model_name}/infer",
          "/v1/model/reload", "/v1/model/versions/{version}/load")
#: The Open Inference Protocol's routes naming a version count with their unversioned
#: twins: one label per operation, whichever form a client uses.
V2_VERSIONED = {
    "/v2/models/{model_name}/versions/{model_version}": "/v2/models/{model_name}",
    "/v2/models/{model_name}/versions/{model_version}/ready": "/v2/models/{model_name}/ready",
    "/v2/models/{model_name}/versions/{model_version}/infer": "/v2/models/{model_name}/infer",
}
UNMATCHED_ROUTE = "unmatched"
BACKEND_ERROR_REASONS = ("unavailable", "timeout", "bad_response", "error")
#: How a change of model version ended: the new version serves, or it was refused and the
#: old one still does.
RELOAD_RESULTS = ("loaded", "refused")
#: The embedded backend's engines; "none" for a backend without that choice (Triton).
ENGINE_LABELS = ("openvino", "onnxruntime", "none")
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ModelRef(Protocol):
    """A served model as backends name it (`backends.ModelId`)."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class GatewayMetrics:
    """All gateway metrics, registered into `registry` (a fresh one by default)."""

    def __init__(self, backend: str, registry: CollectorRegistry | None = None) -> None:
        self.backend = backend
        self.engine = "none"  # known once the backend has started (`set_engine`)
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "ca_gateway_requests", "HTTP requests answered, by route template and status code",
            ["route", "status"], registry=r,
        )
        self.request_duration = Histogram(
            "ca_gateway_request_duration_seconds", "Time from request start to response end",
            ["route"], buckets=DURATION_BUCKETS, registry=r,
        )
        self.preprocess_duration = Histogram(
            "ca_gateway_preprocess_duration_seconds", "Decode, resize and crop time per image",
            buckets=DURATION_BUCKETS, registry=r,
        )
        self.queue_wait = Histogram(
            "ca_gateway_queue_wait_seconds", "Time an image waited for its batch to start",
            buckets=DURATION_BUCKETS, registry=r,
        )
        self.inference_duration = Histogram(
            "ca_gateway_inference_duration_seconds", "Backend call time per batch, by "
            "backend and the embedded backend's engine", ["backend", "engine"],
            buckets=DURATION_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "ca_gateway_batch_size", "Images per backend call",
            buckets=BATCH_SIZE_BUCKETS, registry=r,
        )
        self.queue_depth = Gauge(
            "ca_gateway_queue_depth", "Images waiting in the micro-batcher's queue",
            registry=r, multiprocess_mode="livesum",
        )
        self.inflight = Gauge(
            "ca_gateway_inflight_requests", "HTTP requests being handled now",
            registry=r, multiprocess_mode="livesum",
        )
        self.backend_errors = Counter(
            "ca_gateway_backend_errors", "Failed backend calls, by reason",
            ["backend", "reason"], registry=r,
        )
        # An info-style series: 1 for the model and version that answered the latest batch,
        # 0 for those that answered before (a handful of versions in a process's life).
        self.model_info = Gauge(
            "ca_gateway_model_info",
            "1 for the model and version that answered the latest batch, 0 for earlier ones",
            ["backend", "model", "version"], registry=r, multiprocess_mode="livemax",
        )
        self.model_reloads = Counter(
            "ca_gateway_model_reloads", "Attempts to serve another model version without a "
            "restart, by result: loaded (verified and swapped in) or refused (the old one "
            "keeps serving)", ["result"], registry=r,
        )
        self._answered: tuple[str, str] | None = None
        # Create the known label values up front so dashboards see zeros, not gaps.
        for route in ("/classify", "/healthz", "/readyz", "/v1/model",
                      "/v2/models/{model_name}/infer"):
            self.requests.labels(route, "200")
            self.request_duration.labels(route)
        for reason in BACKEND_ERROR_REASONS:
            self.backend_errors.labels(backend, reason)
        for result in RELOAD_RESULTS:
            self.model_reloads.labels(result)
        if not multiprocess_dir():
            ProcessCollector(registry=r)

    @staticmethod
    def route_label(template: str | None) -> str:
        template = V2_VERSIONED.get(template or "", template)
        return template if template in ROUTES else UNMATCHED_ROUTE

    def observe_request(self, route: str, status: int, duration_s: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.request_duration.labels(route).observe(duration_s)

    def observe_batch(self, size: int, duration_s: float) -> None:
        self.batch_size.observe(size)
        self.inference_duration.labels(self.backend, self.engine).observe(duration_s)

    def set_engine(self, engine: str | None) -> None:
        """The engine the backend runs on (known once it has started): the `engine` label
        of every batch from now on, its series created at once."""
        self.engine = engine if engine in ENGINE_LABELS else "none"
        self.inference_duration.labels(self.backend, self.engine)

    def model_answered(self, model: ModelRef) -> None:
        """Record `model` (its `name` and `version`) as the one serving now."""
        key = (model.name, model.version)
        if key == self._answered:
            return
        if self._answered is not None:
            self.model_info.labels(self.backend, *self._answered).set(0)
        self.model_info.labels(self.backend, *key).set(1)
        self._answered = key

    def backend_error(self, reason: str) -> None:
        self.backend_errors.labels(self.backend, reason if reason in BACKEND_ERROR_REASONS
                                   else "error").inc()

    def render(self) -> bytes:
        """The exposition text: every worker's values in multiprocess mode."""
        if multiprocess_dir():
            merged = CollectorRegistry()
            prom_multiprocess.MultiProcessCollector(merged)
            return generate_latest(merged)
        return generate_latest(self.registry)


def mark_process_dead(pid: int) -> None:
    """Drop a finished worker's live gauges from the multiprocess sum (a no-op in
    single-process mode). Each worker calls it for itself when its lifespan ends; the
    supervisor calls it for a worker that died without getting there."""
    if multiprocess_dir():
        prom_multiprocess.mark_process_dead(pid)
