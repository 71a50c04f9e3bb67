"""JSON bodies for `/classify`: base64 images in the convention of TF Serving and KServe
v1 clients.

    {"instances": [{"image_bytes": {"b64": "<base64>"}, "filename": "cat.jpg"}, ...],
     "top_k": 3}

An instance may also be `{"b64": "<base64>"}` itself (TF Serving's form for a model with
one input). `filename` (optional, string or null) is cleaned like a multipart file name;
`top_k` is optional and may come as the query parameter instead. Base64 is the standard
alphabet with padding; line breaks (as `base64` tools wrap) are ignored.

Status codes (the contract, also in docs/gateway.md):

- 400 `bad_request`: the body is not JSON (or not UTF-8), or an image is not base64;
- 422 `invalid_parameter`: JSON of the wrong shape or types (not an object, `instances`
  missing, not a list or empty, an instance not an object, an unknown field, `b64` or
  `filename` not a string, `top_k` not an integer >= 1);
- 413 `too_many_files`: more than `max_files` instances; 413 `payload_too_large`: the
  decoded images together over `max_upload_bytes` (the body itself may be up to
  `base64_body_limit(max_upload_bytes)`, for base64's overhead).

Synchronous CPU work: callers run it off the event loop.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from service.errors import BadRequest, InvalidParameter, PayloadTooLarge, TooManyFiles
from service.gateway.runtime import Upload
from service.gateway.uploads import clean_filename

# Base64 takes 4 bytes for every 3; the JSON around the images (keys, file names written
# as \u escapes) takes a few KiB at most.
_JSON_SLACK_BYTES = 64 * 1024
_TOP_FIELDS = frozenset({"instances", "top_k"})
_INSTANCE_FIELDS = frozenset({"image_bytes", "b64", "filename"})


def base64_body_limit(max_upload_bytes: int) -> int:
    """The largest body that can carry `max_upload_bytes` of images as base64 in JSON."""
    return -(-max_upload_bytes // 3) * 4 + _JSON_SLACK_BYTES


@dataclass(frozen=True)
class JsonClassifyBody:
    uploads: list[Upload]
    #: The body's `top_k`, None when it has none.
    top_k: int | None


def parse_json_body(body: bytes, *, max_files: int, max_bytes: int) -> JsonClassifyBody:
    """The images and `top_k` of a JSON `/classify` body, within the limits; raises the
    errors listed in the module docstring."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise BadRequest(f"the body is not valid JSON: {_short(exc)}") from None
    if not isinstance(document, dict):
        raise InvalidParameter(
            'the body must be a JSON object: {"instances": [{"image_bytes": {"b64": "..."}}]}'
        )
    _no_unknown_fields(document, _TOP_FIELDS, "the body")
    top_k = _top_k(document.get("top_k"))
    instances = document.get("instances")
    if not isinstance(instances, list):
        raise InvalidParameter("'instances' must be a list of images")
    if not instances:
        raise InvalidParameter("'instances' is empty: send at least one image")
    if len(instances) > max_files:
        raise TooManyFiles(f"{len(instances)} instances; at most {max_files} per request")
    uploads: list[Upload] = []
    total = 0
    for number, instance in enumerate(instances):
        upload = _instance(instance, number)
        total += len(upload.data)
        if total > max_bytes:
            raise PayloadTooLarge(
                f"the decoded images exceed the limit of {max_bytes} bytes "
                f"(at instances[{number}])"
            )
        uploads.append(upload)
    return JsonClassifyBody(uploads=uploads, top_k=top_k)


def _instance(instance: object, number: int) -> Upload:
    where = f"instances[{number}]"
    if not isinstance(instance, dict):
        raise InvalidParameter(f'{where} must be an object: {{"image_bytes": {{"b64": "..."}}}}')
    _no_unknown_fields(instance, _INSTANCE_FIELDS, where)
    if "image_bytes" in instance:
        wrapper = instance["image_bytes"]
        if not isinstance(wrapper, dict) or set(wrapper) != {"b64"}:
            raise InvalidParameter(f'{where}.image_bytes must be {{"b64": "<base64>"}}')
        encoded, field = wrapper["b64"], f"{where}.image_bytes.b64"
    elif "b64" in instance:
        encoded, field = instance["b64"], f"{where}.b64"
    else:
        raise InvalidParameter(f'{where} has no image: send {{"image_bytes": {{"b64": "..."}}}}')
    if not isinstance(encoded, str):
        raise InvalidParameter(f"{field} must be a string (the image in base64)")
    filename = instance.get("filename")
    if filename is not None and not isinstance(filename, str):
        raise InvalidParameter(f"{where}.filename must be a string or null")
    return Upload(_decode(encoded, field), clean_filename(filename))


def _decode(encoded: str, field: str) -> bytes:
    try:
        # Line breaks are what `base64` tools insert every 76 characters; nothing else
        # outside the alphabet is allowed.
        return base64.b64decode("".join(encoded.split()).encode("ascii"), validate=True)
    except (binascii.Error, ValueError):  # UnicodeEncodeError is a ValueError
        raise BadRequest(f"{field} is not valid base64") from None


def _top_k(raw: object) -> int | None:
    if raw is None:
        return None
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < 1:
        raise InvalidParameter(f"top_k must be an integer >= 1, got {_shown(raw)}")
    return raw


def _no_unknown_fields(document: dict[str, Any], known: frozenset[str], where: str) -> None:
    unknown = sorted(set(document) - known)
    if unknown:
        names = ", ".join(repr(name[:40]) for name in unknown[:5])
        raise InvalidParameter(
            f"{where} has unknown fields {names}; known: {', '.join(sorted(known))}"
        )


def _shown(value: object) -> str:
    return json.dumps(value)[:40] if not isinstance(value, dict | list) else type(value).__name__


def _short(exc: BaseException) -> str:
    return (str(exc).strip() or type(exc).__name__)[:200]
