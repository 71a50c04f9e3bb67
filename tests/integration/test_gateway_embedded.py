"""The gateway as `ca-serve serve` runs it (a child process, embedded ONNX Runtime) on the
real CPU repository: answers equal the served model on the gateway's preprocessing, which
is checked against an independent one; concurrency forms batches without mixing answers
up, SIGTERM drains."""

from __future__ import annotations

import asyncio
import io
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image, ImageOps

from service.gateway.settings import Settings
from service.preprocess import preprocess
from service.spec import ONNX_MODEL, ModelSpec
from tests.support.gateway import GatewayServer

TOP = 5


# -- the independent reference --------------------------------------------------------
def reference_input(data: bytes) -> np.ndarray:
    """Plain PIL, written here on purpose: RGB, shorter side to 256 (bilinear), centre 224."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    width, height = image.size
    if width < height:
        new_size = (256, int(256 * height / width))
    else:
        new_size = (int(256 * width / height), 256)
    image = image.resize(new_size, Image.BILINEAR)
    left = round((new_size[0] - 224) / 2.0)
    top = round((new_size[1] - 224) / 2.0)
    return np.asarray(image.crop((left, top, left + 224, top + 224)), dtype=np.uint8)


class Reference:
    """The served ONNX model, run directly on images preprocessed as the gateway does,
    after checking that preprocessing against `reference_input`: the gateway resizes only
    the cropped region, so up to 1% of values may differ, by 1 grey level. (The test
    network is random, so it amplifies even that to ~1e-3 in probability: the answers are
    compared on the gateway's exact input, the input against the independent one.)"""

    def __init__(self, repository: Path) -> None:
        path = repository / ONNX_MODEL / "1" / "model.onnx"
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.spec = ModelSpec.load(repository / ONNX_MODEL)

    def model_input(self, data: bytes) -> np.ndarray:
        ours = preprocess(data, self.spec, max_image_pixels=Settings().max_image_pixels)
        diff = np.abs(ours.astype(np.int16) - reference_input(data).astype(np.int16))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())
        return ours

    def top(self, data: bytes, k: int = TOP) -> list[tuple[int, float]]:
        probs = self.session.run(["PROBS"], {"IMAGE": self.model_input(data)[None]})[0][0]
        order = np.argsort(-probs, kind="stable")[:k]
        return [(int(i), float(probs[i])) for i in order]


def answer(result: dict[str, object]) -> list[tuple[int, float]]:
    return [(p["index"], p["score"]) for p in result["predictions"]]  # type: ignore[attr-defined,index]


def assert_same_ranking(
    got: list[tuple[int, float]], want: list[tuple[int, float]], tol: float = 1e-4
) -> None:
    assert [i for i, _ in got] == [i for i, _ in want], (got, want)
    for (_, a), (_, b) in zip(got, want, strict=True):
        assert abs(a - b) <= tol, (got, want)


def content_type(path: Path) -> str:
    return "image/png" if path.suffix == ".png" else "image/jpeg"


