"""Per-request plumbing as one pure ASGI middleware (no BaseHTTPMiddleware, which breaks
streaming and disconnect detection): request ids, security headers, metrics, access log."""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.gateway.logs import ACCESS_LOGGER
from service.gateway.metrics import GatewayMetrics

REQUEST_ID_HEADER = "X-Request-ID"
# Honoured only when it is short and plain, so ids cannot inject into logs or headers.
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

access_log = logging.getLogger(ACCESS_LOGGER)


def request_id_from(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _VALID_REQUEST_ID.match(candidate):
                return candidate
            break
    return uuid.uuid4().hex


class RequestContextMiddleware:
    """Assigns `scope["state"]["request_id"]`, echoes it as `X-Request-ID`, adds
    `X-Content-Type-Options: nosniff`, counts and times each request by route template,
    tracks in-flight requests and writes one JSON access-log line per request."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics, *, log_access: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.log_access = log_access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = request_id_from(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        response_bytes = 0

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_bytes
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = request_id
                headers["X-Content-Type-Options"] = "nosniff"
            elif message["type"] == "http.response.body":
                response_bytes += len(message.get("body", b""))
            await send(message)

        self.metrics.inflight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.inflight.dec()
            duration = time.perf_counter() - start
            route_obj = scope.get("route")
            route = self.metrics.route_label(getattr(route_obj, "path", None))
            self.metrics.observe_request(route, status, duration)
            if self.log_access:
                self._log(scope, request_id, route, status, duration, response_bytes)

    def _log(
        self, scope: Scope, request_id: str, route: str, status: int, duration: float, size: int
    ) -> None:
        client = scope.get("client")
        state = scope.get("state", {})
        access_log.info(
            "%s %s %d",
            scope.get("method", ""),
            scope.get("path", ""),
            status,
            extra={
                "request_id": request_id,
                "method": scope.get("method", ""),
                "path": scope.get("path", "")[:256],
                "route": route,
                "status": status,
                "duration_s": round(duration, 6),
                "response_bytes": size,
                "client": f"{client[0]}:{client[1]}" if client else None,
                "images": state.get("images"),
                "error_code": state.get("error_code"),
            },
        )
