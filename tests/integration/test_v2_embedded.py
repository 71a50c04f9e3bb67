"""The Open Inference Protocol on a running gateway (a `ca-serve serve` process, embedded
backend, the real CPU repository, API keys on), driven by the real `tritonclient.http`
clients, sync and asyncio: health, metadata, inference with encoded images (binary and
JSON) and preprocessed pixels, Triton's classification extension, the same answers as
`/classify`, and the protocol's errors."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from tritonclient.utils import InferenceServerException

from service.gateway.settings import Settings
from service.preprocess import preprocess
from service.spec import ONNX_MODEL, ModelSpec
from tests.integration.test_gateway_embedded import content_type, distinct_images
from tests.support.gateway import GatewayServer

KEY = "v2-key"


def auth() -> dict[str, str]:
    # A fresh dict per call: tritonclient writes its own headers into the one it is given.
    return {"Authorization": f"Bearer {KEY}"}


CLASSES = 1000


# -- helpers shared with the Triton-backed gateway's tests --------------------------------
def client_for(gateway: GatewayServer) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(gateway.url.removeprefix("http://"),
                                            network_timeout=60.0, connection_timeout=60.0)


def encoded_input(images: list[bytes], *, binary: bool = True) -> httpclient.InferInput:
    """Encoded images as `IMAGE_BYTES`: raw bytes as binary data, base64 text as JSON."""
    if binary:
        array = np.array(images, dtype=np.object_)
    else:
        array = np.array([base64.b64encode(image) for image in images], dtype=np.object_)
    tensor = httpclient.InferInput("IMAGE_BYTES", [len(images)], "BYTES")
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def pixels_input(pixels: np.ndarray, *, binary: bool = True) -> httpclient.InferInput:
    tensor = httpclient.InferInput("IMAGE", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels, binary_data=binary)
    return tensor


def probs_output(*, binary: bool = True, k: int = 0) -> httpclient.InferRequestedOutput:
    return httpclient.InferRequestedOutput("PROBS", binary_data=binary, class_count=k)


def parse_classes(raw: np.ndarray) -> list[list[tuple[int, float, str]]]:
    """Triton's `"score:index:label"` elements, row by row."""
    rows = []
    for row in raw:
        parsed = []
        for element in row:
            text = element.decode() if isinstance(element, bytes) else element
            score, index, label = text.split(":", 2)
            parsed.append((int(index), float(score), label))
        rows.append(parsed)
    return rows


def classify_probs(http: httpx.Client, data: bytes, ctype: str) -> list[tuple[int, float]]:
    """`/classify`'s ranking of every class for one image."""
    response = http.post(f"/classify?top_k={CLASSES}", content=data,
                         headers={"Content-Type": ctype, **auth()})
    assert response.status_code == 200, response.text
    return [(p["index"], p["score"]) for p in response.json()["results"][0]["predictions"]]


def as_vector(ranking: list[tuple[int, float]]) -> np.ndarray:
    vector = np.zeros(CLASSES, dtype=np.float64)
    for index, score in ranking:
        vector[index] = score
    return vector


def gateway_pixels(repository: Path, data: bytes) -> np.ndarray:
    """What the gateway's own preprocessing makes of `data` (the UINT8 input's contract)."""
    spec = ModelSpec.load(repository / ONNX_MODEL)
    return preprocess(data, spec, max_image_pixels=Settings().max_image_pixels)