def distinct_images(photos: list[Path], count: int) -> list[bytes]:
    """`count` different images made from the photos (crops, flips, rotations)."""
    images: list[bytes] = []
    sources = [Image.open(p).convert("RGB") for p in photos]
    for n in range(count):
        image = sources[n % len(sources)]
        w, h = image.size
        step = n // len(sources)
        box = (step * 7 % (w // 3), step * 5 % (h // 3), w - step * 3 % (w // 4), h)
        variant = image.crop(box)
        if step % 2:
            variant = ImageOps.mirror(variant)
        if step % 3 == 2:
            variant = variant.rotate(90, expand=True)
        buffer = io.BytesIO()
        variant.save(buffer, "PNG")
        images.append(buffer.getvalue())
    return images


async def classify_all(url: str, images: list[bytes]) -> list[list[tuple[int, float]]]:
    limits = httpx.Limits(max_connections=len(images))
    async with httpx.AsyncClient(base_url=url, timeout=60.0, limits=limits) as client:
        responses = await asyncio.gather(
            *(
                client.post("/classify", content=data, headers={"Content-Type": "image/png"})
                for data in images
            )
        )
    assert all(r.status_code == 200 for r in responses), [
        r.text for r in responses if r.status_code != 200
    ]
    return [answer(r.json()["results"][0]) for r in responses]


def histogram(metrics: str, name: str) -> dict[str, float]:
    """`{le: cumulative count}` plus `count` and `sum` of an unlabelled histogram."""
    values: dict[str, float] = {}
    for match in re.finditer(rf'^{name}_bucket{{le="([^"]+)"}} (\S+)$', metrics, re.M):
        values[match.group(1)] = float(match.group(2))
    for part in ("count", "sum"):
        found = re.search(rf"^{name}_{part} (\S+)$", metrics, re.M)
        values[part] = float(found.group(1)) if found else 0.0
    return values


def assert_batches_formed(client: httpx.Client) -> None:
    sizes = histogram(client.get("/metrics").text, "ca_gateway_batch_size")
    assert sizes["count"] > 0
    assert sizes["1.0"] < sizes["count"], f"no batch of more than one image: {sizes}"


# -- the embedded gateway -------------------------------------------------------------
@pytest.fixture(scope="module")
def reference(model_repository: Path) -> Reference:
    return Reference(model_repository)


@pytest.fixture(scope="module")
def gateway(model_repository: Path) -> Iterator[GatewayServer]:
    # A burst of 64 requests at once is what the batching test sends; on two cores its
    # tail waits past the default queue-wait budget, which is not what these tests are about.
    settings = Settings(
        model_repository=model_repository, max_batch_delay_ms=20.0, max_queue_wait_s=30.0
    )
    with GatewayServer(settings) as server:
        yield server


@pytest.fixture(scope="module")
def http(gateway: GatewayServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=60.0) as client:
        yield client


def assert_photos_answered_as_the_reference(
    http: httpx.Client, photos: list[Path], reference: Reference
) -> None:
    """Each photo alone through `/classify`: the top-5 of `reference.top` (shared with the
    Triton-backed gateway's test)."""
    for path in photos:
        data = path.read_bytes()
        response = http.post(
            f"/classify?top_k={TOP}", content=data, headers={"Content-Type": content_type(path)}
        )
        assert response.status_code == 200, response.text
        assert_same_ranking(answer(response.json()["results"][0]), reference.top(data))


def test_top5_equals_the_served_model_on_checked_preprocessing(
    http: httpx.Client, photos: list[Path], reference: Reference
) -> None:
    assert_photos_answered_as_the_reference(http, photos, reference)


def test_multipart_photos_answered_in_order(
    http: httpx.Client, photos: list[Path], reference: Reference
) -> None:
    files = [("file", (p.name, p.read_bytes(), content_type(p))) for p in photos]
    response = http.post("/classify", files=files)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["filename"] for r in results] == [p.name for p in photos]
    for path, result in zip(photos, results, strict=True):
        assert_same_ranking(answer(result), reference.top(path.read_bytes()))


def test_model_endpoint_describes_the_repository(http: httpx.Client) -> None:
    model = http.get("/v1/model").json()
    assert model["name"] == ONNX_MODEL and model["num_classes"] == 1000
    assert model["weights"]["random_init"] is False and len(model["labels"]) == 1000


def test_64_concurrent_requests_get_their_own_answers(
    gateway: GatewayServer, http: httpx.Client, photos: list[Path]
) -> None:
    images = distinct_images(photos, 64)
    sequential = [
        answer(
            http.post("/classify", content=d, headers={"Content-Type": "image/png"}).json()[
                "results"
            ][0]
        )
        for d in images
    ]
    assert len({tuple(i for i, _ in s) for s in sequential}) > 20  # the images differ
    concurrent = asyncio.run(classify_all(gateway.url, images))
    for got, want in zip(concurrent, sequential, strict=True):
        assert_same_ranking(got, want, tol=1e-5)
    assert_batches_formed(http)


def test_sigterm_finishes_queued_requests_then_exits(
    model_repository: Path, photos: list[Path]
) -> None:
    settings = Settings(model_repository=model_repository, max_batch_size=1, graceful_shutdown_s=30)
    images = distinct_images(photos, 8)
    with GatewayServer(settings) as server:

        async def traffic_then_sigterm() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=60.0) as client:
                pending = [
                    asyncio.ensure_future(
                        client.post("/classify", content=d, headers={"Content-Type": "image/png"})
                    )
                    for d in images
                ]
                deadline = time.monotonic() + 20
                while True:  # wait until all eight (and this scrape) are being handled
                    text = (await client.get("/metrics")).text
                    inflight = re.search(r"^ca_gateway_inflight_requests (\S+)$", text, re.M)
                    if inflight and float(inflight.group(1)) >= len(images) + 1:
                        break
                    assert time.monotonic() < deadline, (
                        f"only {inflight and inflight.group(1)} requests in flight after 20 s"
                    )
                    await asyncio.sleep(0.01)
                assert server.process is not None
                server.process.send_signal(signal.SIGTERM)
                return await asyncio.gather(*pending)

        responses = asyncio.run(traffic_then_sigterm())
        assert [r.status_code for r in responses] == [200] * len(images)
        # A drained shutdown is a success: status 0, not death by the signal (-15).
        assert server.wait(30) == 0
        assert server.get_status("/healthz") is None  # no longer listening
        log = server.log_text()
        assert "Application shutdown complete" in log, log[-2000:]
