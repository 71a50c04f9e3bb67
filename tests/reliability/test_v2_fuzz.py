"""Generated inference requests against a live gateway's `/v2/models/{name}/infer` (tiny
model): nearly-right tensors (names, datatypes, shapes, data and binary sizes drawn
around the valid ones), stray binary data, wrong `Inference-Header-Content-Length`. Every
answer is a 200 with the outputs asked for, or a documented 4xx in the protocol's
`{"error": "..."}` shape; never a 5xx."""

from __future__ import annotations

import json
import struct
from typing import Any

import httpx
import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.reliability.support import png_bytes
from tests.support.gateway import TINY_MODEL

PNG = png_bytes()
DOCUMENTED = {200, 400, 413}
INFER = f"/v2/models/{TINY_MODEL}/infer"

NAMES = st.sampled_from(["IMAGE", "IMAGE_BYTES", "PROBS", "", "image"]) | st.text(max_size=6)
DATATYPES = st.sampled_from(["UINT8", "BYTES", "FP32", "BOOL", "INT64", "FP16", "BF16", "u8"])
SHAPES = (
    st.sampled_from([[1, 224, 224, 3], [2, 224, 224, 3], [1], [2], [2, 1], [0], [17], [1, 2]])
    | st.lists(st.integers(min_value=-1, max_value=300), max_size=5)
)
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=12,
)


@st.composite
def tensor(draw: st.DrawFn) -> tuple[dict[str, Any], bytes]:
    """One `$request_input` and the binary data it brings (empty for JSON data)."""
    if draw(st.integers(0, 3)) == 0:
        return draw(valid_tensor())
    name, datatype, shape = draw(NAMES), draw(DATATYPES), draw(SHAPES)
    entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
    count = int(np.prod(shape)) if all(isinstance(d, int) and d >= 0 for d in shape) else 1
    how = draw(st.sampled_from(["binary", "json", "garbage"]))
    if how == "binary":
        if datatype == "BYTES":
            images = draw(st.lists(st.sampled_from([PNG, b"junk", b""]), max_size=3))
            data = b"".join(struct.pack("<I", len(i)) + i for i in images)
        else:
            size = min(count, 200_000)
            data = bytes(draw(st.sampled_from([size, max(size - 1, 0), size + 3, 0])))
        entry["parameters"] = {"binary_data_size": draw(
            st.sampled_from([len(data), len(data) + 1, max(len(data) - 1, 0)]))}
        return entry, data
    if how == "json":
        entry["data"] = draw(st.lists(st.integers(0, 255), max_size=8) | JSONISH)
    else:
        entry[draw(st.sampled_from(["data", "parameters"]))] = draw(JSONISH)
    return entry, b""


@st.composite
def valid_tensor(draw: st.DrawFn) -> tuple[dict[str, Any], bytes]:
    """A well-formed input (up to 17 images: one past CA_MAX_FILES)."""
    count = draw(st.integers(1, 17))
    if draw(st.booleans()):
        images = [draw(st.sampled_from([PNG, PNG, b"junk"])) for _ in range(count)]
        data = b"".join(struct.pack("<I", len(i)) + i for i in images)
        entry = {"name": "IMAGE_BYTES", "datatype": "BYTES", "shape": [count]}
    else:
        data = bytes(count * 224 * 224 * 3)
        entry = {"name": "IMAGE", "datatype": "UINT8", "shape": [count, 224, 224, 3]}
    entry["parameters"] = {"binary_data_size": len(data)}
    return entry, data


@st.composite
def request(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    if draw(st.integers(0, 3)) == 0:
        return draw(valid_request())
    inputs = draw(st.lists(tensor(), min_size=0, max_size=2))
    document: dict[str, Any] = {"inputs": [entry for entry, _ in inputs]}
    if draw(st.booleans()):
        document["outputs"] = draw(st.lists(st.fixed_dictionaries(
            {"name": NAMES},
            optional={"parameters": st.fixed_dictionaries({}, optional={
                "classification": st.integers(-2, 20) | JSONISH,
                "binary_data": st.booleans() | JSONISH})}),
            max_size=2) | JSONISH)
    if draw(st.booleans()):
        document["parameters"] = {"binary_data_output": draw(st.booleans() | JSONISH)}
    head = json.dumps(document).encode()
    binary = b"".join(data for _, data in inputs) + draw(st.sampled_from([b"", b"\0", b"tail"]))
    headers = {"Content-Type": "application/octet-stream"}
    if binary or draw(st.booleans()):
        delta = draw(st.sampled_from([0, 0, 0, 1, -1, 10**6]))
        headers["Inference-Header-Content-Length"] = str(len(head) + delta)
    return head + binary, headers


@st.composite
def valid_request(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    """A well-formed input; the outputs, parameters and id may still be wrong."""
    entry, data = draw(valid_tensor())
    document: dict[str, Any] = {"inputs": [entry]}
    if draw(st.booleans()):
        document["outputs"] = [{"name": "PROBS", "parameters": {
            "classification": draw(st.integers(0, 20) | JSONISH),
            "binary_data": draw(st.booleans() | JSONISH)}}]
    if draw(st.booleans()):
        document["parameters"] = {"binary_data_output": draw(st.booleans() | JSONISH)}
    if draw(st.booleans()):
        document["id"] = draw(st.text(max_size=8) | JSONISH)
    head = json.dumps(document).encode()
    return head + data, {"Inference-Header-Content-Length": str(len(head))}


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(sent=request())
def test_generated_inference_requests_get_only_documented_answers(
    http: httpx.Client, sent: tuple[bytes, dict[str, str]]
) -> None:
    body, headers = sent
    response = http.post(INFER, content=body, headers=headers)
    event(f"status {response.status_code}")  # shown by --hypothesis-show-statistics
    assert response.status_code in DOCUMENTED, (response.status_code, response.text)
    if response.status_code == 200:
        header = int(response.headers.get("Inference-Header-Content-Length",
                                          len(response.content)))
        answer = json.loads(response.content[:header])
        assert answer["model_name"] == TINY_MODEL and answer["outputs"], answer
    else:
        error = response.json()
        assert set(error) == {"error"} and isinstance(error["error"], str), error
