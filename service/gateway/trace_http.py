"""Tracing at the HTTP edge: FastAPI's own OpenTelemetry support makes the server span,
and `TraceResponseMiddleware` hands the trace context back to the caller.

The server span is FastAPI's (`FastAPI(telemetry=...)`, FastAPI >= 0.158): it extracts
the caller's `traceparent` with the global propagator (`OTEL_PROPAGATORS`, default W3C
Trace Context and Baggage) and names the span after the route template (`POST
/classify`). Its operation spans, metrics and log records stay off: the gateway's own spans,
Prometheus and the JSON log already cover them. Probes and scrapes (`UNTRACED_PATHS`) are
not traced.

The answer carries `traceresponse: 00-<trace id>-<server span id>-<flags>` (W3C Trace
Context Level 2), so a caller that sent no `traceparent` still learns which trace its
request was. Off, FastAPI's telemetry is switched off explicitly (it would otherwise
trace whenever some other code set a global tracer provider) and the middleware is absent.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from fastapi.telemetry import TelemetryConfig
from opentelemetry import trace
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.gateway.tracing import Tracing, traceresponse

TRACERESPONSE_HEADER = "traceresponse"
# Probes and scrapes: a span every few seconds from each prober, none of it a user's request.
UNTRACED_PATHS = frozenset(
    {"/metrics", "/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"}
)


def _untraced(scope: MutableMapping[str, Any]) -> bool:
    return scope.get("path") in UNTRACED_PATHS


def telemetry_config(tracing: Tracing) -> TelemetryConfig:
    """FastAPI's telemetry settings for `tracing`: server spans to its provider when on
    (not for `UNTRACED_PATHS`); nothing at all when off."""
    if not tracing.enabled:
        return {"tracing": False, "metrics": False, "logs": False, "auto_configure": False}
    return {
        "tracer_provider": tracing.provider,
        "tracing": True,
        # FastAPI's dependency, endpoint and serialization spans would double the spans
        # per request for little: the gateway's own spans say where the time goes.
        "operation_spans": False,
        "metrics": False,
        "logs": False,
        "auto_configure": False,
        "exclude": _untraced,
    }


class TraceResponseMiddleware:
    """Adds `traceresponse` (the server span's context) to every HTTP answer. Installed
    inside FastAPI's telemetry, so the current span when a request enters is its server
    span."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        value = traceresponse(trace.get_current_span())

        async def send_with_context(message: Message) -> None:
            if value is not None and message["type"] == "http.response.start":
                MutableHeaders(scope=message)[TRACERESPONSE_HEADER] = value
            await send(message)

        await self.app(scope, receive, send_with_context)
