"""`/v2` routes in process, on a fake backend that can be slowed, stopped and broken: the
runtime's 503 and 504 in the protocol's error shape, readiness, the served version, and
`/v2` requests batched together with `/classify` ones."""

from __future__ import annotations

import asyncio
import json
import struct

import httpx
from prometheus_client import CollectorRegistry

from service.gateway.app import create_app
from service.gateway.settings import Settings
from tests.gateway.conftest import FakeBackend, open_client
from tests.gateway.test_app import png
from tests.support.gateway import TINY_MODEL

INFER = f"/v2/models/{TINY_MODEL}/infer"


def infer_body(images: list[bytes]) -> tuple[bytes, dict[str, str]]:
    """An `IMAGE_BYTES` request with the images as binary data and every output asked for
    as binary data, as tritonclient sends it when no output is named."""
    data = b"".join(struct.pack("<I", len(image)) + image for image in images)
    head = json.dumps({"inputs": [{
        "name": "IMAGE_BYTES", "datatype": "BYTES", "shape": [len(images)],
        "parameters": {"binary_data_size": len(data)}}],
        "parameters": {"binary_data_output": True}}).encode()
    return head + data, {"Inference-Header-Content-Length": str(len(head))}


def assert_v2_error(response: httpx.Response, status: int, text: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and text in body["error"], body


async def test_unavailable_backend_is_503_with_retry_after(tiny_settings: Settings) -> None:
    fake = FakeBackend()
    app = create_app(tiny_settings, backend=fake, registry=CollectorRegistry())
    async for client in open_client(app):
        body, headers = infer_body([png((1, 2, 3))])
        assert (await client.post(INFER, content=body, headers=headers)).status_code == 200
        fake.up = False
        ready = await client.get("/v2/health/ready")
        assert ready.status_code == 503 and ready.json() == {"ready": False}
        assert ready.headers["retry-after"] == "1"
        model = await client.get(f"/v2/models/{TINY_MODEL}/ready")
        assert model.status_code == 503 and model.json() == {"name": TINY_MODEL, "ready": False}
        assert (await client.get("/v2/health/live")).json() == {"live": True}
        refused = await client.post(INFER, content=body, headers=headers)
        assert_v2_error(refused, 503, "backend not ready: fake backend down")
        assert refused.headers["retry-after"] == "1"
        fake.up = True
        fake.fail = RuntimeError("boom")
        assert_v2_error(await client.post(INFER, content=body, headers=headers), 503,
                        "inference failed: RuntimeError")


async def test_no_answer_in_time_is_504(tiny_settings: Settings) -> None:
    fake = FakeBackend()
    settings = tiny_settings.model_copy(update={"request_timeout_s": 0.3})
    app = create_app(settings, backend=fake, registry=CollectorRegistry())
    async for client in open_client(app):
        fake.delay_s = 2.0
        body, headers = infer_body([png((1, 2, 3))])
        assert_v2_error(await client.post(INFER, content=body, headers=headers), 504,
                        "no answer within 0.3 s")


async def test_the_served_version_is_the_backends(tiny_settings: Settings) -> None:
    app = create_app(tiny_settings, backend=FakeBackend(), registry=CollectorRegistry())
    async for client in open_client(app):
        meta = (await client.get(f"/v2/models/{TINY_MODEL}/versions/7")).json()
        assert meta["versions"] == ["7"] and meta["platform"] == "ca-serve_embedded"
        assert_v2_error(await client.get(f"/v2/models/{TINY_MODEL}/versions/1"), 404,
                        "has no version '1'; it serves version '7'")
        body, headers = infer_body([png((1, 2, 3))])
        answer = await client.post(f"/v2/models/{TINY_MODEL}/versions/7/infer", content=body,
                                   headers=headers)
        assert answer.status_code == 200
        length = int(answer.headers["Inference-Header-Content-Length"])
        assert answer.headers["content-type"] == "application/octet-stream"
        assert json.loads(answer.content[:length])["model_version"] == "7"


async def test_v2_and_classify_requests_share_batches(tiny_settings: Settings) -> None:
    fake = FakeBackend()
    settings = tiny_settings.model_copy(update={"max_batch_delay_ms": 300.0})
    app = create_app(settings, backend=fake, registry=CollectorRegistry())
    async for client in open_client(app):
        body, headers = infer_body([png((200, 0, 0))])
        v2, classify = await asyncio.gather(
            client.post(INFER, content=body, headers=headers),
            client.post("/classify", content=png((7, 0, 0)),
                        headers={"Content-Type": "image/png"}),
        )
        assert v2.status_code == classify.status_code == 200
        assert fake.batches == [2]


async def test_openapi_documents_the_v2_routes(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    for path in ("/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/{model_name}",
                 "/v2/models/{model_name}/versions/{model_version}/ready",
                 "/v2/models/{model_name}/versions/{model_version}/infer"):
        assert path in paths, path
    infer = paths["/v2/models/{model_name}/infer"]["post"]
    assert set(infer["requestBody"]["content"]) == {"application/json",
                                                    "application/octet-stream"}
    assert "Inference-Header-Content-Length" in {p["name"] for p in infer["parameters"]}
    assert {"200", "400", "404", "413", "503", "504"} <= set(infer["responses"])
