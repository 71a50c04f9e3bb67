"""The HTTP meaning of every service error: status, code and headers, pinned as clients
rely on them, and the one JSON shape they are rendered in."""

from __future__ import annotations

import inspect
import json

import pytest

from service import errors
from service.errors import ServiceError
from service.gateway.http_errors import STATUS, error_response, headers_of, status_of

# code -> HTTP status: the contract documented in docs/gateway.md and used by the clients.
CONTRACT = {
    "internal": 500,
    "bad_request": 400,
    "undecodable_image": 400,
    "unauthorized": 401,
    "admin_disabled": 403,
    "not_found": 404,
    "version_refused": 409,
    "method_not_allowed": 405,
    "body_timeout": 408,
    "payload_too_large": 413,
    "image_too_large": 413,
    "too_many_files": 413,
    "unsupported_media_type": 415,
    "invalid_parameter": 422,
    "client_closed_request": 499,
    "unavailable": 503,
    "overloaded": 503,
    "backend_unavailable": 503,
    "shutting_down": 503,
    "timeout": 504,
}


def error_classes() -> list[type[ServiceError]]:
    return [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, ServiceError)
    ]


def test_every_error_class_has_its_pinned_code_and_status() -> None:
    seen = {cls.code: status_of(cls("x")) for cls in error_classes()}
    assert seen == CONTRACT


def test_domain_errors_know_no_http() -> None:
    for cls in error_classes():
        error = cls("x")
        assert not hasattr(error, "status") and not hasattr(error, "headers"), cls
    assert all(issubclass(cls, ServiceError) for cls in STATUS)


@pytest.mark.parametrize(
    ("error", "headers"),
    [
        (errors.Overloaded("busy", retry_after_s=7), {"Retry-After": "7"}),
        (errors.BackendUnavailable("down"), {"Retry-After": "1"}),
        (errors.ShuttingDown("bye", retry_after_s=0), {"Retry-After": "0"}),
        (errors.Unauthorized("no key"), {"WWW-Authenticate": "Bearer"}),
        (errors.RequestTimeout("slow"), {}),
        (errors.ImageTooLarge("big"), {}),
    ],
)
def test_headers_follow_from_the_error(error: ServiceError, headers: dict[str, str]) -> None:
    assert headers_of(error) == headers
    response = error_response(error)
    for name, value in headers.items():
        assert response.headers[name] == value
    assert ("retry-after" in response.headers) == ("Retry-After" in headers)


def test_error_response_body_shape() -> None:
    response = error_response(errors.TooManyFiles("at most 16 files per request"))
    assert response.status_code == 413
    assert json.loads(bytes(response.body)) == {
        "error": {"code": "too_many_files", "message": "at most 16 files per request"}
    }
