"""The Python clients against a running gateway: same answers as raw HTTP, typed errors."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from clients import (
    NO_RETRY,
    APIError,
    AsyncCAServeClient,
    CAServeClient,
    Classification,
)
from tests.support.gateway import GatewayServer


def _as_json(result: Classification) -> list[dict[str, Any]]:
    return [{"label": p.label, "index": p.index, "score": p.score} for p in result.predictions]


def test_single_image_equals_the_raw_http_answer(gateway: GatewayServer,
                                                 photos: list[Path]) -> None:
    photo = photos[0]
    raw = httpx.post(f"{gateway.url}/classify", params={"top_k": 5},
                     content=photo.read_bytes(), headers={"Content-Type": "image/jpeg"}).json()
    with CAServeClient(gateway.url) as client:
        result = client.classify(photo)
    assert _as_json(result) == raw["results"][0]["predictions"]
    assert (result.model, result.model_version) == (raw["model"]["name"], raw["model"]["version"])
    assert len(result.predictions) == 5
    assert [p.score for p in result.predictions] == sorted(
        (p.score for p in result.predictions), reverse=True)
    assert result.request_id and result.latency_s is not None and result.latency_s > 0


def test_a_list_of_mixed_inputs_equals_the_raw_multipart_answer(
    gateway: GatewayServer, photos: list[Path]
) -> None:
    pil = Image.open(photos[1])
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    files = [
        ("file", (photos[0].name, photos[0].read_bytes(), "image/jpeg")),
        ("file", ("b.jpg", photos[1].read_bytes(), "image/jpeg")),
        ("file", ("c.png", buffer.getvalue(), "image/png")),
    ]
    raw = httpx.post(f"{gateway.url}/classify", params={"top_k": 3}, files=files).json()
    with CAServeClient(gateway.url) as client:
        results = client.classify([photos[0], photos[1].read_bytes(), pil], top_k=3)
    assert [_as_json(r) for r in results] == [item["predictions"] for item in raw["results"]]
    assert results[0].filename == photos[0].name
    # The PIL image was sent as PNG, so it is the same pixels as the third raw part.
    assert _as_json(results[2]) == raw["results"][2]["predictions"]


async def test_async_client_equals_the_sync_client(gateway: GatewayServer,
                                                   photos: list[Path]) -> None:
    with CAServeClient(gateway.url) as client:
        expected = client.classify(list(photos))
        info = client.model_info()
    async with AsyncCAServeClient(gateway.url) as client:
        got = await client.classify(list(photos))
        assert await client.ready() is True
        assert await client.model_info() == info
    assert [_as_json(r) for r in got] == [_as_json(r) for r in expected]


def test_model_info_equals_v1_model(gateway: GatewayServer) -> None:
    raw = httpx.get(f"{gateway.url}/v1/model").json()
    with CAServeClient(gateway.url) as client:
        info = client.model_info()
        assert client.ready() is True
    assert (info.name, info.version, info.backend) == (raw["name"], raw["version"], "embedded")
    assert (info.num_classes, info.input_size) == (raw["num_classes"], raw["input_size"])
    assert info.weights_source == raw["weights"]["source"]
    assert info.random_init is raw["weights"]["random_init"] is False
    assert list(info.labels) == raw["labels"] and len(info.labels) == info.num_classes


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"just some text", 415, "unsupported_media_type"),
        (b"\xff\xd8\xff\xe0 truncated jpeg", 400, "undecodable_image"),
    ],
)
def test_gateway_errors_become_typed_exceptions(
    gateway: GatewayServer, data: bytes, status: int, code: str
) -> None:
    with CAServeClient(gateway.url) as client, pytest.raises(APIError) as info:
        client.classify(data)
    assert (info.value.status, info.value.code) == (status, code)
    assert info.value.message and info.value.request_id


def test_bad_top_k_is_a_422(gateway: GatewayServer, photos: list[Path]) -> None:
    with CAServeClient(gateway.url, retry=NO_RETRY) as client:
        with pytest.raises(APIError) as info:
            client.classify(photos[0], top_k=0)
        assert (info.value.status, info.value.code) == (422, "invalid_parameter")
        assert len(client.classify(photos[0], top_k=2).predictions) == 2


def test_api_key(keyed_gateway: GatewayServer, api_key: str, photos: list[Path]) -> None:
    with CAServeClient(keyed_gateway.url) as client, pytest.raises(APIError) as info:
        client.classify(photos[0])
    assert (info.value.status, info.value.code) == (401, "unauthorized")
    with CAServeClient(keyed_gateway.url, api_key=api_key) as client:
        result = client.classify(photos[0], top_k=3)
        model = client.model_info()
    assert result.top.label.startswith("class_") and len(result.predictions) == 3
    assert model.random_init is True and model.weights_source == "random"
