"""The `--target cpu` repository on the real Triton server (nvidia-pytriton's binary).

Infers a batch of real photos over gRPC and HTTP, checks the probabilities against
in-process ONNX Runtime on the same batch, and the classification extension's top-5.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image

from service.spec import ONNX_MODEL, ModelSpec, load_labels
from tests.support.triton import TritonServer


def plain_preprocess(path: Path, size: int = 224, shorter: int = 256) -> np.ndarray:
    """Written plainly here, independent of the service: resize shorter side, centre crop."""
    image = Image.open(path).convert("RGB")
    scale = shorter / min(image.size)
    image = image.resize(
        (round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR
    )
    left, top = (image.width - size) // 2, (image.height - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


@pytest.fixture(scope="module")
def triton(model_repository: Path) -> Iterator[TritonServer]:
    with TritonServer(model_repository) as server:
        yield server


@pytest.fixture(scope="module")
def batch(photos: list[Path]) -> np.ndarray:
    return np.stack([plain_preprocess(p) for p in photos])


@pytest.fixture(scope="module")
def expected(model_repository: Path, batch: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model_repository / ONNX_MODEL / "1" / "model.onnx"))
    return session.run(["PROBS"], {"IMAGE": batch})[0]


def test_model_metadata_matches_the_spec(triton: TritonServer, model_repository: Path) -> None:
    spec = ModelSpec.load(model_repository / ONNX_MODEL)
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    assert client.is_model_ready(ONNX_MODEL)
    meta = client.get_model_metadata(ONNX_MODEL, as_json=True)
    (image,) = meta["inputs"]
    (probs,) = meta["outputs"]
    assert (image["name"], image["datatype"], [int(d) for d in image["shape"]]) == (
        spec.input_name,
        "UINT8",
        [-1, *spec.input_shape],
    )
    assert (probs["name"], probs["datatype"], [int(d) for d in probs["shape"]]) == (
        spec.output_name,
        "FP32",
        [-1, spec.num_classes],
    )


def test_grpc_batch_equals_in_process_onnx_runtime(
    triton: TritonServer, batch: np.ndarray, expected: np.ndarray
) -> None:
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    image = grpcclient.InferInput("IMAGE", list(batch.shape), "UINT8")
    image.set_data_from_numpy(batch)
    result = client.infer(ONNX_MODEL, [image], outputs=[grpcclient.InferRequestedOutput("PROBS")])
    probs = result.as_numpy("PROBS")
    assert probs.shape == expected.shape
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-6)


def test_http_batch_equals_in_process_onnx_runtime(
    triton: TritonServer, batch: np.ndarray, expected: np.ndarray
) -> None:
    client = httpclient.InferenceServerClient(triton.http_url)
    image = httpclient.InferInput("IMAGE", list(batch.shape), "UINT8")
    image.set_data_from_numpy(batch, binary_data=True)
    result = client.infer(
        ONNX_MODEL, [image], outputs=[httpclient.InferRequestedOutput("PROBS", binary_data=True)]
    )
    np.testing.assert_allclose(result.as_numpy("PROBS"), expected, rtol=0, atol=1e-6)


def test_classification_extension_returns_the_same_top5_with_labels(
    triton: TritonServer, model_repository: Path, batch: np.ndarray, expected: np.ndarray
) -> None:
    labels = load_labels(model_repository / ONNX_MODEL / "labels.txt", expected=1000)
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    image = grpcclient.InferInput("IMAGE", list(batch.shape), "UINT8")
    image.set_data_from_numpy(batch)
    result = client.infer(
        ONNX_MODEL, [image], outputs=[grpcclient.InferRequestedOutput("PROBS", class_count=5)]
    )
    rows = result.as_numpy("PROBS")
    assert rows.shape == (len(batch), 5)
    for row, probs in zip(rows, expected, strict=True):
        entries = [entry.decode().split(":", 2) for entry in row]
        indices = [int(index) for _, index, _ in entries]
        assert indices == list(np.argsort(-probs)[:5])
        assert [label for _, _, label in entries] == [labels[i] for i in indices]
        np.testing.assert_allclose(
            [float(score) for score, _, _ in entries], probs[indices], atol=1e-6
        )
