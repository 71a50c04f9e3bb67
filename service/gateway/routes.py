"""HTTP routes. They parse, call the runtime and shape answers; errors are raised as
`service.errors` types and rendered by `http_errors.py`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse

from service.errors import BackendUnavailable, ClientClosedRequest, InvalidParameter
from service.gateway.backends import engine_of
from service.gateway.json_body import base64_body_limit, parse_json_body
from service.gateway.metrics import CONTENT_TYPE
from service.gateway.runtime import Runtime, Upload
from service.gateway.schemas import (
    ClassifyResponse,
    ErrorResponse,
    Health,
    ImageResult,
    ModelDescription,
    ModelRef,
    Prediction,
    Readiness,
    WeightsSource,
)
from service.gateway.security import Authorized
from service.gateway.uploads import parse_multipart, read_body, request_kind

T = TypeVar("T")
STATIC_DIR = Path(__file__).parent / "static"

router = APIRouter()

RANDOM_INIT_WARNING = (
    "RANDOM-INIT WEIGHTS, not ImageNet-trained: labels are meaningless "
    "(serve a trained checkpoint: make run WEIGHTS=PATH)"
)


async def get_runtime(request: Request) -> Runtime:
    # async: FastAPI runs a sync dependency in its thread pool (a thread hop per request).
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise BackendUnavailable("the gateway is starting")
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorResponse} for status in statuses}


_B64: dict[str, Any] = {"type": "string", "format": "byte", "description": "The image, base64"}
_JSON_BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["instances"],
    "additionalProperties": False,
    "properties": {
        "instances": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "image_bytes": {
                        "type": "object",
                        "required": ["b64"],
                        "additionalProperties": False,
                        "properties": {"b64": _B64},
                    },
                    "b64": _B64,
                    "filename": {"type": ["string", "null"]},
                },
            },
        },
        "top_k": {"type": "integer", "minimum": 1},
    },
}
_CLASSIFY_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "One image as the body, multipart/form-data with 'file' parts, or "
        "JSON with base64 images (TF Serving / KServe v1 'instances'; 'top_k' in the body "
        "or the query, not both with different values).",
        "content": {
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": _JSON_BODY_SCHEMA},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            },
        },
    }
}


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    summary="Classify one or more images",
    responses=_errors(400, 401, 408, 413, 415, 422, 503, 504),
    openapi_extra=_CLASSIFY_BODY,
)
async def classify(
    request: Request,
    _auth: Authorized,
    runtime: RuntimeDep,
    top_k: Annotated[
        int | None,
        # Range checked below, so 0 and too large a value get the same answer; the schema
        # still says the minimum.
        Query(
            description="Classes per image, 1 to the model's classes (default: CA_DEFAULT_TOP_K)",
            json_schema_extra={"minimum": 1},
        ),
    ] = None,
) -> ClassifyResponse:
    settings, model = runtime.settings, runtime.model
    k = top_k if top_k is not None else min(settings.default_top_k, model.spec.num_classes)
    if not 1 <= k <= model.spec.num_classes:
        raise InvalidParameter(
            f"top_k must be between 1 and {model.spec.num_classes}, got {k}"
        )
    content_type = request.headers.get("content-type", "")
    kind = request_kind(content_type)
    runtime.admit(1)  # an overloaded gateway refuses before reading the body
    limit = settings.max_upload_bytes
    body = await read_body(
        request,
        base64_body_limit(limit) if kind == "json" else limit,
        timeout_s=settings.body_timeout_s,
    )
    if kind == "raw":
        uploads = [Upload(body)]
    elif kind == "json":
        parsed = await runtime.run_cpu(
            parse_json_body, body, max_files=settings.max_files, max_bytes=limit
        )
        uploads = parsed.uploads
        k = _body_top_k(parsed.top_k, top_k, k, model.spec.num_classes)
    else:
        uploads = await runtime.run_cpu(
            parse_multipart, body, content_type, max_files=settings.max_files
        )
    request.state.images = len(uploads)
    rankings = await until_disconnected(request, runtime.classify(uploads, k))
    labels = model.labels
    # The model that computed the first image's answer (all of them but during a rollout).
    answered = rankings[0].model or runtime.backend.model_id()
    return ClassifyResponse(
        model=ModelRef(name=answered.name, version=answered.version),
        results=[
            ImageResult(
                filename=upload.filename,
                predictions=[
                    Prediction(label=labels[index], index=index, score=score)
                    for index, score in ranking
                ],
            )
            for upload, ranking in zip(uploads, rankings, strict=True)
        ],
    )


def _body_top_k(body_k: int | None, query_k: int | None, k: int, classes: int) -> int:
    """`top_k` from a JSON body, which must agree with the query's when both are given."""
    if body_k is None:
        return k
    if query_k is not None and query_k != body_k:
        raise InvalidParameter(
            f"top_k is {query_k} in the query and {body_k} in the body: send one"
        )
    if body_k > classes:
        raise InvalidParameter(f"top_k must be between 1 and {classes}, got {body_k}")
    return body_k


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first (its queued images
    are then dropped before their batch runs; batch-mates are unaffected)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise ClientClosedRequest("the client disconnected before the answer was ready")
    return task.result()


