"""The one place where errors become HTTP: status codes, headers and the JSON body.

`STATUS` maps each `service.errors` class to its status (a subclass without its own entry
takes its nearest ancestor's); the headers follow from the error (`Retry-After` for every
`ServiceUnavailable`, `WWW-Authenticate: Bearer` for `Unauthorized`). `install_handlers`
renders every error, including FastAPI's validation errors and Starlette's 404/405, as
`{"error": {"code": ..., "message": ...}}`, except under `/v2/`, where the Open Inference
Protocol's clients expect `{"error": "message"}`. Nothing a client sends may produce a 500:
a 500 (`internal`) means a bug in the gateway.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import (
    AdminDisabled,
    BadRequest,
    BodyTimeout,
    ClientClosedRequest,
    InvalidParameter,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    ServiceError,
    ServiceUnavailable,
    Unauthorized,
    UnsupportedMediaType,
    VersionRefused,
)

logger = logging.getLogger("ca.gateway.errors")

STATUS: dict[type[ServiceError], int] = {
    ServiceError: 500,
    BadRequest: 400,  # and UndecodableImage
    Unauthorized: 401,
    AdminDisabled: 403,
    NotFound: 404,
    MethodNotAllowed: 405,
    BodyTimeout: 408,
    VersionRefused: 409,
    PayloadTooLarge: 413,  # and ImageTooLarge, TooManyFiles
    UnsupportedMediaType: 415,
    InvalidParameter: 422,
    ClientClosedRequest: 499,  # nginx's "client closed request": logged, never delivered
    ServiceUnavailable: 503,  # and Overloaded, BackendUnavailable, ShuttingDown
    RequestTimeout: 504,
}

# Starlette raises HTTPException for routing and request-level failures; these statuses
# become the matching error (and code), any other keeps its status with code "http_error".
_FROM_STARLETTE: dict[int, type[ServiceError]] = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: InvalidParameter,
}


def status_of(error: ServiceError) -> int:
    """The HTTP status for `error`: its class's entry in `STATUS`, or its nearest
    ancestor's."""
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    raise AssertionError("unreachable: ServiceError is in STATUS")


def headers_of(error: ServiceError) -> dict[str, str]:
    """The headers an answer carrying `error` needs."""
    if isinstance(error, ServiceUnavailable):
        return {"Retry-After": str(error.retry_after_s)}
    if isinstance(error, Unauthorized):
        return {"WWW-Authenticate": "Bearer"}
    return {}


#: Paths that speak the Open Inference Protocol (KServe v2), whose error body is
#: `{"error": "message"}` (the code still reaches the access log).
V2_PREFIX = "/v2"


def _json(
    status: int, code: str, message: str, headers: dict[str, str], *, plain: bool = False
) -> JSONResponse:
    body: dict[str, object] = {"error": message if plain else {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def _is_v2(request: Request) -> bool:
    path = request.url.path
    return path == V2_PREFIX or path.startswith(V2_PREFIX + "/")


def error_response(error: ServiceError) -> JSONResponse:
    """`{"error": {"code", "message"}}` with the status and headers `error` maps to."""
    return _json(status_of(error), error.code, error.message, headers_of(error))


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for item in exc.errors():
        where = ".".join(str(p) for p in item.get("loc", ()) if p not in ("query", "body"))
        parts.append(f"{where}: {item.get('msg', 'invalid')}" if where else item.get("msg", ""))
    return "; ".join(parts) or "invalid request parameters"


async def _handle_service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    request.state.error_code = exc.code  # for the access log
    if _is_v2(request):
        return _json(status_of(exc), exc.code, exc.message, headers_of(exc), plain=True)
    return error_response(exc)


async def _handle_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    cls = _FROM_STARLETTE.get(exc.status_code)
    if cls is None:  # rare statuses keep their code
        request.state.error_code = "http_error"
        return _json(exc.status_code, "http_error", detail, {}, plain=_is_v2(request))
    return await _handle_service_error(request, cls(detail))


async def _handle_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return await _handle_service_error(request, InvalidParameter(_validation_message(exc)))


async def _handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error on %s", request.url.path, exc_info=exc)
    error = ServiceError("internal error; the gateway logged the details")
    return await _handle_service_error(request, error)


def install_handlers(app: FastAPI) -> None:
    """Route every exception type through `error_response`."""
    app.add_exception_handler(ServiceError, _handle_service_error)
    app.add_exception_handler(StarletteHTTPException, _handle_http_exception)
    app.add_exception_handler(RequestValidationError, _handle_validation)
    app.add_exception_handler(Exception, _handle_unexpected)
