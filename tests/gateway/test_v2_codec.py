"""The Open Inference Protocol codec against the real `tritonclient.http` encoder and
decoder (its static `generate_request_body` / `parse_response_body`, no server): what
the client writes is read back exactly, what the codec writes the client reads back
exactly, and every malformed body is a `BadRequest` naming the fault."""

from __future__ import annotations

import gzip
import json
import struct
import zlib
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from service.gateway.v2.codec import Tensor, decode_content, encode_response, header_length
from service.gateway.v2.parse import parse_request

Client = httpclient.InferenceServerClient


def client_body(
    inputs: list[httpclient.InferInput],
    outputs: list[httpclient.InferRequestedOutput] | None = None,
    **kwargs: Any,
) -> tuple[bytes, int | None]:
    body, length = Client.generate_request_body(inputs, outputs=outputs, **kwargs)
    return bytes(body), length


def infer_input(name: str, array: np.ndarray, datatype: str, binary: bool) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def request_json(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()


# -- what the client writes ---------------------------------------------------------------
@pytest.mark.parametrize("binary", [True, False])
def test_reads_the_clients_numeric_and_bytes_tensors(binary: bool) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    texts = np.array([b"first", b"second \xc3\xa9"], dtype=np.object_)
    floats = np.array([[0.5, -1.25], [3.0, 1e-7]], dtype=np.float32)
    body, length = client_body(
        [infer_input("IMAGE", pixels, "UINT8", binary),
         infer_input("TEXT", texts, "BYTES", binary),
         infer_input("F", floats, "FP32", binary)],
        request_id="req-1",
    )
    assert (length is not None) == binary
    request = parse_request(body, length)
    assert request.id == "req-1"
    image, text, values = request.inputs
    assert (image.name, image.datatype, image.shape, image.binary) == (
        "IMAGE", "UINT8", (2, 4, 4, 3), binary)
    assert isinstance(image.data, np.ndarray) and image.data.dtype == np.uint8
    np.testing.assert_array_equal(image.data, pixels)
    assert text.data == [b"first", "second é".encode()]
    assert isinstance(values.data, np.ndarray)
    np.testing.assert_array_equal(values.data, floats)
    # No outputs named: the client asks for every output, in binary.
    assert request.outputs is None and request.binary_output is True


def test_reads_requested_outputs_and_their_parameters() -> None:
    outputs = [httpclient.InferRequestedOutput("PROBS", binary_data=False, class_count=3),
               httpclient.InferRequestedOutput("OTHER")]
    body, length = client_body([infer_input("X", np.zeros(2, np.int32), "INT32", True)], outputs)
    request = parse_request(body, length)
    assert request.outputs is not None
    probs, other = request.outputs
    assert (probs.name, probs.binary, probs.classification) == ("PROBS", False, 3)
    assert (other.name, other.binary, other.classification) == ("OTHER", True, 0)
    assert request.binary_output is False


def test_nested_json_data_is_row_major() -> None:
    request = parse_request(request_json({"inputs": [
        {"name": "X", "datatype": "INT16", "shape": [2, 3], "data": [[1, 2, 3], [4, 5, 6]]},
        {"name": "S", "datatype": "BYTES", "shape": [2, 1], "data": [["a"], ["b"]]},
    ]}))
    numbers, strings = request.inputs
    assert isinstance(numbers.data, np.ndarray)
    assert numbers.data.tolist() == [[1, 2, 3], [4, 5, 6]] and numbers.data.dtype == np.int16
    assert strings.data == [b"a", b"b"]


# -- malformed requests -------------------------------------------------------------------
def _binary_request(size: int, shape: list[int], datatype: str = "UINT8") -> dict[str, Any]:
    return {"inputs": [{"name": "IMAGE", "datatype": datatype, "shape": shape,
                        "parameters": {"binary_data_size": size}}]}


def _with_binary(document: dict[str, Any], data: bytes) -> tuple[bytes, int]:
    head = request_json(document)
    return head + data, len(head)


@pytest.mark.parametrize(
    ("document", "data", "message"),
    [
        # The byte count disagrees with shape x datatype.
        (_binary_request(11, [1, 2, 2, 3]), bytes(11), "needs 12"),
        (_binary_request(12, [1, 2, 2, 3], "FP32"), bytes(12), "needs 48"),
        # binary_data_size larger than what follows the JSON.
        (_binary_request(100, [1, 10, 10, 1]), bytes(40), "only 40 follow"),
        # Bytes left over after the last tensor.
        (_binary_request(4, [4]), bytes(6), "2 bytes follow"),
        # BYTES: a length running past the data, too few elements, a cut length prefix.
        ({"inputs": [{"name": "B", "datatype": "BYTES", "shape": [1],
                      "parameters": {"binary_data_size": 6}}]},
         struct.pack("<I", 9) + b"ab", "declares 9 bytes"),
        ({"inputs": [{"name": "B", "datatype": "BYTES", "shape": [2],
                      "parameters": {"binary_data_size": 10}}]},
         struct.pack("<I", 6) + b"abcdef", "has 1 BYTES elements"),
        ({"inputs": [{"name": "B", "datatype": "BYTES", "shape": [3],
                      "parameters": {"binary_data_size": 10}}]},
         struct.pack("<I", 6) + b"abcdef", "cannot hold the 3 elements"),
        ({"inputs": [{"name": "B", "datatype": "BYTES", "shape": [2],
                      "parameters": {"binary_data_size": 8}}]},
         struct.pack("<I", 2) + b"ab" + b"\x01\x00", "truncated length"),
        ({"inputs": [{"name": "B", "datatype": "BYTES", "shape": [1],
                      "parameters": {"binary_data_size": 12}}]},
         struct.pack("<I", 0) * 3, "has 3 BYTES elements; shape \\[1\\] needs 1"),
    ],
)
def test_malformed_binary_data_is_a_bad_request(
    document: dict[str, Any], data: bytes, message: str
) -> None:
    body, length = _with_binary(document, data)
    with pytest.raises(BadRequest, match=message):
        parse_request(body, length)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "must be a JSON object"),
        ({"inputs": []}, "non-empty list"),
        ({"inputs": [3]}, "input 0 must be a JSON object"),
        ({"inputs": [{"datatype": "UINT8", "shape": [1], "data": [1]}]}, "needs a 'name'"),
        ({"inputs": [{"name": "X", "datatype": "BF16", "shape": [1], "data": [1]}]},
         "datatype 'BF16'"),
        ({"inputs": [{"name": "X", "datatype": "UINT8", "shape": [-1], "data": [1]}]},
         "non-negative integer"),
        ({"inputs": [{"name": "X", "datatype": "UINT8", "shape": [True], "data": [1]}]},
         "non-negative integer"),
        ({"inputs": [{"name": "X", "datatype": "UINT8", "shape": "1", "data": [1]}]},
         "needs a 'shape'"),
        ({"inputs": [{"name": "X", "datatype": "UINT8", "shape": [2], "data": [1]}]},
         "has 1 values; shape \\[2\\] needs 2"),
        ({"inputs": [{"name": "X", "datatype": "UINT8", "shape": [1], "data": [300]}]},
         "outside UINT8's range"),
        ({"inputs": [{"name": "X", "datatype": "INT8", "shape": [1], "data": [1.5]}]},
         "must be integers"),
        ({"inputs": [{"name": "X", "datatype": "UINT8", "shape": [1], "data": [2**70]}]},
         "must be integers"),
        ({"inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": ["1"]}]},
         "must be numbers"),
        ({"inputs": [{"name": "X", "datatype": "BOOL", "shape": [1], "data": [1]}]},
         "true or false"),
        ({"inputs": [{"name": "X", "datatype": "INT32", "shape": [2], "data": [[1], [2, 3]]}]},
         "not a regular array"),
        ({"inputs": [{"name": "X", "datatype": "BYTES", "shape": [1], "data": [1]}]},
         "must be strings"),
        ({"inputs": [{"name": "X", "datatype": "BYTES", "shape": [1], "data": ["\ud800"]}]},
         "not valid Unicode"),
        ({"inputs": [{"name": "X", "datatype": "UINT8", "shape": [1]}]}, "neither 'data'"),
        ({"inputs": [{"name": "X", "datatype": "UINT8", "shape": [1], "data": [1],
                      "parameters": {"binary_data_size": 1}}]}, "both 'data'"),
        ({"inputs": [{"name": "X", "datatype": "UINT8", "shape": [1], "data": [1]}] * 2},
         "listed twice"),
        ({"inputs": [{"name": "X", "datatype": "UINT8", "shape": [1], "data": [1]}],
          "outputs": [{"name": "P", "parameters": {"classification": -2}}]},
         "classification must be a non-negative integer"),
        ({"inputs": [{"name": "X", "datatype": "UINT8", "shape": [1], "data": [1]}],
          "outputs": [{"name": "P", "parameters": {"binary_data": "yes"}}]},
         "binary_data must be true or false"),
        ({"inputs": [{"name": "X", "datatype": "UINT8", "shape": [1], "data": [1]}],
          "outputs": [{"name": "P"}, {"name": "P"}]}, "requested twice"),
        ({"id": 7, "inputs": []}, "'id' must be a string"),
    ],
)
def test_malformed_json_is_a_bad_request(document: object, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_request(json.dumps(document).encode())


def test_deep_nesting_and_non_json_are_bad_requests() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(BadRequest, match="not valid JSON"):
        parse_request(('{"inputs": ' + deep + "}").encode())
    nested = {"inputs": [{"name": "S", "datatype": "BYTES", "shape": [1],
                          "data": json.loads("[" * 200 + '"a"' + "]" * 200)}]}
    with pytest.raises(BadRequest, match="nested too deeply"):
        parse_request(request_json(nested))
    for body in (b"\xff\xfe\x00garbage", b"", b"{'single': 'quotes'}"):
        with pytest.raises(BadRequest, match="not valid JSON"):
            parse_request(body)


def test_empty_bytes_elements_are_read() -> None:
    document = {"inputs": [{"name": "B", "datatype": "BYTES", "shape": [3],
                            "parameters": {"binary_data_size": 12}}]}
    body, length = _with_binary(document, struct.pack("<I", 0) * 3)
    assert parse_request(body, length).inputs[0].data == [b"", b"", b""]


@pytest.mark.parametrize(("value", "size", "message"), [
    ("x", 10, "not a number"), ("11", 10, "the body has 10 bytes"), ("-1", 10, "is -1"),
])
def test_header_length_must_fit_the_body(value: str, size: int, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        header_length(value, size)
    assert header_length(None, size) is None
    assert header_length(" 7 ", size) == 7


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["name", "datatype", "shape", "data", "parameters",
                                       "binary_data_size", "inputs", "outputs", "id",
                                       "classification", "binary_data"]) | st.text(max_size=4),
                      children, max_size=5),
    max_leaves=30,
)
REQUEST_LIKE = st.fixed_dictionaries(
    {"inputs": st.lists(st.fixed_dictionaries(
        {"name": JSON_VALUES | st.just("IMAGE"),
         "datatype": st.sampled_from(["UINT8", "BYTES", "FP32", "BOOL", "INT64", "X"])
         | JSON_VALUES,
         "shape": st.lists(st.integers(-2, 5), max_size=4) | JSON_VALUES},
        optional={"data": JSON_VALUES, "parameters": JSON_VALUES}), max_size=3)},
    optional={"outputs": JSON_VALUES, "parameters": JSON_VALUES, "id": JSON_VALUES},
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=JSON_VALUES | REQUEST_LIKE, tail=st.binary(max_size=16),
       split=st.integers(-1, 400))
