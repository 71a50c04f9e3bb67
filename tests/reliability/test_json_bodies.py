"""JSON bodies on `/classify` against a live gateway process (tiny model, default limits):
the limits on the body and on the decoded images, `top_k` in the query and the body, and
a property test over malformed JSON (random values, wrong nesting, huge numbers, bad
base64, unicode) that finds no 5xx and only the documented status and error codes."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from service.gateway.json_body import base64_body_limit
from tests.reliability.support import MIB, png_bytes

LIMIT = 10 * MIB  # the gateway fixture's CA_MAX_UPLOAD_BYTES (the default)
PNG = png_bytes()
B64_PNG = base64.b64encode(PNG).decode()

#: Status -> the error codes documented for JSON bodies (docs/gateway.md, Errors).
DOCUMENTED: dict[int, set[str]] = {
    200: set(),
    400: {"bad_request", "undecodable_image"},
    413: {"too_many_files", "payload_too_large", "image_too_large"},
    422: {"invalid_parameter"},
}


def post(http: httpx.Client, body: Any, query: str = "") -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.post(f"/classify{query}", content=content,
                     headers={"Content-Type": "application/json"})


def error_code(response: httpx.Response) -> str:
    return str(response.json()["error"]["code"])


# -- limits and top_k ---------------------------------------------------------------------
def test_instances_answer_in_order_with_cleaned_filenames(http: httpx.Client) -> None:
    response = post(http, {"instances": [
        {"image_bytes": {"b64": B64_PNG}, "filename": "C:\\photos\\a.png"},
        {"b64": B64_PNG},
    ], "top_k": 2})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["filename"] for r in results] == ["a.png", None]
    assert all(len(r["predictions"]) == 2 for r in results)


def test_top_k_from_the_query_or_the_body(http: httpx.Client) -> None:
    one = {"instances": [{"b64": B64_PNG}]}
    assert len(post(http, one, "?top_k=3").json()["results"][0]["predictions"]) == 3
    assert len(post(http, {**one, "top_k": 4}).json()["results"][0]["predictions"]) == 4
    assert post(http, {**one, "top_k": 4}, "?top_k=4").status_code == 200
    conflict = post(http, {**one, "top_k": 4}, "?top_k=3")
    assert conflict.status_code == 422 and error_code(conflict) == "invalid_parameter"
    assert "3 in the query and 4 in the body" in conflict.json()["error"]["message"]
    beyond = post(http, {**one, "top_k": 11})  # the tiny model has 10 classes
    assert beyond.status_code == 422 and "between 1 and 10" in beyond.text


def test_too_many_instances_and_empty_instances(http: httpx.Client) -> None:
    many = post(http, {"instances": [{"b64": B64_PNG}] * 17})  # CA_MAX_FILES is 16
    assert many.status_code == 413 and error_code(many) == "too_many_files"
    assert post(http, {"instances": [{"b64": B64_PNG}] * 16}).status_code == 200
    empty = post(http, {"instances": []})
    assert empty.status_code == 422 and error_code(empty) == "invalid_parameter"


def test_the_decoded_images_and_the_body_are_both_limited(http: httpx.Client) -> None:
    # Decoded images just over the limit, in a body just under the body limit.
    over = base64.b64encode(b"\0" * (LIMIT + 30_000)).decode()
    body = json.dumps({"instances": [{"b64": over}]}).encode()
    assert len(body) < base64_body_limit(LIMIT)
    decoded = post(http, body)
    assert decoded.status_code == 413 and error_code(decoded) == "payload_too_large"
    assert "decoded images exceed" in decoded.json()["error"]["message"]
    # A body over its own limit is refused before it is parsed.
    padded = body[:-1] + b" " * (base64_body_limit(LIMIT) - len(body) + 1) + b"}"
    too_big = post(http, padded)
    assert too_big.status_code == 413 and error_code(too_big) == "payload_too_large"
    assert "body is" in too_big.json()["error"]["message"]


def test_an_undecodable_image_is_named(http: httpx.Client) -> None:
    response = post(http, {"instances": [
        {"b64": B64_PNG}, {"b64": base64.b64encode(b"junk").decode(), "filename": "x.jpg"}]})
    assert response.status_code == 400 and error_code(response) == "undecodable_image"
    assert response.json()["error"]["message"].startswith("file 2 (x.jpg): ")


# -- malformed JSON, generated ------------------------------------------------------------
HUGE = st.integers(min_value=-(10**40), max_value=10**40) | st.sampled_from(
    [2**63, -(2**63) - 1, 10**300, 0, -1, 1])
SCALARS = (st.none() | st.booleans() | HUGE | st.floats(allow_nan=True)
           | st.text(max_size=12) | st.sampled_from(["", "=", "é", "\u202e", "\x00", "\ud800"]))
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=6) | st.sampled_from(
        ["instances", "top_k", "image_bytes", "b64", "filename"]), children, max_size=4),
    max_leaves=20,
)
BAD_BASE64 = (
    st.text(alphabet="ABCDabcd0123+/=-_ \n!é\u2028", max_size=40)  # mostly invalid
    | st.sampled_from(["aGVsbG8", "aGVsbG8=é", "\u00ff" * 4, "aGVs bG8=\n", "\ud800AAA"])
)
BASE64ISH = (
    st.just(B64_PNG)
    | st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode())  # valid, not images
    | BAD_BASE64
    | JSON_VALUES
)
FILENAMES = st.none() | st.text(max_size=20) | JSON_VALUES
INSTANCE = (
    st.fixed_dictionaries({"image_bytes": st.fixed_dictionaries({"b64": BASE64ISH})},
                          optional={"filename": FILENAMES})
    | st.fixed_dictionaries({"b64": BASE64ISH}, optional={"filename": FILENAMES})
    | st.fixed_dictionaries({}, optional={"image_bytes": JSON_VALUES, "b64": JSON_VALUES,
                                          "filename": FILENAMES, "extra": JSON_VALUES})
    | JSON_VALUES
)
VALID_INSTANCE = (
    st.just({"b64": B64_PNG})
    | st.builds(lambda name: {"image_bytes": {"b64": B64_PNG}, "filename": name},
                st.none() | st.text(max_size=20))
)


@st.composite
def near_valid(draw: st.DrawFn) -> dict[str, Any]:
    """Good instances with at most one bad one among them, and any `top_k`."""
    instances = draw(st.lists(VALID_INSTANCE, min_size=1, max_size=4))
    if draw(st.booleans()):
        bad = (st.builds(lambda b: {"b64": b}, BAD_BASE64)
               | st.builds(lambda b: {"image_bytes": {"b64": b}}, BASE64ISH) | INSTANCE)
        instances.insert(draw(st.integers(0, len(instances))), draw(bad))
    body: dict[str, Any] = {"instances": instances}
    if draw(st.booleans()):
        body["top_k"] = draw(st.integers(1, 10) | HUGE | JSON_VALUES)
    return body


BODIES = (
    near_valid()
    | near_valid()
    | st.fixed_dictionaries(
        {"instances": st.lists(INSTANCE, max_size=18) | JSON_VALUES},
        optional={"top_k": HUGE | JSON_VALUES},
    )
    | JSON_VALUES
)


def _encode(document: object) -> bytes:
    return json.dumps(document, ensure_ascii=False).encode("utf-8", "surrogatepass")


@settings(max_examples=250, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(document=BODIES,
       cut=st.sampled_from([None, None, None]) | st.integers(min_value=0, max_value=200),
       query=st.sampled_from(["", "", "", "?top_k=2", "?top_k=0", "?top_k=99999999999999999999"]))
def test_malformed_json_gets_only_documented_answers(
    http: httpx.Client, document: object, cut: int | None, query: str
) -> None:
    body = _encode(document)
    if cut is not None:
        body = body[:cut]  # truncated JSON (and, past a multi-byte character, bad UTF-8)
    response = post(http, body, query)
    event(f"status {response.status_code}")  # shown by --hypothesis-show-statistics
    assert response.status_code in DOCUMENTED, (response.status_code, response.text, body[:300])
    if response.status_code == 200:
        results = response.json()["results"]
        assert isinstance(document, dict) and len(results) == len(document["instances"])
    else:
        assert error_code(response) in DOCUMENTED[response.status_code], response.text
