"""Reading an Open Inference Protocol inference request: the JSON object and, after it,
the binary data of the inputs that declare `binary_data_size` (the wire format:
`codec.py`).

Every input's data is checked against its shape and datatype, every parameter against
its type; whatever a client gets wrong raises `BadRequest` naming the tensor and the
fault, and nothing a client sends raises anything else. Synchronous CPU work, free of
any web framework: callers run it off the event loop.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.errors import BadRequest
from service.gateway.v2.codec import (
    BYTES,
    HEADER_LENGTH,
    NUMERIC,
    InferRequest,
    RequestedOutput,
    Tensor,
)

_MAX_DIMS = 32  # numpy's own limit; no model here has more than 4
_MAX_NESTING = 64  # nested JSON tensor data deeper than this is refused, not recursed into


def parse_request(body: bytes, json_length: int | None = None) -> InferRequest:
    """Read an inference request: the JSON object (the first `json_length` bytes, or the
    whole body) and, after it, the binary data of the inputs that declare
    `binary_data_size`. Every input's data is checked against its shape and datatype."""
    head = body if json_length is None else body[:json_length]
    binary = memoryview(body)[len(head):]
    document = _loads(head)
    if not isinstance(document, dict):
        raise BadRequest("the inference request must be a JSON object")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("'id' must be a string")
    parameters = _object(document.get("parameters"), "the request's 'parameters'")
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest("'inputs' must be a non-empty list of tensors")
    inputs: list[Tensor] = []
    offset = 0
    for number, raw in enumerate(raw_inputs):
        tensor, used = _input(raw, number, binary[offset:])
        inputs.append(tensor)
        offset += used
    if offset != len(binary):
        raise BadRequest(
            f"{len(binary) - offset} bytes follow the last input's binary data "
            f"(the JSON is {len(head)} bytes: check {HEADER_LENGTH} and binary_data_size)"
        )
    names = [tensor.name for tensor in inputs]
    if len(set(names)) != len(names):
        raise BadRequest(f"an input is listed twice: {names}")
    return InferRequest(
        id=request_id,
        inputs=inputs,
        outputs=_outputs(document.get("outputs")),
        binary_output=_flag(parameters.get("binary_data_output"), "binary_data_output"),
    )


def _loads(head: bytes) -> Any:
    try:
        return json.loads(head)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise BadRequest(f"the inference request is not valid JSON: {_short(exc)}") from None