def assert_v2_error(response: httpx.Response, status: int, pattern: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    assert re.search(pattern, body["error"]), body


# -- fixtures -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gateway(model_repository: Path) -> Iterator[GatewayServer]:
    settings = Settings(model_repository=model_repository, max_batch_delay_ms=20.0,
                        api_keys=(KEY,), max_files=8)
    with GatewayServer(settings) as server:
        yield server


@pytest.fixture(scope="module")
def http(gateway: GatewayServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=60.0) as client:
        yield client


@pytest.fixture(scope="module")
def client(gateway: GatewayServer) -> Iterator[httpclient.InferenceServerClient]:
    triton_client = client_for(gateway)
    yield triton_client
    triton_client.close()


# -- health and metadata ------------------------------------------------------------------
def test_health_and_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    server = client.get_server_metadata()
    assert server["name"] == "ca-serve"
    assert {"binary_tensor_data", "classification"} <= set(server["extensions"])
    for version in ("", "1"):
        meta = client.get_model_metadata(ONNX_MODEL, version, headers=auth())
        assert meta["name"] == ONNX_MODEL and meta["versions"] == ["1"]
        assert meta["platform"] == "ca-serve_embedded"
        assert {(t["name"], t["datatype"], tuple(t["shape"])) for t in meta["inputs"]} == {
            ("IMAGE", "UINT8", (-1, 224, 224, 3)), ("IMAGE_BYTES", "BYTES", (-1,))}
        assert meta["outputs"] == [{"name": "PROBS", "datatype": "FP32", "shape": [-1, CLASSES]}]
        assert client.is_model_ready(ONNX_MODEL, version, headers=auth())
    assert not client.is_model_ready("other_model", headers=auth())
    assert not client.is_model_ready(ONNX_MODEL, "2", headers=auth())


@pytest.mark.parametrize(("model", "version", "pattern"), [
    ("other_model", "", "unknown model 'other_model'"),
    (ONNX_MODEL, "7", "has no version '7'; it serves version '1'"),
])
def test_unknown_model_or_version_is_404(
    client: httpclient.InferenceServerClient, photos: list[Path], model: str, version: str,
    pattern: str,
) -> None:
    for call in (
        lambda: client.get_model_metadata(model, version, headers=auth()),
        lambda: client.infer(model, [encoded_input([photos[0].read_bytes()])],
                             model_version=version, headers=auth()),
    ):
        with pytest.raises(InferenceServerException) as caught:
            call()
        assert caught.value.status() == "404" and re.search(pattern, caught.value.message())


def test_model_routes_need_the_key_and_health_does_not(http: httpx.Client) -> None:
    assert http.get("/v2/health/live").status_code == 200
    assert http.get("/v2/health/ready").json() == {"ready": True}
    assert http.get("/v2").status_code == 200
    for method, path in (("GET", f"/v2/models/{ONNX_MODEL}"),
                         ("GET", f"/v2/models/{ONNX_MODEL}/versions/1/ready"),
                         ("POST", f"/v2/models/{ONNX_MODEL}/infer")):
        response = http.request(method, path, content=b"{}")
        assert_v2_error(response, 401, "API key")
        assert response.headers["www-authenticate"] == "Bearer"


# -- inference ----------------------------------------------------------------------------
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_encoded_images_answer_as_classify_does(
    client: httpclient.InferenceServerClient, http: httpx.Client, photos: list[Path],
    binary: bool,
) -> None:
    images = [p.read_bytes() for p in photos]
    result = client.infer(
        ONNX_MODEL, [encoded_input(images, binary=binary)],
        outputs=[probs_output(binary=binary), ], request_id="batch-1", headers=auth(),
    )
    assert result.get_response()["id"] == "batch-1"
    assert result.get_response()["model_version"] == "1"
    probs = result.as_numpy("PROBS")
    assert probs.dtype == np.float32 and probs.shape == (len(photos), CLASSES)
    for row, path, data in zip(probs, photos, images, strict=True):
        want = as_vector(classify_probs(http, data, content_type(path)))
        np.testing.assert_allclose(row, want, rtol=0, atol=2e-6)
        assert abs(float(row.sum()) - 1.0) < 1e-4


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_classification_extension_answers_triton_strings(
    client: httpclient.InferenceServerClient, http: httpx.Client, photos: list[Path],
    binary: bool,
) -> None:
    images = [p.read_bytes() for p in photos[:3]]
    result = client.infer(ONNX_MODEL, [encoded_input(images, binary=binary)],
                          outputs=[probs_output(binary=binary, k=3)], headers=auth())
    raw = result.as_numpy("PROBS")
    assert raw.shape == (3, 3)
    labels = http.get("/v1/model", headers=auth()).json()["labels"]
    for got, path, data in zip(parse_classes(raw), photos[:3], images, strict=True):
        want = classify_probs(http, data, content_type(path))[:3]
        assert [i for i, _, _ in got] == [i for i, _ in want]
        assert [label for _, _, label in got] == [labels[i] for i, _ in want]
        for (_, score, _), (_, expected) in zip(got, want, strict=True):
            assert abs(score - expected) <= 5e-7 + 1e-6  # printed with six decimals


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_preprocessed_pixels_answer_as_encoded_images(
    client: httpclient.InferenceServerClient, model_repository: Path, photos: list[Path],
    binary: bool,
) -> None:
    images = [p.read_bytes() for p in photos[:2]]
    pixels = np.stack([gateway_pixels(model_repository, data) for data in images])
    from_pixels = client.infer(ONNX_MODEL, [pixels_input(pixels, binary=binary)],
                               model_version="1", headers=auth()).as_numpy("PROBS")
    from_bytes = client.infer(ONNX_MODEL, [encoded_input(images)],
                              headers=auth()).as_numpy("PROBS")
    np.testing.assert_allclose(from_pixels, from_bytes, rtol=0, atol=2e-6)


def test_gzip_requests_are_read(
    client: httpclient.InferenceServerClient, photos: list[Path]
) -> None:
    images = [photos[0].read_bytes()]
    plain = client.infer(ONNX_MODEL, [encoded_input(images)], headers=auth()).as_numpy("PROBS")
    for algorithm in ("gzip", "deflate"):
        packed = client.infer(ONNX_MODEL, [encoded_input(images)], headers=auth(),
                              request_compression_algorithm=algorithm).as_numpy("PROBS")
        np.testing.assert_allclose(packed, plain, rtol=0, atol=2e-6)


def test_async_client_concurrent_requests_get_their_own_answers(
    gateway: GatewayServer, client: httpclient.InferenceServerClient, photos: list[Path]
) -> None:
    images = distinct_images(photos, 12)
    alone = [client.infer(ONNX_MODEL, [encoded_input([d])], headers=auth()).as_numpy("PROBS")[0]
             for d in images]

    async def together() -> list[np.ndarray]:
        async with aioclient.InferenceServerClient(gateway.url.removeprefix("http://")) as aio:
            assert await aio.is_server_ready()
            meta = await aio.get_model_metadata(ONNX_MODEL, headers=auth())
            assert meta["name"] == ONNX_MODEL
            results = await asyncio.gather(*(
                aio.infer(ONNX_MODEL, [encoded_input([d])], headers=auth()) for d in images
            ))
        return [result.as_numpy("PROBS")[0] for result in results]

    for got, want in zip(asyncio.run(together()), alone, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


# -- errors -------------------------------------------------------------------------------
def _infer_error(client: httpclient.InferenceServerClient,
                 inputs: list[httpclient.InferInput]) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        client.infer(ONNX_MODEL, inputs, headers=auth())
    return caught.value


def test_malformed_wrong_datatype_and_wrong_shape_are_400(
    client: httpclient.InferenceServerClient,
) -> None:
    # Malformed: the shape claims more pixels than the binary data carries.
    short = pixels_input(np.zeros((1, 224, 224, 3), np.uint8))
    short.set_shape([1, 224, 224, 4])
    error = _infer_error(client, [short])
    assert error.status() == "400"
    assert "has 150528 bytes of binary data; shape [1, 224, 224, 4] of UINT8 needs 200704" in (
        error.message())
    # Wrong datatype for the input's name.
    floats = httpclient.InferInput("IMAGE", [1, 224, 224, 3], "FP32")
    floats.set_data_from_numpy(np.zeros((1, 224, 224, 3), np.float32))
    error = _infer_error(client, [floats])
    assert error.status() == "400" and "datatype FP32; expected UINT8" in error.message()
    # Wrong shape: NCHW pixels.
    error = _infer_error(client, [pixels_input(np.zeros((1, 3, 224, 224), np.uint8))])
    assert error.status() == "400" and "expected [N,224,224,3]" in error.message()
    # Too many images for one request (CA_MAX_FILES=8).
    error = _infer_error(client, [encoded_input([b"x"] * 9)])
    assert error.status() == "413" and "at most 8 per request" in error.message()


def test_undecodable_image_fails_its_request_not_other_requests(
    gateway: GatewayServer, client: httpclient.InferenceServerClient, photos: list[Path]
) -> None:
    good = [p.read_bytes() for p in photos[:3]]
    bad_batch = [good[0], b"\xff\xd8\xff garbage, not a JPEG", good[1]]
    error = _infer_error(client, [encoded_input(bad_batch)])
    assert error.status() == "400"
    assert error.message().startswith("file 2 (IMAGE_BYTES[1]): ")
    assert "not a JPEG, PNG" in error.message()
    # Bad batches and good requests at once: the good ones keep their own answers.
    want = client.infer(ONNX_MODEL, [encoded_input(good)], headers=auth()).as_numpy("PROBS")

    async def mixed() -> tuple[list[object], list[np.ndarray]]:
        async with aioclient.InferenceServerClient(gateway.url.removeprefix("http://")) as aio:
            bad = [aio.infer(ONNX_MODEL, [encoded_input(bad_batch)], headers=auth())
                   for _ in range(6)]
            fine = [aio.infer(ONNX_MODEL, [encoded_input(good)], headers=auth())
                    for _ in range(6)]
            outcomes = await asyncio.gather(*bad, *fine, return_exceptions=True)
        return list(outcomes[:6]), [r.as_numpy("PROBS") for r in outcomes[6:]]  # type: ignore[union-attr]

    failures, answers = asyncio.run(mixed())
    for failure in failures:
        assert isinstance(failure, InferenceServerException) and failure.status() == "400"
    for got in answers:
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_errors_have_the_v2_shape_and_metrics_one_label_per_operation(
    http: httpx.Client, photos: list[Path]
) -> None:
    infer = f"/v2/models/{ONNX_MODEL}/infer"
    assert_v2_error(http.post(infer, content=b"{not json", headers=auth()), 400, "not valid JSON")
    assert_v2_error(http.post(f"/v2/models/{ONNX_MODEL}/versions/1/infer",
                              content=b'{"inputs": []}', headers=auth()), 400, "non-empty list")
    assert_v2_error(http.get("/v2/nothing/here"), 404, "Not Found")
    assert_v2_error(http.get(infer, headers=auth()), 405, "Method Not Allowed")
    assert_v2_error(http.post(infer, content=b"{}", headers={**auth(), "Content-Encoding": "br"}),
                    415, "Content-Encoding 'br'")
    # /classify keeps its own error shape.
    response = http.post("/classify", content=b"x", headers={**auth(), "Content-Type": "text/x"})
    assert set(response.json()["error"]) == {"code", "message"}
    metrics = http.get("/metrics").text
    assert re.search(r'ca_gateway_requests_total\{route="/v2/models/\{model_name\}/infer",'
                     r'status="400"\} [1-9]', metrics)
    assert re.search(r'ca_gateway_requests_total\{route="/v2/models/\{model_name\}/infer",'
                     r'status="200"\} [1-9]', metrics)
    assert "versions" not in "".join(re.findall(r'route="([^"]*)"', metrics))


# -- JSON bodies on /classify -------------------------------------------------------------
def test_json_classify_equals_multipart(http: httpx.Client, photos: list[Path]) -> None:
    files = [("file", (p.name, p.read_bytes(), content_type(p))) for p in photos[:3]]
    multipart = http.post("/classify?top_k=4", files=files, headers=auth())
    instances = [{"image_bytes": {"b64": base64.b64encode(p.read_bytes()).decode()},
                  "filename": p.name} for p in photos[:3]]
    as_json = http.post("/classify", json={"instances": instances, "top_k": 4}, headers=auth())
    assert multipart.status_code == as_json.status_code == 200, as_json.text
    for a, b in zip(multipart.json()["results"], as_json.json()["results"], strict=True):
        assert a["filename"] == b["filename"]
        assert [p["index"] for p in a["predictions"]] == [p["index"] for p in b["predictions"]]
        for p, q in zip(a["predictions"], b["predictions"], strict=True):
            assert abs(p["score"] - q["score"]) <= 1e-5
