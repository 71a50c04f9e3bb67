"""Backends without servers: the embedded one on a tiny ONNX model, Triton's contract
check and classification parsing, and the security/metrics helpers they report through."""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from service.errors import BackendUnavailable, ContractError
from service.gateway.app import create_app
from service.gateway.backends.base import ModelId
from service.gateway.backends.embedded import EmbeddedBackend
from service.gateway.backends.engine import ENGINES, EngineName
from service.gateway.backends.triton import TritonBackend
from service.gateway.backends.triton_contract import (
    Failure,
    answered_by,
    check_batch_limit,
    check_metadata_contract,
    classify_failure,
    parse_classification,
    served_version,
)
from service.gateway.metrics import BATCH_SIZE_BUCKETS, DURATION_BUCKETS, GatewayMetrics
from service.gateway.security import ApiKeys
from service.gateway.settings import Settings
from service.spec import ModelSpec
from tests.gateway.conftest import open_client
from tests.support.gateway import TINY_MODEL, write_tiny_repository

SPEC = ModelSpec(name=TINY_MODEL, num_classes=10)


@pytest.mark.parametrize("runtime", ENGINES)
async def test_embedded_backend_runs_the_model(tiny_repository: Path, runtime: EngineName) -> None:
    backend = EmbeddedBackend(
        tiny_repository / TINY_MODEL / "1" / "model.onnx", SPEC, version="1", threads=1,
        runtime=runtime,
    )
    assert not backend.ready() and backend.engine is None
    await backend.start()
    try:
        assert backend.engine == runtime and runtime in backend.status()
        batch = np.random.default_rng(0).integers(0, 255, (3, 224, 224, 3), dtype=np.uint8)
        probs = await backend.infer(batch)
        assert probs.shape == (3, 10) and probs.dtype == np.float32
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        top = await backend.top_k(batch, 4)
        assert top.indices.shape == (3, 4)
        assert (top.indices[:, 0] == probs.argmax(axis=1)).all()
        assert backend.ready() and backend.model_id() == ModelId(TINY_MODEL, "1")
        assert top.model == ModelId(TINY_MODEL, "1")
    finally:
        await backend.close()


@pytest.mark.parametrize("runtime", ENGINES)
@pytest.mark.parametrize(
    "override",
    [
        {"num_classes": 11},
        {"input_size": 200, "resize_shorter": 256},
        {"input_name": "X"},
        {"output_name": "Y"},
        {"dtype": "float32"},
    ],
)
async def test_embedded_backend_refuses_a_model_that_breaks_the_spec(
    tiny_repository: Path, override: dict[str, object], runtime: EngineName
) -> None:
    spec = ModelSpec.from_dict({"name": TINY_MODEL, "num_classes": 10, **override})
    backend = EmbeddedBackend(
        tiny_repository / TINY_MODEL / "1" / "model.onnx", spec, version="1", threads=1,
        runtime=runtime,
    )
    with pytest.raises(ContractError):
        await backend.start()
    await backend.close()


async def test_embedded_backend_without_model_file(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="build the repository"):
        await EmbeddedBackend(tmp_path / "missing.onnx", SPEC, version="1", threads=1).start()


def metadata(**changes: object) -> dict[str, object]:
    meta: dict[str, object] = {
        "name": TINY_MODEL,
        "versions": ["1", "2"],
        "inputs": [{"name": "IMAGE", "datatype": "UINT8", "shape": ["-1", "224", "224", "3"]}],
        "outputs": [{"name": "PROBS", "datatype": "FP32", "shape": [-1, 10]}],
    }
    meta.update(changes)
    return meta


def test_triton_contract_accepts_matching_metadata() -> None:
    check_metadata_contract(metadata(), SPEC)


