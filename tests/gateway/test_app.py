"""The app in process (httpx's ASGI transport, lifespan run): routes, headers, schema."""

from __future__ import annotations

import gc
import io
import json
import logging
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client import CollectorRegistry

from service.gateway import routes
from service.gateway.app import create_app
from service.gateway.settings import Settings
from tests.gateway.conftest import NUM_CLASSES, FakeBackend, open_client
from tests.support.gateway import TINY_MODEL, write_tiny_repository


def png(color: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


async def test_raw_body_answer_shape(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/classify?top_k=3", content=png((10, 200, 30)), headers={"Content-Type": "image/png"}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == {"name": TINY_MODEL, "version": "1"}
    [result] = body["results"]
    predictions = result["predictions"]
    assert len(predictions) == 3 and result["filename"] is None
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True)
    assert all(p["label"] == f"class_{p['index']}" for p in predictions)


async def test_default_top_k_and_full_ranking(client: httpx.AsyncClient) -> None:
    data = png((1, 2, 3))
    headers = {"Content-Type": "image/png"}
    default = (await client.post("/classify", content=data, headers=headers)).json()
    assert len(default["results"][0]["predictions"]) == 5
    full = await client.post(f"/classify?top_k={NUM_CLASSES}", content=data, headers=headers)
    predictions = full.json()["results"][0]["predictions"]
    assert sorted(p["index"] for p in predictions) == list(range(NUM_CLASSES))
    assert sum(p["score"] for p in predictions) == pytest.approx(1.0, abs=1e-5)


async def test_multipart_results_in_order(tiny_settings: Settings) -> None:
    fake = FakeBackend()
    app = create_app(tiny_settings, backend=fake)
    async for client in open_client(app):
        reds = [3, 7, 5, 1]  # the fake answers class = red % 10
        files = [("file", (f"img{r}.png", png((r, 0, 0)), "image/png")) for r in reds]
        response = await client.post("/classify?top_k=1", files=files)
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert [r["filename"] for r in results] == [f"img{r}.png" for r in reds]
        assert [r["predictions"][0]["index"] for r in results] == reds
        assert response.json()["model"]["version"] == "7"
        assert fake.batches == [4]  # one request's images share one batch


async def test_request_id_is_echoed_or_generated(client: httpx.AsyncClient) -> None:
    mine = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert mine.headers["x-request-id"] == "abc-123"
    made = await client.get("/healthz")
    assert len(made.headers["x-request-id"]) == 32
    hostile = await client.get("/healthz", headers={"X-Request-ID": 'x" injected=1 ' + "a" * 300})
    assert hostile.headers["x-request-id"] != 'x" injected=1 ' + "a" * 300


async def test_security_headers_and_no_server_header(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "server" not in response.headers


async def test_access_log_is_one_structured_line(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="ca.gateway.access"):
        await client.post(
            "/classify",
            content=b"junk",
            headers={"Content-Type": "image/png", "X-Request-ID": "req-42"},
        )
    [record] = [r for r in caplog.records if r.name == "ca.gateway.access"]
    assert record.request_id == "req-42"  # type: ignore[attr-defined]
    assert record.route == "/classify" and record.status == 400  # type: ignore[attr-defined]
    assert record.error_code == "undecodable_image"  # type: ignore[attr-defined]
    from service.gateway.logs import JsonFormatter

    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == "req-42" and line["duration_s"] >= 0


async def test_health_ready_model(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    model = (await client.get("/v1/model")).json()
    assert model["num_classes"] == NUM_CLASSES and model["input_size"] == 224
    assert model["weights"]["random_init"] is False and model["weights"]["warning"] is None
    assert model["labels"][3] == "class_3" and model["backend"] == "embedded"


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
async def test_the_engine_in_use_is_visible(tiny_settings: Settings, runtime: str) -> None:
    settings = tiny_settings.model_copy(update={"embedded_runtime": runtime})
    async for client in open_client(create_app(settings, registry=CollectorRegistry())):
        ready = (await client.get("/readyz")).json()
        assert ready["engine"] == runtime and runtime in ready["detail"]
        assert (await client.get("/v1/model")).json()["engine"] == runtime
        metrics = (await client.get("/metrics")).text
        series = "ca_gateway_inference_duration_seconds_count"
        assert f'{series}{{backend="embedded",engine="{runtime}"}} 0.0' in metrics
        image = {"content": png((5, 5, 5)), "headers": {"Content-Type": "image/png"}}
        assert (await client.post("/classify", **image)).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert f'{series}{{backend="embedded",engine="{runtime}"}} 1.0' in metrics
        assert metrics.count(f"{series}{{") == 1  # one series: the engine in use


async def test_a_backend_without_an_engine_choice_reports_none(tiny_settings: Settings) -> None:
    async for client in open_client(create_app(tiny_settings, backend=FakeBackend())):
        assert "engine" not in (await client.get("/readyz")).json()
        assert (await client.get("/v1/model")).json()["engine"] is None
        metrics = (await client.get("/metrics")).text
        series = "ca_gateway_inference_duration_seconds_count"
        assert f'{series}{{backend="embedded",engine="none"}} 0.0' in metrics


async def test_ready_and_model_name_the_backend_that_runs(tiny_settings: Settings) -> None:
    # The settings name Triton; the backend actually running is the injected one.
    fake = FakeBackend()
    fake.name = "embedded"
    settings = tiny_settings.model_copy(update={"backend": "triton"})
    app = create_app(settings, backend=fake)
    async for client in open_client(app):
        assert (await client.get("/readyz")).json()["backend"] == "embedded"
        assert (await client.get("/v1/model")).json()["backend"] == "embedded"
        metrics = (await client.get("/metrics")).text
        assert ('ca_gateway_inference_duration_seconds_count{backend="embedded",engine="none"}'
                in metrics)
        assert 'backend="triton"' not in metrics


async def test_runtime_tells_the_backend_how_busy_preprocessing_is(
    tiny_settings: Settings,
) -> None:
    fake = FakeBackend()
    app = create_app(tiny_settings, backend=fake)
    async for _ in open_client(app):
        probe = fake.cpu_jobs
        assert probe is not None and probe() == 0
        # Seen from inside a preprocessing-pool job: that job itself is in flight.
        assert await app.state.runtime.run_cpu(probe) == 1
        assert probe() == 0


async def test_model_says_plainly_when_weights_are_random(tmp_path: Path) -> None:
    repo = write_tiny_repository(tmp_path, random_init=True)
    app = create_app(Settings(model_repository=repo, model_name=TINY_MODEL))
    async for client in open_client(app):
        weights = (await client.get("/v1/model")).json()["weights"]
        assert weights["random_init"] is True and "RANDOM" in weights["warning"]


async def test_readyz_503_while_backend_down(tiny_settings: Settings) -> None:
    fake = FakeBackend()
    app = create_app(tiny_settings, backend=fake)
    async for client in open_client(app):
        fake.up = False
        response = await client.get("/readyz")
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert response.json()["detail"] == "fake backend down"
        refused = await client.post(
            "/classify", content=png((0, 0, 0)), headers={"Content-Type": "image/png"}
        )
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "backend_unavailable"
        fake.up = True
        assert (await client.get("/readyz")).status_code == 200


async def test_metrics_names_and_batches(client: httpx.AsyncClient) -> None:
    await client.post("/classify", content=png((9, 9, 9)), headers={"Content-Type": "image/png"})
    text = (await client.get("/metrics")).text
    for name in (
        "ca_gateway_requests_total",
        "ca_gateway_request_duration_seconds_bucket",
        "ca_gateway_preprocess_duration_seconds_count",
        "ca_gateway_queue_wait_seconds_count",
        "ca_gateway_inference_duration_seconds_count",
        "ca_gateway_batch_size_bucket",
        "ca_gateway_queue_depth",
        "ca_gateway_backend_errors_total",
        "ca_gateway_inflight_requests",
    ):
        assert name in text, name
    assert 'ca_gateway_requests_total{route="/classify",status="200"} 1.0' in text
    await client.get("/no/such/path/abc")
    text = (await client.get("/metrics")).text
    assert 'route="unmatched",status="404"' in text and "/no/such" not in text


async def test_openapi_documents_the_responses(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    classify = schema["paths"]["/classify"]["post"]
    assert {"image/*", "multipart/form-data"} <= set(classify["requestBody"]["content"])
    assert {"200", "413", "415", "503", "504"} <= set(classify["responses"])
    assert "ClassifyResponse" in schema["components"]["schemas"]
    assert (await client.get("/docs")).status_code == 200


async def test_index_serves_the_page(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.text == (routes.STATIC_DIR / "index.html").read_text(encoding="utf-8")
    assert "<title>ca-serve" in response.text


async def test_index_without_static_page(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A build without the page (an empty static folder) still answers `/` with where to go."""
    monkeypatch.setattr(routes, "STATIC_DIR", tmp_path)
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"service": "ca-serve", "docs": "/docs", "classify": "/classify"}
    assert (await client.get(response.json()["docs"])).status_code == 200


async def test_apps_are_independent(tiny_settings: Settings) -> None:
    # No globals: two apps (and two metric registries) in one process.
    first, second = create_app(tiny_settings), create_app(tiny_settings)
    async for a in open_client(first):
        async for b in open_client(second):
            await a.get("/healthz")
            assert '/healthz",status="200"} 0.0' in (await b.get("/metrics")).text


def test_scores_are_floats_in_unit_interval() -> None:
    from service.gateway.backends import top_k_from_probs

    probs = np.array([[0.1, 0.5, 0.4], [0.3, 0.3, 0.4]], dtype=np.float32)
    top = top_k_from_probs(probs, 2)
    assert top.indices.tolist() == [[1, 2], [2, 0]]  # ties: lower index first
    assert top.row(1, 2) == [(2, pytest.approx(0.4)), (0, pytest.approx(0.3))]


async def test_a_serving_app_freezes_what_startup_left(tiny_settings: Settings) -> None:
    """Objects alive once the model is loaded are left out of later full collections."""
    gc.unfreeze()
    try:
        async for client in open_client(create_app(tiny_settings, backend=FakeBackend())):
            assert (await client.get("/readyz")).status_code == 200
            assert gc.get_freeze_count() == 0  # not asked to: tests build many apps
        async for client in open_client(
            create_app(tiny_settings, backend=FakeBackend(), freeze_startup_objects=True)
        ):
            assert (await client.get("/readyz")).status_code == 200
            assert gc.get_freeze_count() > 1000
    finally:
        gc.unfreeze()
