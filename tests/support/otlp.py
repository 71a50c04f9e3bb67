"""A real OTLP/HTTP trace receiver for tests: `POST /v1/traces` on a free loopback port.

It decodes both encodings the senders here use: `application/x-protobuf` (the gateway's
OpenTelemetry SDK exporter) with `opentelemetry-proto`, and `application/json` (Triton's
OpenTelemetry C++ exporter), whose OTLP/JSON mapping writes trace and span ids as hex
strings rather than protobuf-JSON base64. Every span received is kept as a `Span`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.support.triton import free_port

KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


@dataclass(frozen=True)
class Span:
    """One received span; ids as lowercase hex, `parent_id` "" for a root."""

    service: str
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)
    links: list[tuple[str, str]] = field(default_factory=list)  # (trace id, span id)
    error: bool = False


def _any_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def _from_protobuf(body: bytes) -> list[Span]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _any_value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for s in scope_spans.spans:
                spans.append(Span(
                    service=str(resource.get("service.name", "")),
                    name=s.name,
                    kind=KINDS.get(s.kind, str(s.kind)),
                    trace_id=s.trace_id.hex(),
                    span_id=s.span_id.hex(),
                    parent_id=s.parent_span_id.hex(),
                    start_ns=s.start_time_unix_nano,
                    end_ns=s.end_time_unix_nano,
                    attributes={a.key: _any_value(a.value) for a in s.attributes},
                    links=[(link.trace_id.hex(), link.span_id.hex()) for link in s.links],
                    error=s.status.code == 2,
                ))
    return spans


def _json_value(value: dict[str, Any]) -> Any:
    for key, raw in value.items():
        return int(raw) if key == "intValue" else raw
    return None


def _from_json(body: bytes) -> list[Span]:
    spans = []
    for resource_spans in json.loads(body).get("resourceSpans", []):
        attributes = resource_spans.get("resource", {}).get("attributes", [])
        resource = {a["key"]: _json_value(a["value"]) for a in attributes}
        for scope_spans in resource_spans.get("scopeSpans", []):
            for s in scope_spans.get("spans", []):
                spans.append(Span(
                    service=str(resource.get("service.name", "")),
                    name=s["name"],
                    kind=KINDS.get(int(s.get("kind", 0)), str(s.get("kind"))),
                    trace_id=s["traceId"].lower(),
                    span_id=s["spanId"].lower(),
                    parent_id=s.get("parentSpanId", "").lower(),
                    start_ns=int(s.get("startTimeUnixNano", 0)),
                    end_ns=int(s.get("endTimeUnixNano", 0)),
                    attributes={a["key"]: _json_value(a["value"])
                                for a in s.get("attributes", [])},
                    links=[(k["traceId"].lower(), k["spanId"].lower())
                           for k in s.get("links", [])],
                    error=s.get("status", {}).get("code") in (2, "STATUS_CODE_ERROR"),
                ))
    return spans


class OtlpReceiver:
    """The receiver, a context manager; `endpoint` is the base URL to export to
    (`OTEL_EXPORTER_OTLP_ENDPOINT`), `traces_url` the full `/v1/traces` URL."""

    def __init__(self) -> None:
        self.port = free_port()
        self.spans: list[Span] = []
        self.content_types: set[str] = set()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                content_type = self.headers.get("Content-Type", "").split(";")[0].strip()
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                decode = _from_json if content_type == "application/json" else _from_protobuf
                received = decode(body)
                with receiver._lock:
                    receiver.spans.extend(received)
                    receiver.content_types.add(content_type)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def traces_url(self) -> str:
        return f"{self.endpoint}/v1/traces"

    def received(self) -> list[Span]:
        with self._lock:
            return list(self.spans)

    def wait_for(
        self, predicate: Callable[[list[Span]], bool], timeout_s: float = 20.0
    ) -> list[Span]:
        """The spans received, once `predicate(spans)` holds; AssertionError on timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            spans = self.received()
            if predicate(spans):
                return spans
            if time.monotonic() > deadline:
                names = sorted({(s.service, s.name, s.trace_id[:8]) for s in spans})
                raise AssertionError(f"spans never arrived; received: {names}")
            time.sleep(0.05)

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
