"""Schemathesis against the gateway's own OpenAPI document, on a live gateway process
(API keys on, so the auth paths are fuzzed too): no generated request gets a 500, every
status is one the document lists, and every answer is the JSON it promises."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from prometheus_client.parser import text_string_to_metric_families
from schemathesis import checks as st_checks
from schemathesis.specs.openapi import checks as openapi_checks

from tests.reliability.conftest import tiny_settings
from tests.support.gateway import GatewayServer

KEY = "fuzz-key"


@pytest.fixture(scope="module")
def fuzz_gateway(tiny_repo: Path) -> Iterator[GatewayServer]:
    settings = tiny_settings(tiny_repo, api_keys=(KEY,), access_log=False, max_upload_bytes=65536)
    with GatewayServer(settings) as server:
        yield server


@pytest.fixture(scope="module")
def api_schema(fuzz_gateway: GatewayServer) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(fuzz_gateway.url + "/openapi.json")


CHECKS = [
    st_checks.not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_schema_conformance,
]


def fuzz(schema: schemathesis.BaseSchema, headers: dict[str, str], examples: int) -> int:
    """Run `examples` generated requests per operation; returns how many operations ran.
    (schemathesis' own pytest loader does not run under this pytest, so the Python API
    drives hypothesis directly.)"""
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=examples, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS, timeout=30)

        run()
    return len(operations)


def answered(gateway: GatewayServer) -> dict[str, float]:
    """Requests the gateway counted, by status code."""
    text = httpx.get(gateway.url + "/metrics").text
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "ca_gateway_requests_total":
                status = sample.labels["status"]
                counts[status] = counts.get(status, 0.0) + sample.value
    return counts


def test_no_server_errors_with_a_key(
    api_schema: schemathesis.BaseSchema, fuzz_gateway: GatewayServer
) -> None:
    assert fuzz(api_schema, {"Authorization": f"Bearer {KEY}"}, 60) >= 5
    counts = answered(fuzz_gateway)
    print("fuzzed requests by status:", counts)
    assert sum(counts.values()) >= 100, counts  # the fuzzer really sent requests
    assert not any(status.startswith("5") and status != "503" for status in counts), counts


def test_no_server_errors_without_a_key(api_schema: schemathesis.BaseSchema) -> None:
    assert fuzz(api_schema, {}, 20) >= 5
