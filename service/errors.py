"""The service's closed set of errors, free of any web framework.

Preprocessing, backends, the runtime and the request parsers raise a `ServiceError`
subclass; each carries a stable machine-readable `code` (clients key on it) and a message
for humans. What an error means in HTTP (status code, `Retry-After`, `WWW-Authenticate`)
is decided in one place, `service.gateway.http_errors`; nothing here knows about HTTP, so
the model tools (`ca-serve build-repo`, export checks) import this module without
loading a web framework.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error the service answers with; `code` is the contract. Raised
    as itself, it means a bug in the service (`internal`)."""

    code: str = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ServiceError):
    """The request is malformed (a broken multipart body, a bad Content-Length)."""

    code = "bad_request"


class UndecodableImage(BadRequest):
    """The bytes are not an image Pillow can decode (garbage, truncated, corrupt)."""

    code = "undecodable_image"


class Unauthorized(ServiceError):
    """No API key, or one that is not configured."""

    code = "unauthorized"


class AdminDisabled(ServiceError):
    """The model admin routes are off: no API keys are configured to guard them, and
    `allow_unauthenticated_admin` is not set."""

    code = "admin_disabled"


class NotFound(ServiceError):
    code = "not_found"


class VersionRefused(ServiceError):
    """A model version exists but may not serve (incomplete, unloadable, or its answers
    differ from its recorded reference); the version serving before keeps serving."""

    code = "version_refused"


class MethodNotAllowed(ServiceError):
    code = "method_not_allowed"


class BodyTimeout(ServiceError):
    """The request body did not arrive within `body_timeout_s` (a stalled or trickling
    upload would otherwise hold its connection and task indefinitely)."""

    code = "body_timeout"


class PayloadTooLarge(ServiceError):
    """The request body is larger than `max_upload_bytes`."""

    code = "payload_too_large"


class ImageTooLarge(PayloadTooLarge):
    """The image header declares more pixels than `max_image_pixels` (checked pre-decode)."""

    code = "image_too_large"


class TooManyFiles(PayloadTooLarge):
    """More `file` parts than `max_files` in one request."""

    code = "too_many_files"


class UnsupportedMediaType(ServiceError):
    """A body or part declared as something other than an accepted image type."""

    code = "unsupported_media_type"


class InvalidParameter(ServiceError):
    """A parameter is out of range or missing (`top_k`, no `file` part)."""

    code = "invalid_parameter"


class ServiceUnavailable(ServiceError):
    """Base of the errors that say "try again later"; `retry_after_s` says when."""

    code = "unavailable"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Overloaded(ServiceUnavailable):
    """The batcher's queue is full: shed load rather than queue without bound."""

    code = "overloaded"


class BackendUnavailable(ServiceUnavailable):
    """The inference backend is not ready, unreachable or failed."""

    code = "backend_unavailable"


class ShuttingDown(ServiceUnavailable):
    """The service is draining and takes no new work."""

    code = "shutting_down"


class RequestTimeout(ServiceError):
    """The answer did not come within `request_timeout_s`."""

    code = "timeout"


class ClientClosedRequest(ServiceError):
    """The client disconnected before its answer was ready; never delivered, but counted
    and logged."""

    code = "client_closed_request"


class ContractError(RuntimeError):
    """A model does not match its spec (names, dtypes, shapes). Raised at start-up, never
    turned into an answer: the service refuses to serve a model it cannot feed."""
