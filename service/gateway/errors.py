"""The gateway's closed set of errors, and the one place that turns them into HTTP.

Routes, preprocessing and backends raise a `GatewayError` subclass; `install_handlers`
renders every error, including FastAPI's validation errors and Starlette's 404/405, as
`{"error": {"code": ..., "message": ...}}`. Nothing a client sends may produce a 500:
a 500 (`internal`) means a bug in the gateway.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("ca.gateway.errors")


class GatewayError(Exception):
    """Base of every error the gateway answers with; `status` and `code` are the contract."""

    status: int = 500
    code: str = "internal"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})


class BadRequest(GatewayError):
    status = 400
    code = "bad_request"


class UndecodableImage(BadRequest):
    """The bytes are not an image Pillow can decode (garbage, truncated, corrupt)."""

    code = "undecodable_image"


class Unauthorized(GatewayError):
    status = 401
    code = "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class NotFound(GatewayError):
    status = 404
    code = "not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    code = "method_not_allowed"


class BodyTimeout(GatewayError):
    """The request body did not arrive within `body_timeout_s` (a stalled or trickling
    upload would otherwise hold its connection and task indefinitely)."""

    status = 408
    code = "body_timeout"


class PayloadTooLarge(GatewayError):
    """The request body is larger than `max_upload_bytes`."""

    status = 413
    code = "payload_too_large"


class ImageTooLarge(PayloadTooLarge):
    """The image header declares more pixels than `max_image_pixels` (checked pre-decode)."""

    code = "image_too_large"


class TooManyFiles(PayloadTooLarge):
    code = "too_many_files"


class UnsupportedMediaType(GatewayError):
    status = 415
    code = "unsupported_media_type"


class InvalidParameter(GatewayError):
    status = 422
    code = "invalid_parameter"


class ServiceUnavailable(GatewayError):
    """Base of the 503s; always carries `Retry-After`."""

    status = 503
    code = "unavailable"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class Overloaded(ServiceUnavailable):
    """The batcher's queue is full: shed load rather than queue without bound."""

    code = "overloaded"


class BackendUnavailable(ServiceUnavailable):
    """The inference backend is not ready, unreachable or failed."""

    code = "backend_unavailable"


class ShuttingDown(ServiceUnavailable):
    code = "shutting_down"


class RequestTimeout(GatewayError):
    """The answer did not come within `request_timeout_s`."""

    status = 504
    code = "timeout"


class ClientClosedRequest(GatewayError):
    """The client disconnected before its answer was ready (nginx's 499); never delivered,
    but counted and logged."""

    status = 499
    code = "client_closed_request"


class ContractError(RuntimeError):
    """A model does not match its spec (names, dtypes, shapes). Raised at start-up, never
    turned into an HTTP answer: the gateway refuses to serve a model it cannot feed."""


def error_response(error: GatewayError) -> JSONResponse:
    body = {"error": {"code": error.code, "message": error.message}}
    return JSONResponse(body, status_code=error.status, headers=error.headers)


def _from_http_exception(exc: StarletteHTTPException) -> GatewayError:
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    mapped: dict[int, type[GatewayError]] = {
        400: BadRequest,
        401: Unauthorized,
        404: NotFound,
        405: MethodNotAllowed,
        413: PayloadTooLarge,
        415: UnsupportedMediaType,
        422: InvalidParameter,
    }
    cls = mapped.get(exc.status_code)
    if cls is Unauthorized:
        return Unauthorized(detail)
    if cls is not None:
        return cls(detail)
    error = GatewayError(detail)
    error.status, error.code = exc.status_code, "http_error"  # rare codes keep their status
    return error


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for item in exc.errors():
        where = ".".join(str(p) for p in item.get("loc", ()) if p not in ("query", "body"))
        parts.append(f"{where}: {item.get('msg', 'invalid')}" if where else item.get("msg", ""))
    return "; ".join(parts) or "invalid request parameters"


def _respond(request: Request, error: GatewayError) -> JSONResponse:
    request.state.error_code = error.code  # for the access log
    return error_response(error)


async def _handle_gateway_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, GatewayError)
    return _respond(request, exc)


async def _handle_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return _respond(request, _from_http_exception(exc))


async def _handle_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return _respond(request, InvalidParameter(_validation_message(exc)))


async def _handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error on %s", request.url.path, exc_info=exc)
    return _respond(request, GatewayError("internal error; the gateway logged the details"))


def install_handlers(app: FastAPI) -> None:
    """Route every exception type through `error_response`."""
    app.add_exception_handler(GatewayError, _handle_gateway_error)
    app.add_exception_handler(StarletteHTTPException, _handle_http_exception)
    app.add_exception_handler(RequestValidationError, _handle_validation)
    app.add_exception_handler(Exception, _handle_unexpected)
