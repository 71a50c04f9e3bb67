"""Open Inference Protocol tensors on the wire: the JSON inference request and response,
and Triton's binary tensor data extension.

With the extension, a body is the JSON object followed by raw tensor bytes; the
`Inference-Header-Content-Length` header gives the JSON's length, and each binary tensor
carries `parameters.binary_data_size`, its data following the JSON in the order the
tensors are listed. Binary data is little-endian and row-major; a BYTES element is a
4-byte little-endian length and then that many bytes. An output is answered as binary
when its `binary_data` parameter is true, or, without one, when the request's
`binary_data_output` parameter is.

This module holds the tensors, the headers and content codings, and writes responses;
`parse.py` reads requests. Both know nothing of the model or of HTTP frameworks;
synchronous CPU work, so callers run it off the event loop. An unsupported
`Content-Encoding` raises `UnsupportedMediaType` (415), a body that inflates past its
limit `PayloadTooLarge` (413), anything else a client can get wrong `BadRequest` (400).
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

HEADER_LENGTH = "Inference-Header-Content-Length"

# The protocol's datatypes that numpy holds natively, little-endian as on the wire. BF16
# has no numpy type and is refused as unsupported; BYTES is a list of `bytes`.
NUMERIC: dict[str, np.dtype[Any]] = {
    name: np.dtype(code).newbyteorder("<")
    for name, code in (
        ("BOOL", "?"), ("UINT8", "u1"), ("UINT16", "u2"), ("UINT32", "u4"), ("UINT64", "u8"),
        ("INT8", "i1"), ("INT16", "i2"), ("INT32", "i4"), ("INT64", "i8"),
        ("FP16", "f2"), ("FP32", "f4"), ("FP64", "f8"),
    )
}
BYTES = "BYTES"


@dataclass(frozen=True)
class Tensor:
    """One named tensor. `data` is a numpy array shaped `shape` for numeric datatypes and
    the row-major list of elements for BYTES. `binary` says whether it travelled (or is
    to travel) as binary data rather than JSON; JSON BYTES elements are UTF-8 text."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: NDArray[Any] | list[bytes]
    binary: bool = False


@dataclass(frozen=True)
class RequestedOutput:
    """An entry of the request's `outputs`. `binary` is None when the output does not say
    (the request's `binary_data_output` decides); `classification` 0 asks for the tensor
    itself, k > 0 for Triton's classification extension's top k."""

    name: str
    binary: bool | None = None
    classification: int = 0


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: list[Tensor]
    #: None when the request lists no outputs (every output, default settings).
    outputs: list[RequestedOutput] | None
    #: The request's `binary_data_output` parameter.
    binary_output: bool = False


def header_length(value: str | None, body_size: int) -> int | None:
    """The `Inference-Header-Content-Length` header as a length within the body."""
    if value is None:
        return None
    try:
        length = int(value.strip())
    except ValueError:
        raise BadRequest(f"{HEADER_LENGTH} is not a number: {value[:40]!r}") from None
    if not 0 <= length <= body_size:
        raise BadRequest(f"{HEADER_LENGTH} is {length}; the body has {body_size} bytes")
    return length


def decode_content(body: bytes, encoding: str | None, *, limit: int) -> bytes:
    """The body with its `Content-Encoding` (`gzip`, `deflate` or `identity`) undone,
    inflating at most `limit` bytes (`PayloadTooLarge` past it)."""
    coding = (encoding or "identity").strip().lower()
    if coding == "identity":
        return body
    if coding not in ("gzip", "x-gzip", "deflate"):
        raise UnsupportedMediaType(
            f"Content-Encoding {coding[:40]!r} is not supported: send gzip, deflate or none"
        )
    inflater = zlib.decompressobj(wbits=47)  # 32 + 15: a gzip or a zlib header, detected
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequest(f"the {coding} body is corrupt: {exc}") from None
    if len(data) > limit:
        raise PayloadTooLarge(f"the {coding} body inflates past the limit of {limit} bytes")
    if not inflater.eof:
        raise BadRequest(f"the {coding} body is truncated")
    return data


def encode_response(
    *, model_name: str, model_version: str, request_id: str | None, outputs: list[Tensor]
) -> tuple[bytes, int | None]:
    """The response body, and the length of its JSON part when any output is binary
    (send it as `Inference-Header-Content-Length`; otherwise the body is all JSON)."""
    document: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        document["id"] = request_id
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for tensor in outputs:
        entry: dict[str, Any] = {
            "name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape),
        }
        if tensor.binary:
            blob = _to_binary(tensor)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _to_json(tensor)
        entries.append(entry)
    document["outputs"] = entries
    head = json.dumps(document, separators=(",", ":")).encode("utf-8")
    if not blobs:
        return head, None
    return b"".join([head, *blobs]), len(head)


def _to_binary(tensor: Tensor) -> bytes:
    if isinstance(tensor.data, list):
        return b"".join(len(element).to_bytes(4, "little") + element for element in tensor.data)
    return np.ascontiguousarray(tensor.data, dtype=NUMERIC[tensor.datatype]).tobytes()


def _to_json(tensor: Tensor) -> list[Any]:
    if isinstance(tensor.data, list):
        return [element.decode("utf-8") for element in tensor.data]
    flat: list[Any] = tensor.data.reshape(-1).tolist()
    return flat