@pytest.mark.parametrize(
    "changes",
    [
        {"inputs": [{"name": "IMAGE", "datatype": "FP32", "shape": [-1, 224, 224, 3]}]},
        {"inputs": [{"name": "IMAGE", "datatype": "UINT8", "shape": [224, 224, 3]}]},
        {"inputs": [{"name": "IMAGE", "datatype": "UINT8", "shape": [-1, 3, 224, 224]}]},
        {"inputs": [{"name": "INPUT__0", "datatype": "UINT8", "shape": [-1, 224, 224, 3]}]},
        {"outputs": [{"name": "PROBS", "datatype": "FP32", "shape": [-1, 1000]}]},
        {"outputs": [{"name": "PROBS", "datatype": "FP16", "shape": [-1, 10]}]},
        {"outputs": []},
    ],
)
def test_triton_contract_rejects_mismatches(changes: dict[str, object]) -> None:
    with pytest.raises(ContractError):
        check_metadata_contract(metadata(**changes), SPEC)


def test_triton_config_must_accept_the_gateways_batches() -> None:
    check_batch_limit({"name": "m", "max_batch_size": 128}, 32)
    check_batch_limit({"name": "m", "max_batch_size": 32}, 32)
    with pytest.raises(ContractError, match="at most 16"):
        check_batch_limit({"name": "m", "max_batch_size": 16}, 32)
    with pytest.raises(ContractError, match="at most 0"):
        check_batch_limit({"name": "m"}, 1)  # a model without batching


def test_served_version_is_the_pinned_one_or_the_newest() -> None:
    assert served_version(metadata(), "") == "2"
    assert served_version(metadata(versions=["9", "10"]), "") == "10"
    assert served_version(metadata(), "1") == "1"
    assert served_version(metadata(versions=[]), "") == ""


class _Result:
    def __init__(self, response: object) -> None:
        self.response = response

    def get_response(self) -> object:
        return self.response


def test_the_answering_model_is_read_from_either_protocols_response() -> None:
    from tritonclient.grpc import service_pb2

    grpc_response = service_pb2.ModelInferResponse(model_name="m", model_version="3")
    assert answered_by(_Result(grpc_response)) == ModelId("m", "3")
    assert answered_by(_Result({"model_name": "m", "model_version": "4"})) == ModelId("m", "4")
    assert answered_by(_Result({"outputs": []})) is None


@pytest.mark.parametrize(
    ("exc", "failure"),
    [
        (ConnectionResetError("reset by peer"), Failure.GONE),
        (TimeoutError(), Failure.TIMEOUT),
        (("StatusCode.UNAVAILABLE", "failed to connect to all addresses"), Failure.GONE),
        (("StatusCode.UNAVAILABLE", "Socket closed"), Failure.GONE),
        (("StatusCode.UNAVAILABLE", "Exceeds maximum queue size"), Failure.REJECTED),
        (("StatusCode.UNAVAILABLE", "Request timeout expired"), Failure.REJECTED),
        (("503", "Request timeout expired"), Failure.REJECTED),
        (("StatusCode.NOT_FOUND", "Request for unknown model: 'm' is not found"),
         Failure.MODEL_MISSING),
        (("400", "Request for unknown model: 'm' has no available versions"),
         Failure.MODEL_MISSING),
        (("StatusCode.INTERNAL", "Stub process 'm_0_0' is not healthy."), Failure.FAILED),
        (("500", "Failed to process the request(s) for model instance"), Failure.FAILED),
        (("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded"), Failure.TIMEOUT),
        (("StatusCode.INVALID_ARGUMENT", "inference request batch-size must be <= 32"),
         Failure.REFUSED),
        (("400", "unexpected shape for input 'IMAGE'"), Failure.REFUSED),
    ],
)
def test_failures_are_classified_by_what_they_say_about_the_endpoint(
    exc: BaseException | tuple[str, str], failure: Failure
) -> None:
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, tuple):
        exc = InferenceServerException(msg=exc[1], status=exc[0])
    assert classify_failure(exc) is failure


