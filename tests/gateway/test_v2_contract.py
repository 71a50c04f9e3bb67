"""How the served model looks through the Open Inference Protocol: which tensors become
images, within which limits, and the outputs built from rankings (Triton's classification
strings, probabilities)."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from service.errors import BadRequest, PayloadTooLarge, TooManyFiles
from service.gateway.runtime import Upload
from service.gateway.v2.codec import InferRequest, RequestedOutput, Tensor
from service.gateway.v2.contract import V2Model, probabilities
from service.spec import ModelSpec

CLASSES = 4
MODEL = V2Model(
    name="m", version="1", platform="ca-serve_embedded",
    spec=ModelSpec(name="m", num_classes=CLASSES), labels=("a", "b", "c", "d"),
)


def encoded(elements: list[bytes], shape: tuple[int, ...] | None = None,
            binary: bool = True) -> Tensor:
    return Tensor("IMAGE_BYTES", "BYTES", shape or (len(elements),), elements, binary)


def request(tensor: Tensor, outputs: list[RequestedOutput] | None = None,
            binary_output: bool = False) -> InferRequest:
    return InferRequest(id=None, inputs=[tensor], outputs=outputs, binary_output=binary_output)


def prepare(req: InferRequest, max_images: int = 4, max_bytes: int = 100):  # type: ignore[no-untyped-def]
    return MODEL.prepare(req, max_images=max_images, max_bytes=max_bytes)


def test_metadata_lists_both_inputs_and_the_output() -> None:
    meta = MODEL.metadata()
    assert meta["name"] == "m" and meta["versions"] == ["1"]
    assert meta["inputs"] == [
        {"name": "IMAGE", "datatype": "UINT8", "shape": [-1, 224, 224, 3]},
        {"name": "IMAGE_BYTES", "datatype": "BYTES", "shape": [-1]},
    ]
    assert meta["outputs"] == [{"name": "PROBS", "datatype": "FP32", "shape": [-1, CLASSES]}]


@pytest.mark.parametrize("shape", [(2,), (2, 1)])
def test_encoded_images_become_uploads_named_by_element(shape: tuple[int, ...]) -> None:
    job = prepare(request(encoded([b"one", b"two"], shape)))
    assert job.images == [Upload(b"one", "IMAGE_BYTES[0]"), Upload(b"two", "IMAGE_BYTES[1]")]
    # No outputs named: the probabilities, every class ranked.
    assert job.k == CLASSES and [(p.name, p.k, p.binary) for p in job.outputs] == [
        ("PROBS", 0, False)]


def test_json_bytes_elements_are_base64() -> None:
    texts = [base64.b64encode(b"\xff\xd8raw jpeg").decode(), "aGVs\nbG8="]
    job = prepare(request(encoded([t.encode() for t in texts], binary=False)))
    assert [u.data for u in job.images] == [b"\xff\xd8raw jpeg", b"hello"]  # type: ignore[union-attr]
    with pytest.raises(BadRequest, match="element 1 is not base64"):
        prepare(request(encoded([b"aGVsbG8=", b"not base64!"], binary=False)))


def test_preprocessed_images_are_taken_as_they_are() -> None:
    pixels = np.arange(2 * 224 * 224 * 3, dtype=np.uint64).astype(np.uint8).reshape(2, 224, 224, 3)
    job = prepare(request(Tensor("IMAGE", "UINT8", pixels.shape, pixels, True)))
    assert len(job.images) == 2
    np.testing.assert_array_equal(np.stack(job.images), pixels)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("tensor", "error", "message"),
    [
        (Tensor("IMAGE", "FP32", (1, 224, 224, 3), np.zeros((1, 224, 224, 3), np.float32)),
         BadRequest, "datatype FP32; expected UINT8"),
        (Tensor("IMAGE", "UINT8", (1, 224, 224), np.zeros((1, 224, 224), np.uint8)),
         BadRequest, r"shape \[1, 224, 224\]; expected \[N,224,224,3\]"),
        (Tensor("IMAGE", "UINT8", (1, 3, 224, 224), np.zeros((1, 3, 224, 224), np.uint8)),
         BadRequest, "expected \\[N,224,224,3\\]"),
        (Tensor("IMAGE_BYTES", "UINT8", (1,), np.zeros(1, np.uint8)),
         BadRequest, "datatype UINT8; expected BYTES"),
        (encoded([b"x", b"y"], (1, 2)), BadRequest, r"expected \[N\] or \[N,1\]"),
        (encoded([], (0,)), BadRequest, "holds no images"),
        (Tensor("PIXELS", "UINT8", (1,), np.zeros(1, np.uint8)), BadRequest, "unknown input"),
        (encoded([b"x"] * 5), TooManyFiles, "5 images; at most 4"),
        (Tensor("IMAGE", "UINT8", (5, 224, 224, 3), np.zeros((5, 224, 224, 3), np.uint8)),
         TooManyFiles, "at most 4"),
        (encoded([b"x" * 60, b"y" * 41]), PayloadTooLarge, "101 bytes together"),
    ],
)
def test_wrong_tensors_are_refused(tensor: Tensor, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        prepare(request(tensor))


def test_exactly_one_input_and_only_the_models_output() -> None:
    two = InferRequest(id=None, inputs=[encoded([b"x"]), encoded([b"y"])], outputs=None)
    with pytest.raises(BadRequest, match="exactly one input"):
        prepare(two)
    with pytest.raises(BadRequest, match="unknown output 'LOGITS'"):
        prepare(request(encoded([b"x"]), [RequestedOutput("LOGITS")]))


def test_classification_and_binary_choices() -> None:
    outputs = [RequestedOutput("PROBS", binary=None, classification=9)]
    job = prepare(request(encoded([b"x"]), outputs, binary_output=True))
    # k is capped at the number of classes, as Triton caps it; binary follows the request.
    assert [(p.k, p.binary) for p in job.outputs] == [(CLASSES, True)] and job.k == CLASSES
    outputs = [RequestedOutput("PROBS", binary=False, classification=2)]
    job = prepare(request(encoded([b"x"]), outputs, binary_output=True))
    assert [(p.k, p.binary) for p in job.outputs] == [(2, False)] and job.k == 2


def test_answers_classification_strings_like_triton() -> None:
    job = prepare(request(encoded([b"x", b"y"]), [RequestedOutput("PROBS", classification=2)]))
    rankings = [[(3, 0.5), (0, 0.25)], [(1, 0.123456789), (2, 1e-9)]]
    (tensor,) = MODEL.answer(job, rankings)
    assert (tensor.name, tensor.datatype, tensor.shape) == ("PROBS", "BYTES", (2, 2))
    # C's %f: six decimals, as Triton's std::to_string prints the score.
    assert tensor.data == [b"0.500000:3:d", b"0.250000:0:a", b"0.123457:1:b", b"0.000000:2:c"]


def test_answers_probabilities_from_full_rankings() -> None:
    job = prepare(request(encoded([b"x"])))
    scores = np.array([0.1, 0.6, 0.2, 0.1], dtype=np.float32)
    ranking = [(1, float(scores[1])), (2, float(scores[2])), (0, float(scores[0])),
               (3, float(scores[3]))]
    (tensor,) = MODEL.answer(job, [ranking])
    assert (tensor.datatype, tensor.shape) == ("FP32", (1, CLASSES))
    assert isinstance(tensor.data, np.ndarray)
    np.testing.assert_array_equal(tensor.data[0], scores)  # exact float32 round trip
    np.testing.assert_array_equal(probabilities([ranking, ranking[::-1]], CLASSES),
                                  np.stack([scores, scores]))
