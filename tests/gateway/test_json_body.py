"""JSON `/classify` bodies (TF Serving / KServe v1 `instances` with base64 images): the
accepted forms, and each documented error for each way to get one wrong."""

from __future__ import annotations

import base64
import json

import pytest

from service.errors import (
    BadRequest,
    InvalidParameter,
    PayloadTooLarge,
    ServiceError,
    TooManyFiles,
)
from service.gateway.json_body import base64_body_limit, parse_json_body
from service.gateway.runtime import Upload


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def parse(document: object, max_files: int = 3, max_bytes: int = 100):  # type: ignore[no-untyped-def]
    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    return parse_json_body(body, max_files=max_files, max_bytes=max_bytes)


def test_both_instance_forms_filenames_and_top_k() -> None:
    parsed = parse({
        "instances": [
            {"image_bytes": {"b64": b64(b"first")}, "filename": "../../etc/cat\n.jpg"},
            {"b64": b64(b"second")},
            {"image_bytes": {"b64": b64(b"third")}, "filename": None},
        ],
        "top_k": 2,
    })
    assert parsed.uploads == [Upload(b"first", "cat.jpg"), Upload(b"second", None),
                              Upload(b"third", None)]
    assert parsed.top_k == 2
    assert parse({"instances": [{"b64": b64(b"x")}]}).top_k is None


def test_base64_may_be_wrapped_in_lines() -> None:
    wrapped = base64.encodebytes(b"y" * 100).decode()  # 76-character lines, like `base64`
    assert "\n" in wrapped
    assert parse({"instances": [{"b64": wrapped}]}, max_bytes=100).uploads[0].data == b"y" * 100


@pytest.mark.parametrize(
    ("document", "error", "message"),
    [
        (b"{not json", BadRequest, "not valid JSON"),
        (b"\xff\xfe\xfd", BadRequest, "not valid JSON"),
        (b"[" * 50_000 + b"]" * 50_000, BadRequest, "not valid JSON"),
        ({"instances": [{"b64": "abc"}]}, BadRequest, r"instances\[0\].b64 is not valid base64"),
        ({"instances": [{"b64": "ab!c"}]}, BadRequest, "not valid base64"),
        ({"instances": [{"b64": "é" * 4}]}, BadRequest, "not valid base64"),
        ([{"b64": "eA=="}], InvalidParameter, "must be a JSON object"),
        ("eA==", InvalidParameter, "must be a JSON object"),
        ({}, InvalidParameter, "'instances' must be a list"),
        ({"instances": {"b64": "eA=="}}, InvalidParameter, "'instances' must be a list"),
        ({"instances": []}, InvalidParameter, "'instances' is empty"),
        ({"instances": ["eA=="]}, InvalidParameter, r"instances\[0\] must be an object"),
        ({"instances": [{}]}, InvalidParameter, "has no image"),
        ({"instances": [{"image_bytes": "eA=="}]}, InvalidParameter, "image_bytes must be"),
        ({"instances": [{"image_bytes": {"b64": "eA==", "x": 1}}]}, InvalidParameter,
         "image_bytes must be"),
        ({"instances": [{"b64": 7}]}, InvalidParameter, "must be a string"),
        ({"instances": [{"b64": "eA==", "filename": 3}]}, InvalidParameter, "filename must be"),
        ({"instances": [{"b64": "eA==", "label": "x"}]}, InvalidParameter,
         r"instances\[0\] has unknown fields 'label'"),
        ({"instances": [{"b64": "eA=="}], "topk": 3}, InvalidParameter, "unknown fields 'topk'"),
        ({"instances": [{"b64": "eA=="}], "top_k": 0}, InvalidParameter, "top_k must be"),
        ({"instances": [{"b64": "eA=="}], "top_k": True}, InvalidParameter, "top_k must be"),
        ({"instances": [{"b64": "eA=="}], "top_k": 2.0}, InvalidParameter, "top_k must be"),
        ({"instances": [{"b64": "eA=="}], "top_k": "3"}, InvalidParameter, "top_k must be"),
        ({"instances": [{"b64": "eA=="}] * 4}, TooManyFiles, "4 instances; at most 3"),
        ({"instances": [{"b64": b64(b"z" * 60)}, {"b64": b64(b"z" * 41)}]}, PayloadTooLarge,
         r"exceed the limit of 100 bytes \(at instances\[1\]\)"),
    ],
)
def test_each_fault_gets_its_documented_error(
    document: object, error: type[ServiceError], message: str
) -> None:
    with pytest.raises(error, match=message) as caught:
        parse(document)
    assert type(caught.value) is error  # exactly: the class decides the status code


def test_the_body_limit_leaves_room_for_base64() -> None:
    limit = 10 * 1024 * 1024
    images = [b"\x00" * (limit // 16)] * 16  # exactly the image limit, in 16 instances
    body = json.dumps({"instances": [
        {"image_bytes": {"b64": b64(data)}, "filename": "\u00e9" * 255} for data in images
    ]}).encode()
    assert len(body) <= base64_body_limit(limit)
    assert len(parse_json_body(body, max_files=16, max_bytes=limit).uploads) == 16