def test_parse_classification_strings() -> None:
    raw = np.array([[b"0.5:3:cat", b"0.25:1:dog"], [b"0.9:0", b"0.05:7:a:b"]], dtype=object)
    top = parse_classification(raw, 2)
    assert top.indices.tolist() == [[3, 1], [0, 7]]
    np.testing.assert_allclose(top.scores, [[0.5, 0.25], [0.9, 0.05]])
    with pytest.raises(BackendUnavailable):
        parse_classification(raw, 3)


async def test_triton_backend_starts_not_ready_when_unreachable() -> None:
    backend = TritonBackend(SPEC, url="127.0.0.1:9", model=TINY_MODEL, health_interval_s=0.1)
    await backend.start()
    try:
        assert not backend.ready() and "unreachable" in backend.status()
        with pytest.raises(BackendUnavailable):
            await backend.top_k(np.zeros((1, 224, 224, 3), np.uint8), 1)
    finally:
        await backend.close()


def test_api_keys_compare_digests() -> None:
    keys = ApiKeys(("alpha", "beta-longer-key"))
    assert keys.enabled and keys.accepts("alpha") and keys.accepts("beta-longer-key")
    assert not keys.accepts("alph") and not keys.accepts("") and not keys.accepts("alpha ")
    assert not ApiKeys(()).enabled


def test_metric_buckets_suit_the_quantities() -> None:
    assert DURATION_BUCKETS[0] == pytest.approx(1e-4) and DURATION_BUCKETS[-1] > 10
    ratios = {round(b / a, 6) for a, b in itertools.pairwise(DURATION_BUCKETS)}
    assert ratios == {2.0}
    assert BATCH_SIZE_BUCKETS[:5] == (1.0, 2.0, 4.0, 8.0, 16.0)


def test_metrics_registry_is_injectable_and_labels_are_bounded() -> None:
    registry = CollectorRegistry()
    metrics = GatewayMetrics("triton", registry)
    assert metrics.route_label("/classify") == "/classify"
    assert metrics.route_label("/etc/passwd") == "unmatched"
    assert metrics.route_label(None) == "unmatched"
    metrics.backend_error("something-new")
    value = registry.get_sample_value(
        "ca_gateway_backend_errors_total", {"backend": "triton", "reason": "error"}
    )
    assert value == 1.0


def test_metrics_multiprocess_mode_aggregates_workers(tmp_path: Path) -> None:
    # prometheus-client picks its value store at import time, so each "worker" is a process.
    code = (
        "import sys; from service.gateway.metrics import GatewayMetrics; "
        "m = GatewayMetrics('embedded'); m.observe_batch(4, 0.01); "
        "sys.stdout.write(m.render().decode())"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    root = Path(__file__).resolve().parents[2]
    outputs = [
        subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            cwd=root,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        for _ in range(2)
    ]
    assert "ca_gateway_batch_size_count 1.0" in outputs[0]
    assert "ca_gateway_batch_size_count 2.0" in outputs[1]  # both workers' batches


@pytest.mark.parametrize("random_init", [True, False])
async def test_tiny_repository_random_init_flag(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, random_init: bool
) -> None:
    """The flag reaches what the gateway serves: `/v1/model` says plainly whether the
    weights are random, and start-up logs a warning only when they are."""
    root = write_tiny_repository(tmp_path, random_init=random_init)
    app = create_app(Settings(model_repository=root, model_name=TINY_MODEL))
    with caplog.at_level(logging.WARNING, logger="ca.gateway.model"):
        async for client in open_client(app):
            weights = (await client.get("/v1/model")).json()["weights"]
    assert weights["random_init"] is random_init
    if random_init:
        assert weights["source"] == "random" and "RANDOM" in weights["warning"]
    else:
        assert weights["source"] == "tiny-test-weights" and weights["warning"] is None
    warned = [r for r in caplog.records if "RANDOM-INIT" in r.getMessage()]
    assert len(warned) == (1 if random_init else 0)
