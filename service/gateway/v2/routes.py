"""`/v2/...`: the Open Inference Protocol (KServe v2 REST) in front of the same runtime as
`/classify`: the same batching, limits, API keys and metrics.

Health and server metadata are open, like `/healthz`; everything under `/v2/models/` needs
an API key when keys are configured, like `/v1/model`. The only model is the served one,
at its served version; any other name or version is a 404. Errors are the protocol's
`{"error": "message"}` (`http_errors.py` renders them so for every path under `/v2/`).
"""

from __future__ import annotations

from importlib import metadata as package_metadata
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from service.errors import NotFound
from service.gateway.json_body import base64_body_limit
from service.gateway.routes import RuntimeDep, until_disconnected
from service.gateway.runtime import Runtime
from service.gateway.security import Authorized
from service.gateway.uploads import read_body
from service.gateway.v2 import codec
from service.gateway.v2.contract import Job, V2Model
from service.gateway.v2.parse import parse_request
from service.gateway.v2.schemas import (
    INFER_REQUEST,
    INFER_RESPONSE,
    ModelMetadata,
    ModelReady,
    ServerLive,
    ServerMetadata,
    ServerReady,
    V2Error,
)

SERVER_NAME = "ca-serve"
EXTENSIONS = ["binary_tensor_data", "classification"]
BINARY_MEDIA_TYPE = "application/octet-stream"

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol (KServe v2)"])


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": V2Error} for status in statuses}


def _server_version() -> str:
    try:
        return package_metadata.version(SERVER_NAME)
    except package_metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown"


def served_model(runtime: Runtime, name: str, version: str | None) -> V2Model:
    """The served model when `name` (and `version`, if given) are its own; else 404."""
    served = runtime.model.spec.name
    serving = runtime.backend.model_id().version
    if name != served:
        raise NotFound(f"unknown model {name[:100]!r}: this server serves {served!r}")
    if version is not None and version != serving:
        raise NotFound(f"model {served!r} has no version {version[:40]!r}; "
                       f"it serves version {serving!r}")
    return V2Model(
        name=served,
        version=serving,
        platform=f"{SERVER_NAME}_{runtime.backend.name}",
        spec=runtime.model.spec,
        labels=runtime.model.labels,
    )


def _ready(request: Request) -> bool:
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    return runtime is not None and not runtime.batcher.closed and runtime.backend.ready()


def _readiness(request: Request, body: dict[str, Any], ready: bool) -> JSONResponse:
    # 503 (not the spec's "a 4xx") while not ready, as /readyz: probes and load balancers
    # read it as "try later", and it carries Retry-After.
    retry_after = str(request.app.state.settings.retry_after_s)
    headers = {} if ready else {"Retry-After": retry_after}
    return JSONResponse(body, status_code=200 if ready else 503, headers=headers)


# -- server -------------------------------------------------------------------------------
@router.get("", response_model=ServerMetadata, summary="Server metadata")
async def server_metadata() -> ServerMetadata:
    return ServerMetadata(name=SERVER_NAME, version=_server_version(), extensions=EXTENSIONS)


@router.get("/health/live", response_model=ServerLive, summary="Server live")
async def server_live() -> ServerLive:
    return ServerLive(live=True)


@router.get(
    "/health/ready",
    response_model=ServerReady,
    summary="Server ready (503 while starting, shutting down or the backend is down)",
    responses={503: {"model": ServerReady}},
)
async def server_ready(request: Request) -> JSONResponse:
    ready = _ready(request)
    return _readiness(request, {"ready": ready}, ready)


# -- model metadata and readiness ---------------------------------------------------------
_MODEL_ERRORS = _errors(401, 404, 503)


@router.get("/models/{model_name}", response_model=ModelMetadata, summary="Model metadata",
            responses=_MODEL_ERRORS)
async def model_metadata(_auth: Authorized, runtime: RuntimeDep, model_name: str) -> Any:
    return served_model(runtime, model_name, None).metadata()


@router.get("/models/{model_name}/versions/{model_version}", response_model=ModelMetadata,
            summary="Model metadata, one version", responses=_MODEL_ERRORS)
async def model_version_metadata(
    _auth: Authorized, runtime: RuntimeDep, model_name: str, model_version: str
) -> Any:
    return served_model(runtime, model_name, model_version).metadata()


_READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_errors(401, 404), 503: {"model": ModelReady | V2Error}
}


@router.get("/models/{model_name}/ready", response_model=ModelReady, summary="Model ready",
            responses=_READY_RESPONSES)
async def model_ready(
    request: Request, _auth: Authorized, runtime: RuntimeDep, model_name: str
) -> JSONResponse:
    model = served_model(runtime, model_name, None)
    ready = _ready(request)
    return _readiness(request, {"name": model.name, "ready": ready}, ready)


@router.get("/models/{model_name}/versions/{model_version}/ready", response_model=ModelReady,
            summary="Model ready, one version", responses=_READY_RESPONSES)
async def model_version_ready(
    request: Request, _auth: Authorized, runtime: RuntimeDep, model_name: str,
    model_version: str,
) -> JSONResponse:
    model = served_model(runtime, model_name, model_version)
    ready = _ready(request)
    return _readiness(request, {"name": model.name, "ready": ready}, ready)


# -- inference ----------------------------------------------------------------------------
_INFER_OPENAPI: dict[str, Any] = {
    "parameters": [{
        "name": codec.HEADER_LENGTH,
        "in": "header",
        "required": False,
        "description": "Binary tensor data extension: the length of the JSON part of the "
        "body; the inputs' binary data follows it",
        "schema": {"type": "integer", "minimum": 0},
    }],
    "requestBody": {
        "required": True,
        "description": "An inference request: JSON, or JSON followed by binary tensor data",
        "content": {
            "application/json": {"schema": INFER_REQUEST},
            BINARY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
        },
    },
}
_INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The outputs: JSON, or JSON then binary tensor data (with "
        f"{codec.HEADER_LENGTH})",
        "content": {
            "application/json": {"schema": INFER_RESPONSE},
            BINARY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
        },
    },
    **_errors(400, 401, 404, 408, 413, 415, 503, 504),
}


@router.post("/models/{model_name}/infer", summary="Inference", response_class=Response,
             responses=_INFER_RESPONSES, openapi_extra=_INFER_OPENAPI)
async def infer(
    request: Request, _auth: Authorized, runtime: RuntimeDep, model_name: str
) -> Response:
    return await _infer(request, runtime, served_model(runtime, model_name, None))


@router.post("/models/{model_name}/versions/{model_version}/infer",
             summary="Inference, one version", response_class=Response,
             responses=_INFER_RESPONSES, openapi_extra=_INFER_OPENAPI)
async def infer_version(
    request: Request, _auth: Authorized, runtime: RuntimeDep, model_name: str,
    model_version: str,
) -> Response:
    return await _infer(request, runtime, served_model(runtime, model_name, model_version))


async def _infer(request: Request, runtime: Runtime, model: V2Model) -> Response:
    settings = runtime.settings
    # JSON carries images as base64 and pixels as decimal text: the body may exceed the
    # image bytes it holds by that much; the images themselves stay within the limit.
    limit = base64_body_limit(settings.max_upload_bytes)
    body = await read_body(request, limit, timeout_s=settings.body_timeout_s)
    headers = request.headers

    def parse() -> tuple[codec.InferRequest, Job]:
        raw = codec.decode_content(body, headers.get("content-encoding"), limit=limit)
        parsed = parse_request(
            raw, codec.header_length(headers.get(codec.HEADER_LENGTH), len(raw))
        )
        job = model.prepare(
            parsed, max_images=settings.max_files, max_bytes=settings.max_upload_bytes
        )
        return parsed, job

    parsed, job = await runtime.run_cpu(parse)
    request.state.images = len(job.images)
    rankings = await until_disconnected(request, runtime.classify(job.images, job.k))

    # The version that computed the answer (a rollout may switch it under a request).
    answered = rankings[0].model if rankings and rankings[0].model else None

    def respond() -> tuple[bytes, int | None]:
        return codec.encode_response(
            model_name=model.name,
            model_version=answered.version if answered else model.version,
            request_id=parsed.id,
            outputs=model.answer(job, rankings),
        )

    content, json_length = await runtime.run_cpu(respond)
    if json_length is None:
        return Response(content, media_type="application/json")
    return Response(content, media_type=BINARY_MEDIA_TYPE,
                    headers={codec.HEADER_LENGTH: str(json_length)})