def test_any_body_is_read_or_refused_as_a_bad_request(
    document: object, tail: bytes, split: int
) -> None:
    """Arbitrary JSON, nearly-right requests and stray binary data: parsed, or refused
    with `BadRequest`, never another exception."""
    try:
        head = json.dumps(document).encode()
    except ValueError:  # a float NaN inside a dict key position cannot happen; be safe
        return
    body = head + tail
    try:
        length = header_length(str(split), len(body)) if split >= 0 else None
        parse_request(body, length)
    except BadRequest:
        pass


# -- what the codec writes ----------------------------------------------------------------
@pytest.mark.parametrize("binary", [True, False])
def test_the_client_reads_back_what_the_codec_writes(binary: bool) -> None:
    probs = np.random.default_rng(1).random((3, 5), dtype=np.float32)
    labels = [b"0.500000:1:cat", "0.250000:2:caf\u00e9".encode()]
    body, length = encode_response(
        model_name="m", model_version="1", request_id="abc",
        outputs=[Tensor("PROBS", "FP32", (3, 5), probs, binary),
                 Tensor("TOP", "BYTES", (1, 2), labels, binary)],
    )
    assert (length is not None) == binary
    result = Client.parse_response_body(body, header_length=length)
    got = result.as_numpy("PROBS")
    assert got.dtype == np.float32 and got.shape == (3, 5)
    np.testing.assert_array_equal(got, probs)  # exact, JSON or binary
    top = result.as_numpy("TOP")
    assert top.shape == (1, 2)
    assert [e if isinstance(e, bytes) else e.encode() for e in top.ravel()] == labels
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == ("m", "1", "abc")


# -- content encodings --------------------------------------------------------------------
def test_gzip_and_deflate_bodies_are_inflated_within_the_limit() -> None:
    data = b"x" * 5000
    assert decode_content(gzip.compress(data), "gzip", limit=5000) == data
    assert decode_content(zlib.compress(data), "deflate", limit=5000) == data
    assert decode_content(data, None, limit=10) == data  # identity: the body limit applies
    with pytest.raises(PayloadTooLarge):
        decode_content(gzip.compress(data), "gzip", limit=4999)
    with pytest.raises(BadRequest, match="corrupt"):
        decode_content(b"not gzip at all", "gzip", limit=5000)
    with pytest.raises(BadRequest, match="truncated"):
        decode_content(gzip.compress(data)[:20], "gzip", limit=5000)
    with pytest.raises(UnsupportedMediaType):
        decode_content(data, "br", limit=5000)


def test_a_compression_bomb_stops_at_the_limit() -> None:
    bomb = gzip.compress(bytes(50 * 1024 * 1024))  # 50 MiB of zeros in ~50 KiB
    assert len(bomb) < 100_000
    with pytest.raises(PayloadTooLarge):
        decode_content(bomb, "gzip", limit=1024 * 1024)
