"""The client's exceptions: one base class, one type per way a call can fail.

`APIError` is an answer from the gateway (`{"error": {"code", "message"}}` with a 4xx/5xx
status); `ServerUnreachable` and `RequestTimedOut` mean no answer came back at all.
"""

from __future__ import annotations


class CAServeError(Exception):
    """Anything the ca-serve client raises."""


class APIError(CAServeError):
    """The gateway answered with an error status.

    `status` is the HTTP status, `code` the gateway's machine-readable error code
    (`"unsupported_media_type"`, ...; `"http_<status>"` when the body was not the
    documented JSON), `message` its human-readable text. `retry_after_s` is the parsed
    `Retry-After` header, if any; `request_id` the echoed `X-Request-ID`.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        request_id: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.retry_after_s = retry_after_s

    @property
    def retryable(self) -> bool:
        """True for 503 (overloaded or backend down): the same request may succeed later."""
        return self.status == 503


class ServerUnreachable(CAServeError):
    """No connection to the gateway could be made (refused, reset, DNS), retries included."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach ca-serve at {url}: {reason}")
        self.url = url
        self.reason = reason


class RequestTimedOut(CAServeError):
    """The gateway accepted the connection but did not answer within the client's timeout."""

    def __init__(self, url: str, timeout_s: float) -> None:
        super().__init__(f"no answer from {url} within {timeout_s:g} s")
        self.url = url
        self.timeout_s = timeout_s