def _input(raw: object, number: int, binary: memoryview) -> tuple[Tensor, int]:
    """One `$request_input`, and how many bytes of `binary` it took."""
    where = f"input {number}"
    if not isinstance(raw, dict):
        raise BadRequest(f"{where} must be a JSON object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest(f"{where} needs a 'name' (a string)")
    where = f"input {name[:64]!r}"
    datatype = raw.get("datatype")
    if datatype != BYTES and datatype not in NUMERIC:
        raise BadRequest(f"{where} has datatype {str(datatype)[:20]!r}; supported: "
                         f"{', '.join([*NUMERIC, BYTES])}")
    shape = _shape(raw.get("shape"), where)
    parameters = _object(raw.get("parameters"), f"{where}'s 'parameters'")
    size = parameters.get("binary_data_size")
    if size is None:
        if "data" not in raw:
            raise BadRequest(f"{where} has neither 'data' nor a binary_data_size parameter")
        data = _json_data(raw["data"], datatype, shape, where)
        return Tensor(name, datatype, shape, data, binary=False), 0
    if "data" in raw:
        raise BadRequest(f"{where} has both 'data' and a binary_data_size parameter")
    size = _count(size, f"{where}'s binary_data_size")
    if size > len(binary):
        raise BadRequest(f"{where} declares {size} bytes of binary data; "
                         f"only {len(binary)} follow the JSON")
    data = _binary_data(binary[:size], datatype, shape, where)
    return Tensor(name, datatype, shape, data, binary=True), size


def _shape(raw: object, where: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or len(raw) > _MAX_DIMS:
        raise BadRequest(f"{where} needs a 'shape': a list of at most {_MAX_DIMS} sizes")
    return tuple(_count(dim, f"{where}'s shape") for dim in raw)


def _binary_data(
    data: memoryview, datatype: str, shape: tuple[int, ...], where: str
) -> NDArray[Any] | list[bytes]:
    count = math.prod(shape)
    if datatype == BYTES:
        return _bytes_elements(data, count, shape, where)
    dtype = NUMERIC[datatype]
    expected = count * dtype.itemsize
    if len(data) != expected:
        raise BadRequest(
            f"{where} has {len(data)} bytes of binary data; shape {list(shape)} of "
            f"{datatype} needs {expected}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _bytes_elements(
    data: memoryview, count: int, shape: tuple[int, ...], where: str
) -> list[bytes]:
    if count > len(data) // 4:  # every element takes at least its 4-byte length
        raise BadRequest(f"{where}: {len(data)} bytes cannot hold the {count} elements "
                         f"of shape {list(shape)}")
    elements: list[bytes] = []
    offset = 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise BadRequest(f"{where}: element {len(elements)} has a truncated length")
        length = int.from_bytes(data[offset:offset + 4], "little")
        start, offset = offset + 4, offset + 4 + length
        if offset > len(data):
            raise BadRequest(f"{where}: element {len(elements)} declares {length} bytes; "
                             f"{len(data) - start} are left")
        elements.append(bytes(data[start:offset]))
    if len(elements) != count:
        raise BadRequest(f"{where} has {len(elements)} BYTES elements; shape {list(shape)} "
                         f"needs {count}")
    return elements


def _json_data(
    raw: object, datatype: str, shape: tuple[int, ...], where: str
) -> NDArray[Any] | list[bytes]:
    """JSON tensor data, flat or nested, row-major."""
    if not isinstance(raw, list):
        raise BadRequest(f"{where}: 'data' must be a list")
    count = math.prod(shape)
    if datatype == BYTES:
        elements = [_text_element(value, where) for value in _flatten(raw, where)]
        if len(elements) != count:
            raise BadRequest(f"{where} has {len(elements)} elements; shape {list(shape)} "
                             f"needs {count}")
        return elements
    dtype = NUMERIC[datatype]
    try:
        values = np.array(raw)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise BadRequest(f"{where}: 'data' is not a regular array of numbers") from None
    if values.size != count:
        raise BadRequest(f"{where} has {values.size} values; shape {list(shape)} needs {count}")
    _check_values(values, dtype, datatype, where)
    with np.errstate(all="ignore"):  # FP16 overflow becomes inf, as a cast would make it
        return values.astype(dtype).reshape(shape)


def _check_values(values: NDArray[Any], dtype: np.dtype[Any], datatype: str, where: str) -> None:
    kind = values.dtype.kind
    if values.size == 0:
        return
    if dtype.kind == "b":
        if kind != "b":
            raise BadRequest(f"{where}: BOOL data must be true or false")
    elif dtype.kind in "iu":
        if kind not in "iu":
            raise BadRequest(f"{where}: {datatype} data must be integers")
        info = np.iinfo(dtype)
        if values.min() < info.min or values.max() > info.max:
            raise BadRequest(f"{where}: a value is outside {datatype}'s range "
                             f"{info.min}..{info.max}")
    elif kind not in "iuf":
        raise BadRequest(f"{where}: {datatype} data must be numbers")


def _flatten(raw: list[Any], where: str) -> list[Any]:
    """Nested lists in row-major order, without recursion (depth capped)."""
    flat: list[Any] = []
    stack: list[tuple[list[Any], int]] = [(raw, 0)]
    while stack:
        items, index = stack.pop()
        while index < len(items):
            item = items[index]
            index += 1
            if isinstance(item, list):
                if len(stack) + 1 >= _MAX_NESTING:
                    raise BadRequest(f"{where}: 'data' is nested too deeply")
                stack.append((items, index))
                items, index = item, 0
            else:
                flat.append(item)
    return flat


def _text_element(value: object, where: str) -> bytes:
    if not isinstance(value, str):
        raise BadRequest(f"{where}: BYTES elements in JSON must be strings")
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a "\ud800" escape
        raise BadRequest(f"{where}: an element is not valid Unicode text") from None


def _outputs(raw: object) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise BadRequest("'outputs' must be a list")
    if not raw:  # as Triton does: an empty list asks for every output
        return None
    outputs = []
    for number, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadRequest(f"output {number} must be an object with a 'name'")
        name = item["name"]
        parameters = _object(item.get("parameters"), f"output {name[:64]!r}'s 'parameters'")
        binary = parameters.get("binary_data")
        outputs.append(RequestedOutput(
            name=name,
            binary=None if binary is None else _flag(binary, "binary_data"),
            classification=_count(parameters.get("classification", 0), "classification"),
        ))
    names = [output.name for output in outputs]
    if len(set(names)) != len(names):
        raise BadRequest(f"an output is requested twice: {names}")
    return outputs


def _object(raw: object, what: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return raw


def _count(raw: object, what: str) -> int:
    # JSON true/false are Python bools, which are ints: refuse them explicitly.
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < 0:
        raise BadRequest(f"{what} must be a non-negative integer, got {str(raw)[:40]}")
    return raw


def _flag(raw: object, what: str) -> bool:
    if raw is None:
        return False
    if not isinstance(raw, bool):
        raise BadRequest(f"{what} must be true or false")
    return raw


def _short(exc: BaseException) -> str:
    return (str(exc).strip() or type(exc).__name__)[:200]
