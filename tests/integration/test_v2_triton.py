"""The Open Inference Protocol on a gateway in front of the real Triton server: code
written for Triton runs against the gateway unchanged (the same input, output and
classification strings as Triton itself answers), encoded images give `/classify`'s
answers, and the probabilities are Triton's own, not rounded through its classification
strings."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from tritonclient.utils import InferenceServerException

from service.gateway.settings import Settings
from service.spec import ONNX_MODEL
from tests.integration.test_gateway_embedded import content_type
from tests.integration.test_v2_embedded import (
    CLASSES,
    as_vector,
    client_for,
    encoded_input,
    gateway_pixels,
    parse_classes,
    pixels_input,
    probs_output,
)
from tests.support.gateway import GatewayServer
from tests.support.triton import TritonServer


@pytest.fixture(scope="module")
def triton(model_repository: Path) -> Iterator[TritonServer]:
    with TritonServer(model_repository) as server:
        yield server


@pytest.fixture(scope="module")
def gateway(model_repository: Path, triton: TritonServer) -> Iterator[GatewayServer]:
    settings = Settings(
        backend="triton", model_repository=model_repository, triton_url=triton.grpc_url,
        max_batch_delay_ms=20.0, triton_health_interval_s=0.25,
    )
    with GatewayServer(settings) as server:
        yield server


@pytest.fixture(scope="module")
def client(gateway: GatewayServer) -> Iterator[httpclient.InferenceServerClient]:
    triton_client = client_for(gateway)
    yield triton_client
    triton_client.close()


@pytest.fixture(scope="module")
def direct(triton: TritonServer) -> Iterator[httpclient.InferenceServerClient]:
    """The same client code, pointed at Triton itself."""
    triton_client = httpclient.InferenceServerClient(triton.http_url, network_timeout=60.0)
    yield triton_client
    triton_client.close()


def test_metadata_names_the_triton_backend(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_ready() and client.is_model_ready(ONNX_MODEL)
    meta = client.get_model_metadata(ONNX_MODEL)
    assert meta["platform"] == "ca-serve_triton" and meta["versions"] == ["1"]


def test_triton_client_code_runs_unchanged(
    client: httpclient.InferenceServerClient, direct: httpclient.InferenceServerClient,
    model_repository: Path, photos: list[Path],
) -> None:
    """One function, written for Triton's model (IMAGE UINT8 in, PROBS with
    classification out), run against Triton and against the gateway."""
    pixels = np.stack([gateway_pixels(model_repository, p.read_bytes()) for p in photos[:3]])

    def top3(server: httpclient.InferenceServerClient) -> tuple[np.ndarray, np.ndarray]:
        image = httpclient.InferInput("IMAGE", list(pixels.shape), "UINT8")
        image.set_data_from_numpy(pixels)
        classes = server.infer(ONNX_MODEL, [image], outputs=[
            httpclient.InferRequestedOutput("PROBS", class_count=3)]).as_numpy("PROBS")
        probs = server.infer(ONNX_MODEL, [image]).as_numpy("PROBS")
        return classes, probs

    via_gateway, via_triton = top3(client), top3(direct)
    assert via_gateway[0].shape == via_triton[0].shape == (3, 3)
    assert via_gateway[0].tolist() == via_triton[0].tolist()  # the same strings, byte for byte
    np.testing.assert_allclose(via_gateway[1], via_triton[1], rtol=0, atol=1e-7)
    # Triton's own probabilities, not ones rebuilt from its six-decimal classification text.
    assert np.any(np.abs(via_gateway[1] * 1e6 - np.round(via_gateway[1] * 1e6)) > 1e-3)


def test_encoded_images_answer_as_classify_does(
    gateway: GatewayServer, client: httpclient.InferenceServerClient, photos: list[Path]
) -> None:
    images = [p.read_bytes() for p in photos]
    probs = client.infer(ONNX_MODEL, [encoded_input(images)]).as_numpy("PROBS")
    classes = parse_classes(client.infer(
        ONNX_MODEL, [encoded_input(images, binary=False)],
        outputs=[probs_output(binary=False, k=5)]).as_numpy("PROBS"))
    with httpx.Client(base_url=gateway.url, timeout=60.0) as http:
        for row, top, path, data in zip(probs, classes, photos, images, strict=True):
            response = http.post(f"/classify?top_k={CLASSES}", content=data,
                                 headers={"Content-Type": content_type(path)})
            ranking = [(p["index"], p["score"]) for p in response.json()["results"][0][
                "predictions"]]
            np.testing.assert_allclose(row, as_vector(ranking), rtol=0, atol=2e-6)
            assert [index for index, _, _ in top] == [index for index, _ in ranking[:5]]


def test_async_client_and_a_bad_image_in_a_batch(
    gateway: GatewayServer, model_repository: Path, photos: list[Path]
) -> None:
    images = [p.read_bytes() for p in photos[:2]]
    pixels = np.stack([gateway_pixels(model_repository, data) for data in images])

    async def run() -> tuple[np.ndarray, np.ndarray, BaseException | None]:
        async with aioclient.InferenceServerClient(gateway.url.removeprefix("http://")) as aio:
            from_bytes, from_pixels = await asyncio.gather(
                aio.infer(ONNX_MODEL, [encoded_input(images)]),
                aio.infer(ONNX_MODEL, [pixels_input(pixels, binary=False)]),
            )
            try:
                await aio.infer(ONNX_MODEL, [encoded_input([images[0], b"GIF89a broken"])])
                error = None
            except InferenceServerException as exc:
                error = exc
        return from_bytes.as_numpy("PROBS"), from_pixels.as_numpy("PROBS"), error

    from_bytes, from_pixels, error = asyncio.run(run())
    np.testing.assert_allclose(from_bytes, from_pixels, rtol=0, atol=2e-6)
    assert isinstance(error, InferenceServerException) and error.status() == "400"
    assert error.message().startswith("file 2 (IMAGE_BYTES[1]): ")
