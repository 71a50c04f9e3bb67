"""Tracing in process: the real app (tiny ONNX model, embedded backend) with an SDK tracer
provider whose spans land in an in-memory exporter.

Checks the span tree and attributes of a single request and of two requests sharing one
batch (one inference span linked to both, their queue waits ending where it starts), that
a caller's `traceparent` is continued and the trace returned as `traceresponse`, and that
with tracing off nothing is installed at all.
"""

from __future__ import annotations

import asyncio
import io

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from PIL import Image
from prometheus_client import CollectorRegistry

from service.gateway.app import create_app
from service.gateway.settings import Settings
from service.gateway.trace_http import TraceResponseMiddleware, telemetry_config
from service.gateway.tracing import TRACING_OFF, Tracing, client_call
from tests.gateway.conftest import open_client
from tests.support.gateway import TINY_MODEL

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


def png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracing(exporter: InMemorySpanExporter) -> Tracing:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider)


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def one(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    [span] = by_name(spans, name)
    return span


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.trace_id


def flags(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.trace_flags)


def as_traceresponse(span: ReadableSpan) -> str:
    return f"00-{trace_id(span):032x}-{span_id(span):016x}-{flags(span):02x}"


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_one_request_gives_one_tree(
    tiny_settings: Settings, tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    app = create_app(tiny_settings, registry=CollectorRegistry(), tracing=tracing)
    files = [("file", (f"{c}.png", png((c, 9, 9)), "image/png")) for c in (10, 200)]
    async for client in open_client(app):
        response = await client.post(
            "/classify?top_k=3", files=files, headers={"traceparent": TRACEPARENT}
        )
        assert response.status_code == 200, response.text
    spans = exporter.get_finished_spans()

    server = one(spans, "POST /classify")
    assert server.kind is SpanKind.SERVER
    assert f"{trace_id(server):032x}" == CALLER_TRACE  # the caller's trace continues
    assert f"{parent_id(server):016x}" == CALLER_SPAN
    assert server.attributes is not None and server.attributes["http.response.status_code"] == 200
    assert response.headers["traceresponse"] == f"00-{CALLER_TRACE}-{span_id(server):016x}-01"
    assert {trace_id(s) for s in spans} == {trace_id(server)}  # one trace, nothing stray

    read = one(spans, "read body")
    assert read.attributes == {"http.request.body.size": int(response.request.headers[
        "content-length"])}
    preprocess = by_name(spans, "preprocess")
    waits = by_name(spans, "queue wait")
    inference = one(spans, "inference")
    assert len(preprocess) == 2 and len(waits) == 2
    assert sorted(w.attributes["ca.image.index"] for w in waits) == [0, 1]  # type: ignore[index]
    for span in (read, *preprocess, *waits, inference):
        assert parent_id(span) == span_id(server), span.name
    # The batch: both images, linked to both waits, which end where it starts.
    assert inference.attributes == {
        "ca.batch.size": 2,
        "ca.backend": "embedded",
        "ca.model.name": TINY_MODEL,
        "ca.model.version": "1",
    }
    assert {link.context.span_id for link in inference.links} == {span_id(w) for w in waits}
    assert all(w.end_time <= inference.start_time for w in waits)  # type: ignore[operator]
    assert all(p.end_time <= w.start_time for p in preprocess for w in waits)  # type: ignore[operator]
    # The embedded backend calls nobody: no client span.
    assert not [s for s in spans if s.kind is SpanKind.CLIENT]


async def test_two_requests_in_one_batch_share_one_linked_inference_span(
    tiny_settings: Settings, tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    # The batch closes when both images are queued; the long delay only makes sure the
    # first waits for the second rather than leaving alone.
    settings = tiny_settings.model_copy(update={
        "max_batch_size": 2, "max_batch_delay_ms": 5000.0, "max_concurrent_batches": 1,
    })
    app = create_app(settings, registry=CollectorRegistry(), tracing=tracing)
    headers = {"Content-Type": "image/png"}
    async for client in open_client(app):
        first, second = await asyncio.gather(
            client.post("/classify", content=png((1, 2, 3)), headers=headers),
            client.post("/classify", content=png((200, 2, 3)), headers=headers),
        )
        assert first.status_code == second.status_code == 200
    spans = exporter.get_finished_spans()

    servers = by_name(spans, "POST /classify")
    assert len(servers) == 2 and trace_id(servers[0]) != trace_id(servers[1])
    returned = {first.headers["traceresponse"], second.headers["traceresponse"]}
    assert returned == {as_traceresponse(s) for s in servers}
    inference = one(spans, "inference")
    assert inference.attributes is not None and inference.attributes["ca.batch.size"] == 2
    waits = by_name(spans, "queue wait")
    assert len(waits) == 2
    # One wait per request, each in its request's trace, both linked from the one batch.
    assert {trace_id(w) for w in waits} == {trace_id(s) for s in servers}
    for wait in waits:
        [server] = [s for s in servers if trace_id(s) == trace_id(wait)]
        assert parent_id(wait) == span_id(server)
    assert {(link.context.trace_id, link.context.span_id) for link in inference.links} == {
        (trace_id(w), span_id(w)) for w in waits
    }
    # The batch runs in the trace of the request that opened it, after both waits ended.
    assert parent_id(inference) in {span_id(s) for s in servers}
    assert all(w.end_time <= inference.start_time for w in waits)  # type: ignore[operator]
    latest_end = max(w.end_time for w in waits)  # type: ignore[type-var]
    assert inference.start_time - latest_end < 50_000_000  # type: ignore[operator] # < 50 ms


async def test_a_request_without_traceparent_starts_a_trace_and_probes_make_none(
    tiny_settings: Settings, tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    app = create_app(tiny_settings, registry=CollectorRegistry(), tracing=tracing)
    async for client in open_client(app):
        response = await client.get("/v1/model")
        probes = [await client.get(path) for path in ("/healthz", "/readyz", "/metrics")]
    assert all(p.status_code == 200 and "traceresponse" not in p.headers for p in probes)
    [server] = exporter.get_finished_spans()  # one request traced, the probes not
    assert server.name == "GET /v1/model"
    assert server.parent is None
    assert response.headers["traceresponse"] == as_traceresponse(server)
    flags = int(response.headers["traceresponse"].rsplit("-", 1)[1], 16)
    assert flags & 0x01  # sampled (0x02, a random trace id, may be set too)


async def test_a_refused_image_ends_its_spans_with_the_error(
    tiny_settings: Settings, tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    app = create_app(tiny_settings, registry=CollectorRegistry(), tracing=tracing)
    async for client in open_client(app):
        response = await client.post(
            "/classify", content=b"not an image", headers={"Content-Type": "image/png"}
        )
        assert response.status_code == 400
    spans = exporter.get_finished_spans()
    preprocess = one(spans, "preprocess")
    assert not preprocess.status.is_ok
    assert not by_name(spans, "queue wait") and not by_name(spans, "inference")
    assert "traceresponse" in response.headers


async def test_off_installs_nothing(tiny_settings: Settings) -> None:
    app = create_app(tiny_settings, registry=CollectorRegistry())
    assert app.state.tracing is TRACING_OFF
    assert isinstance(TRACING_OFF.provider, trace.NoOpTracerProvider)
    assert TRACING_OFF.tracer is None and not TRACING_OFF.enabled
    assert TraceResponseMiddleware not in [m.cls for m in app.user_middleware]
    # FastAPI's own telemetry is switched off too, whatever global provider exists.
    assert telemetry_config(TRACING_OFF) == {
        "tracing": False, "metrics": False, "logs": False, "auto_configure": False,
    }
    async for client in open_client(app):
        response = await client.post(
            "/classify", content=png((5, 5, 5)),
            headers={"Content-Type": "image/png", "traceparent": TRACEPARENT},
        )
        assert response.status_code == 200
        assert "traceresponse" not in response.headers
        assert app.state.runtime.tracing is TRACING_OFF



# -- the span helpers on their own ------------------------------------------------------
def test_a_backend_call_inside_a_batch_carries_the_client_span_to_the_callee(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    asked: list[str] = []

    def attributes() -> dict[str, str]:
        asked.append("asked")
        return {"rpc.system": "grpc"}

    with client_call("outside", attributes) as headers:
        assert headers is None and not asked  # no inference span: nothing made
    assert tracing.tracer is not None
    with tracing.tracer.start_as_current_span("request"):
        wait = tracing.queue_wait(0)
    with (
        tracing.batch([wait], "triton", "m", "3"),
        client_call("triton infer", attributes) as headers,
    ):
        assert headers is not None
        sent = headers["traceparent"]
    spans = exporter.get_finished_spans()
    request, inference, client = (one(spans, n) for n in ("request", "inference", "triton infer"))
    assert client.kind is SpanKind.CLIENT and client.attributes == {"rpc.system": "grpc"}
    assert parent_id(client) == span_id(inference)
    assert parent_id(inference) == span_id(request)
    # What the callee receives names the client span, in the request's trace.
    assert sent == f"00-{trace_id(request):032x}-{span_id(client):016x}-{flags(client):02x}"


def test_a_queue_wait_no_batch_took_is_ended_and_marked(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    wait = tracing.queue_wait(3)
    assert wait is not None
    wait.abandon()
    wait.abandon()
    wait.end()
    [span] = exporter.get_finished_spans()
    assert span.attributes == {"ca.image.index": 3, "ca.queue.abandoned": True}
    assert TRACING_OFF.queue_wait(0) is None
