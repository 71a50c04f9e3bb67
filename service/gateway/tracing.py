"""The gateway's spans: where they go (`Tracing`) and the few shapes the pipeline needs.

A request's tree (the server span comes from FastAPI's OpenTelemetry support,
`trace_http.py`):

    POST /classify                    SERVER (FastAPI), child of the caller's traceparent
      read body                       http.request.body.size
      preprocess                      one per encoded image: pool wait + decode + resize
      queue wait                      one per image: enqueued -> its batch starts
      inference                       one per batch, linked to every queue wait it served
        triton infer                  CLIENT; its context travels to Triton as traceparent

The inference span's parent is the first image's request; the other requests in the batch
reach it through its links. Only the first request's trace therefore holds the Triton call
(and Triton's own spans): one call serves the whole batch.

Off (`TRACING_OFF`, the default) there is no tracer: every helper returns a shared no-op
context manager or None before building anything, so no span object is ever made. Imports
the OpenTelemetry API only (the SDK is `tracing_setup.py`'s business).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, Span, SpanKind, Tracer, TracerProvider

INSTRUMENTATION_NAME = "ca-serve"
# The inference span puts the tracer in its context, so a backend's outgoing call can make
# its client span without being handed a tracer (`client_call`).
_TRACER_KEY = otel_context.create_key("ca-serve.tracer")
_NOTHING: AbstractContextManager[None] = nullcontext()

Attributes = Mapping[str, str | int | float | bool]


class QueueWait:
    """One image's `queue wait` span, from enqueue until its batch starts (`end()`), or
    until its caller stops waiting (`abandon()`). Ending is idempotent."""

    __slots__ = ("_ended", "parent", "span")

    def __init__(self, span: Span, parent: otel_context.Context) -> None:
        self.span = span
        self.parent = parent  # the request's context, where the inference span may go
        self._ended = False

    def end(self) -> None:
        if not self._ended:
            self._ended = True
            self.span.end()

    def abandon(self) -> None:
        """End the span if no batch took the image (refused, timed out, caller gone)."""
        if not self._ended:
            self.span.set_attribute("ca.queue.abandoned", True)
            self.end()


class Tracing:
    """The tracer the gateway's spans go to, or none. `provider` is the SDK's
    `TracerProvider` when tracing is on (built by `tracing_setup`, or a test's with an
    in-memory exporter), the API's `NoOpTracerProvider` when off."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self.provider: TracerProvider = provider or trace.NoOpTracerProvider()
        self.tracer: Tracer | None = (
            None if provider is None else provider.get_tracer(INSTRUMENTATION_NAME)
        )

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    def shutdown(self) -> None:
        """Export what is buffered and stop the exporters (at the app's shutdown)."""
        shutdown = getattr(self.provider, "shutdown", None)
        if self.tracer is not None and shutdown is not None:
            shutdown()

    def span(
        self, name: str, attributes: Attributes | None = None
    ) -> AbstractContextManager[Span | None]:
        """A child of the current span, current while the block runs; the block gets the
        span (None when off). An exception leaving the block is recorded on it."""
        if self.tracer is None:
            return _NOTHING
        return self.tracer.start_as_current_span(name, attributes=attributes)

    def queue_wait(self, index: int) -> QueueWait | None:
        """Start image `index`'s queue-wait span under the current span (None when off)."""
        if self.tracer is None:
            return None
        parent = otel_context.get_current()
        span = self.tracer.start_span(
            "queue wait", context=parent, attributes={"ca.image.index": index}
        )
        return QueueWait(span, parent)

    def batch(
        self, waits: Sequence[QueueWait | None], backend: str, model: str, version: str
    ) -> AbstractContextManager[Span | None]:
        """The inference span of one batch of `len(waits)` images: ends every image's
        queue wait (the batch starts now), then runs the block under a span that is a
        child of the first image's request and linked to each image's queue-wait span."""
        if self.tracer is None:
            return _NOTHING
        attributes: Attributes = {
            "ca.batch.size": len(waits),
            "ca.backend": backend,
            "ca.model.name": model,
            "ca.model.version": version,
        }
        return self._batch(self.tracer, [w for w in waits if w is not None], attributes)

    @contextmanager
    def _batch(
        self, tracer: Tracer, waits: list[QueueWait], attributes: Attributes
    ) -> Iterator[Span]:
        for wait in waits:
            wait.end()
        parent = waits[0].parent if waits else otel_context.get_current()
        links = [Link(wait.span.get_span_context()) for wait in waits]
        # The request's context becomes current (start_as_current_span would make the span
        # current in the batcher's own context otherwise), with the tracer for client_call.
        token = otel_context.attach(otel_context.set_value(_TRACER_KEY, tracer, parent))
        try:
            with tracer.start_as_current_span(
                "inference", links=links, attributes=attributes
            ) as span:
                yield span
        finally:
            otel_context.detach(token)


TRACING_OFF = Tracing()


def client_call(
    name: str, attributes: Callable[[], Attributes]
) -> AbstractContextManager[dict[str, str] | None]:
    """A CLIENT span for a backend's outgoing call, made only inside an inference span
    (otherwise the block gets None and nothing is made, `attributes()` not even called).
    The block gets the headers that carry the span's context (`traceparent`, and `baggage`
    if any) for the callee: gRPC metadata or HTTP headers."""
    tracer = otel_context.get_value(_TRACER_KEY)
    if not isinstance(tracer, Tracer):
        return _NOTHING
    return _client_call(tracer, name, attributes())


@contextmanager
def _client_call(tracer: Tracer, name: str, attributes: Attributes) -> Iterator[dict[str, str]]:
    with tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attributes):
        headers: dict[str, str] = {}
        propagate.inject(headers)
        yield headers


def traceresponse(span: Span) -> str | None:
    """`span`'s context as a W3C Trace Context Level 2 `traceresponse` value
    (`00-<trace id>-<span id>-<flags>`), or None for an invalid context."""
    context = span.get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"