async def _disconnected(request: Request) -> None:
    # The body has been read, so the next ASGI message can only be the disconnect; the
    # pause guards against a server that keeps answering with empty body messages.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
        await asyncio.sleep(0.05)


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health()


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: the backend can serve",
    responses={503: {"model": Readiness}},
)
async def readyz(request: Request) -> Response:
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    # The backend that runs; before start-up, the one the settings name.
    backend = runtime.backend.name if runtime is not None else request.app.state.settings.backend
    if runtime is None:
        body = Readiness(status="not_ready", backend=backend, detail="starting")
    else:
        served = runtime.backend.model_id()
        ready = runtime.backend.ready() and not runtime.batcher.closed
        body = Readiness(
            status="ready" if ready else "not_ready",
            backend=backend,
            model=ModelRef(name=served.name, version=served.version),
            detail="shutting down" if runtime.batcher.closed else runtime.backend.status(),
        )
    if runtime is not None:  # absent from the body until an engine is known
        body.engine = engine_of(runtime.backend)
    status = 200 if body.status == "ready" else 503
    retry_after = str(request.app.state.settings.retry_after_s)
    headers = {} if status == 200 else {"Retry-After": retry_after}
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)


@router.get(
    "/v1/model",
    response_model=ModelDescription,
    summary="The served model",
    responses=_errors(401, 503),
)
async def model_description(_auth: Authorized, runtime: RuntimeDep) -> ModelDescription:
    model, spec = runtime.model, runtime.model.spec
    weights = model.weights
    if weights is None:
        source = WeightsSource(
            source="unknown", random_init=False, warning="no weights.json next to the model"
        )
    else:
        source = WeightsSource(
            source=weights.source,
            random_init=weights.random_init,
            sha256=weights.sha256,
            warning=RANDOM_INIT_WARNING if weights.random_init else None,
        )
    served = runtime.backend.model_id()
    return ModelDescription(
        name=served.name,
        version=served.version,
        backend=runtime.backend.name,
        engine=engine_of(runtime.backend),
        architecture=spec.architecture,
        num_classes=spec.num_classes,
        input_size=spec.input_size,
        resize_shorter=spec.resize_shorter,
        layout=spec.layout,
        dtype=spec.dtype,
        color=spec.color,
        weights=source,
        labels=list(model.labels),
    )


@router.get("/", include_in_schema=False, response_model=None)
async def index() -> Response:
    page = STATIC_DIR / "index.html"
    if not page.is_file():
        return JSONResponse({"service": "ca-serve", "docs": "/docs", "classify": "/classify"})
    return FileResponse(page, media_type="text/html")
