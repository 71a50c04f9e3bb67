"""Tracing from the `OTEL_*` variables: off unless an exporter is named, the SDK's own
variables honoured, a clear error (and an untraced gateway) when it cannot be done."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from service.gateway.tracing import TRACING_OFF
from service.gateway.tracing_setup import requested_exporters, tracing_from_environment

ROOT = Path(__file__).resolve().parents[2]
OTEL_VARIABLES = (
    "OTEL_TRACES_EXPORTER", "OTEL_SDK_DISABLED", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, []),
        ({"OTEL_TRACES_EXPORTER": ""}, []),
        ({"OTEL_TRACES_EXPORTER": "none"}, []),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": " OTLP , console,otlp"}, ["otlp", "console"]),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, []),
    ],
)
def test_which_exporters_are_asked_for(environ: dict[str, str], expected: list[str]) -> None:
    assert requested_exporters(environ) == expected


def test_off_by_default() -> None:
    assert tracing_from_environment() is TRACING_OFF


def test_on_with_the_sdks_own_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    tracing = tracing_from_environment()
    try:
        assert tracing.enabled and isinstance(tracing.provider, TracerProvider)
        assert tracing.provider.resource.attributes["service.name"] == "ca-serve"
    finally:
        tracing.shutdown()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gateway-eu-1")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    tracing = tracing_from_environment()
    try:
        assert isinstance(tracing.provider, TracerProvider)
        assert tracing.provider.resource.attributes["service.name"] == "gateway-eu-1"
        assert tracing.provider.sampler is ALWAYS_OFF
    finally:
        tracing.shutdown()


def test_otlp_over_http_protobuf_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    tracing = tracing_from_environment()
    try:
        assert isinstance(tracing.provider, TracerProvider)
        processors = tracing.provider._active_span_processor._span_processors
        exporters = [p.span_exporter for p in processors]  # type: ignore[attr-defined]
        assert [type(e) for e in exporters] == [OTLPSpanExporter]
    finally:
        tracing.shutdown()


@pytest.mark.parametrize(
    ("variables", "says"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "unknown exporter 'zipkin'"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
         "'http/json' is not supported"),
    ],
)
def test_an_exporter_it_cannot_build_is_an_error_not_a_crash(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    variables: dict[str, str], says: str,
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with caplog.at_level(logging.ERROR, logger="ca.gateway.tracing"):
        assert tracing_from_environment() is TRACING_OFF
    assert says in caplog.text and "serving without tracing" in caplog.text


def test_without_the_extra_it_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    # A None entry makes `import opentelemetry.sdk...` fail as if it were not installed.
    for name in [m for m in sys.modules if m.startswith("opentelemetry.sdk")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk", None)
    with caplog.at_level(logging.ERROR, logger="ca.gateway.tracing"):
        assert tracing_from_environment() is TRACING_OFF
    assert "pip install 'ca-serve[tracing]'" in caplog.text
    assert "Serving without tracing" in caplog.text


def test_off_never_loads_the_sdk() -> None:
    """A serving process with tracing off never imports the SDK (a fresh interpreter)."""
    code = (
        "import sys\n"
        "from service.gateway.server import uvicorn_config\n"
        "from service.gateway.tracing_setup import tracing_from_environment\n"
        "assert not tracing_from_environment().enabled\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry.sdk')))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = str(ROOT)
    output = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT,
                            capture_output=True, text=True, check=True)
    assert output.stdout.strip() == "[]"
