"""Tracing configured from the standard `OTEL_*` environment variables.

Tracing is **off** unless `OTEL_TRACES_EXPORTER` names an exporter: unset, empty or
`none` means off (the OpenTelemetry default would be `otlp`; a gateway that exports
nowhere should not pay for spans), and so does `OTEL_SDK_DISABLED=true`. Exporters, comma
separated:

- `otlp`: OTLP over HTTP/protobuf (`OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` or
  `OTEL_EXPORTER_OTLP_PROTOCOL`, default `http/protobuf`; `grpc` needs the
  `opentelemetry-exporter-otlp-proto-grpc` package). The exporter reads its own variables:
  `OTEL_EXPORTER_OTLP_ENDPOINT` (default `http://localhost:4318`, `/v1/traces` appended) or
  `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `..._HEADERS`, `..._TIMEOUT`, `..._COMPRESSION`.
- `console`: one JSON document per span on stdout (for a look, not for production).

The SDK reads the rest itself: `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` (the
service name defaults to `ca-serve`), `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`
(default `parentbased_always_on`), `OTEL_BSP_*` (the batch span processor's queue and
delays), `OTEL_PROPAGATORS` (default `tracecontext,baggage`).

The SDK and the OTLP exporter are the `tracing` extra (`pip install 'ca-serve[tracing]'`).
Without them a request for tracing is logged as an error and the gateway serves untraced;
so is an exporter it cannot build. The provider is not made global: the gateway hands it
to FastAPI and its own spans explicitly, so nothing else in the process traces by accident.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from service.gateway.tracing import TRACING_OFF, Tracing

logger = logging.getLogger("ca.gateway.tracing")

DEFAULT_SERVICE_NAME = "ca-serve"
EXPORTERS = ("otlp", "console")
EXTRA_HINT = "install the 'tracing' extra: pip install 'ca-serve[tracing]'"


def requested_exporters(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The exporters `OTEL_TRACES_EXPORTER` names, in order, without `none`; empty when
    tracing is off (unset, `none`, or `OTEL_SDK_DISABLED=true`)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",")]
    return [n for n in dict.fromkeys(names) if n and n != "none"]


def tracing_from_environment() -> Tracing:
    """A `Tracing` built from the `OTEL_*` variables of this process (the SDK reads most of
    them itself), or `TRACING_OFF`. Never raises for a
    configuration it cannot honour: it logs the reason at ERROR and leaves tracing off (or
    the exporter out), so a missing package never stops the gateway from serving."""
    names = requested_exporters(os.environ)
    if not names:
        return TRACING_OFF
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        logger.error(
            "OTEL_TRACES_EXPORTER=%s asks for traces, but the OpenTelemetry SDK is not "
            "installed (%s): %s. Serving without tracing.",
            ",".join(names), exc, EXTRA_HINT,
        )
        return TRACING_OFF
    exporters = [e for e in (_exporter(name) for name in names) if e is not None]
    if not exporters:
        logger.error("no usable trace exporter in OTEL_TRACES_EXPORTER=%s: serving without "
                     "tracing", ",".join(names))
        return TRACING_OFF
    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource)  # the sampler comes from OTEL_TRACES_SAMPLER
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    logger.info(
        "tracing on: service %s, exporters %s, sampler %s",
        resource.attributes.get(SERVICE_NAME), ",".join(names), provider.sampler.get_description(),
    )
    return Tracing(provider)


def _exporter(name: str) -> Any:
    """The span exporter `name` stands for, or None (logged) when it cannot be built."""
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        logger.error("OTEL_TRACES_EXPORTER: unknown exporter %r (this gateway knows %s)",
                     name, ", ".join(EXPORTERS))
        return None
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    try:
        if protocol == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        elif protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[no-redef]
                OTLPSpanExporter,
            )
        else:
            logger.error("OTLP protocol %r is not supported for traces (http/protobuf, grpc)",
                         protocol)
            return None
    except ImportError as exc:
        logger.error("the OTLP %s trace exporter is not installed (%s): %s", protocol, exc,
                     EXTRA_HINT if protocol == "http/protobuf"
                     else "pip install opentelemetry-exporter-otlp-proto-grpc")
        return None
    return OTLPSpanExporter()
