"""`create_app(settings)`: the FastAPI application, built fresh per call (no globals).

The lifespan loads the model info, starts the backend and the micro-batcher and keeps
them on `app.state.runtime`; on shutdown it finishes every queued image first.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from service.gateway import admin, apidocs
from service.gateway.backends import Backend
from service.gateway.http_errors import install_handlers
from service.gateway.metrics import GatewayMetrics, mark_process_dead
from service.gateway.middleware import RequestContextMiddleware
from service.gateway.routes import router
from service.gateway.runtime import Runtime
from service.gateway.security import ApiKeys
from service.gateway.settings import Settings
from service.gateway.trace_http import (
    TRACERESPONSE_HEADER,
    TraceResponseMiddleware,
    telemetry_config,
)
from service.gateway.tracing import TRACING_OFF, Tracing
from service.gateway.v2.routes import router as v2_router

logger = logging.getLogger("ca.gateway")

DESCRIPTION = """
Image classification with CA-MobileNetV2 (MobileNetV2 with Coordinate Attention).

POST an image (raw body with `Content-Type: image/jpeg|png|webp|gif|bmp|tiff`,
`multipart/form-data` with one or more `file` parts, or `application/json` with base64
`instances`) to `/classify`; each image gets its `top_k` classes, best first. Errors are
`{"error": {"code", "message"}}`.

The Open Inference Protocol (KServe v2 REST, with Triton's binary tensor data and
classification extensions) is served under `/v2`, for `tritonclient` and KServe clients;
its errors are `{"error": "message"}`.
"""


def create_app(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    backend: Backend | None = None,
    freeze_startup_objects: bool = False,
    tracing: Tracing = TRACING_OFF,
) -> FastAPI:
    """Build the app. `registry` isolates metrics (a fresh one by default); `backend`
    replaces the one `settings.backend` names (tests use fakes). A serving process sets
    `freeze_startup_objects`: once the model is loaded, everything alive then (modules,
    the ONNX Runtime session's Python side, pydantic schemas: ~68k objects) moves out of
    the garbage collector's reach, so a full collection walks only what requests made.
    Without it, full collections in a 30-minute soak took 36-105 ms each, every few
    minutes, with the event loop stopped (docs/reliability.md). `tracing` (off by default;
    `tracing_setup.tracing_from_environment()` builds it from `OTEL_*`) receives the
    request's spans and is shut down, flushing its exporters, when the app stops."""
    metrics = GatewayMetrics(backend.name if backend is not None else settings.backend, registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await Runtime.start(settings, metrics, backend, tracing=tracing)
        app.state.runtime = runtime
        if freeze_startup_objects:
            gc.collect()  # what start-up left as garbage goes now, not frozen forever
            gc.freeze()
        served = runtime.backend.model_id()
        logger.info(
            "serving %s v%s with the %s backend", served.name, served.version, runtime.backend.name
        )
        try:
            yield
        finally:
            logger.info("shutting down: finishing %d queued images", runtime.batcher.depth)
            await runtime.close()
            app.state.runtime = None
            tracing.shutdown()
            # Drop this worker's live gauges (in-flight, queue depth) from the shared sum;
            # a no-op unless PROMETHEUS_MULTIPROC_DIR is set.
            mark_process_dead(os.getpid())

    app = FastAPI(
        title="ca-serve",
        summary="CA-MobileNetV2 image classification",
        description=DESCRIPTION,
        version="1",
        lifespan=lifespan,
        # /docs and /redoc come from `apidocs` with self-hosted assets (FastAPI's use a CDN).
        docs_url=None,
        redoc_url=None,
        telemetry=telemetry_config(tracing),
    )
    app.state.settings = settings
    app.state.tracing = tracing
    app.state.metrics = metrics
    app.state.api_keys = ApiKeys(settings.api_keys)
    app.state.runtime = None
    install_handlers(app)
    app.include_router(router)
    app.include_router(admin.router)
    app.include_router(v2_router)
    app.include_router(apidocs.router)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=[
                "Authorization", "Content-Type", "X-Request-ID", "traceparent", "tracestate"
            ],
            expose_headers=["X-Request-ID", TRACERESPONSE_HEADER],
        )
    if tracing.enabled:
        app.add_middleware(TraceResponseMiddleware)
    app.add_middleware(RequestContextMiddleware, metrics=metrics, log_access=settings.access_log)
    return app
