"""Client behaviour against a scripted real HTTP server: retries, errors, uploads, keys."""

from __future__ import annotations

import io
import socket
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from PIL import Image

from clients import (
    NO_RETRY,
    APIError,
    AsyncCAServeClient,
    CAServeClient,
    RequestTimedOut,
    RetryPolicy,
    ServerUnreachable,
)
from clients.inputs import sniff_content_type, to_upload
from clients.retry import parse_retry_after
from tests.clients.scripted_server import Reply, ScriptedServer, classify_answer

FAST = RetryPolicy(max_retries=3, backoff_base_s=0.01, backoff_max_s=0.05)


def _error(status: int, code: str, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, {"error": {"code": code, "message": f"{code} happened"}}, headers or {})


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 30, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_503_with_retry_after_is_retried_after_the_wait() -> None:
    replies = [_error(503, "overloaded", {"Retry-After": "1"})]
    with ScriptedServer(replies) as server, CAServeClient(server.url, retry=FAST) as client:
        result = client.classify(_jpeg())
    assert result.top.label == "tabby, tabby cat"
    assert [seen.method for seen in server.seen] == ["POST", "POST"]
    assert server.seen[1].at - server.seen[0].at >= 1.0  # Retry-After is a floor
    ids = {seen.headers["X-Request-ID"] for seen in server.seen}
    assert len(ids) == 1  # one logical request, one id across attempts


def test_503_retries_are_bounded_then_raise_the_last_error() -> None:
    with (
        ScriptedServer(default=_error(503, "overloaded", {"Retry-After": "0"})) as server,
        CAServeClient(server.url, retry=FAST) as client,
        pytest.raises(APIError) as info,
    ):
        client.classify(_jpeg())
    assert len(server.seen) == FAST.max_retries + 1
    assert (info.value.status, info.value.code) == (503, "overloaded")
    assert info.value.retry_after_s == 0.0


@pytest.mark.parametrize(("status", "code"), [(400, "invalid_image"), (401, "unauthorized"),
                                              (413, "too_large"), (415, "unsupported_media_type"),
                                              (422, "invalid_parameter")])
def test_4xx_is_never_retried(status: int, code: str) -> None:
    with (
        ScriptedServer([_error(status, code)]) as server,
        CAServeClient(server.url, retry=FAST) as client,
        pytest.raises(APIError) as info,
    ):
        client.classify(_jpeg())
    assert len(server.seen) == 1
    assert (info.value.status, info.value.code) == (status, code)
    assert info.value.message == f"{code} happened"


def test_retry_after_beyond_the_policy_is_not_waited_out() -> None:
    replies = [_error(503, "overloaded", {"Retry-After": "3600"})]
    with (
        ScriptedServer(replies) as server,
        CAServeClient(server.url, retry=FAST) as client,
        pytest.raises(APIError) as info,
    ):
        client.classify(_jpeg())
    assert len(server.seen) == 1
    assert info.value.retry_after_s == 3600.0


def test_non_json_error_body_still_gives_a_typed_error() -> None:
    replies = [Reply(502, b"<html>bad gateway</html>")]
    with (
        ScriptedServer(replies) as server,
        CAServeClient(server.url, retry=FAST) as client,
        pytest.raises(APIError) as info,
    ):
        client.classify(_jpeg())
    assert (info.value.status, info.value.code) == (502, "http_502")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_connection_refused_is_retried_then_reported() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    with CAServeClient(url, retry=FAST) as client, pytest.raises(ServerUnreachable) as info:
        client.classify(_jpeg())
    assert url in str(info.value)
    with CAServeClient(url) as client:
        assert client.ready() is False


def test_timeout_raises_and_is_not_retried() -> None:
    with (
        ScriptedServer(default=Reply(body=classify_answer(), delay_s=1.0)) as server,
        CAServeClient(server.url, timeout_s=0.2, retry=FAST) as client,
        pytest.raises(RequestTimedOut),
    ):
        client.classify(_jpeg())
    assert len(server.seen) == 1


def test_single_image_is_a_raw_body_and_a_list_is_multipart(tmp_path: Path) -> None:
    png_named_jpg = tmp_path / "really-a-png.jpg"
    Image.new("RGB", (8, 8)).save(png_named_jpg, format="PNG")
    replies = [Reply(body=classify_answer(1)), Reply(body=classify_answer(3))]
    with ScriptedServer(replies) as server, CAServeClient(server.url, api_key="k3y") as client:
        one = client.classify(png_named_jpg, top_k=2)
        many = client.classify([png_named_jpg, _jpeg(), Image.new("L", (9, 9))])
    assert one.model == "ca_mobilenetv2_onnx" and one.model_version == "1"
    assert len(many) == 3 and all(r.top.index == 281 for r in many)
    first, second = server.seen
    assert first.path == "/classify?top_k=2"
    assert first.headers["Content-Type"] == "image/png"  # sniffed, not from the extension
    assert first.body == png_named_jpg.read_bytes()
    assert first.headers["Authorization"] == "Bearer k3y"
    assert second.headers["Content-Type"].startswith("multipart/form-data")
    assert second.body.count(b'name="file"') == 3
    assert b'filename="really-a-png.jpg"' in second.body


def test_result_count_mismatch_is_loud() -> None:
    with (
        ScriptedServer([Reply(body=classify_answer(2))]) as server,
        CAServeClient(server.url, retry=NO_RETRY) as client,
        pytest.raises(APIError) as info,
    ):
        client.classify(_jpeg())
    assert info.value.code == "bad_response"


async def test_async_client_retries_503_then_succeeds() -> None:
    replies = [_error(503, "overloaded", {"Retry-After": "0"}), _error(503, "overloaded"),
               Reply(body=classify_answer(2))]
    with ScriptedServer(replies) as server:
        async with AsyncCAServeClient(server.url, retry=FAST, api_key="k") as client:
            results = await client.classify([_jpeg(), _jpeg()])
            ready = await client.ready()
    assert [r.top.score for r in results] == [0.6, 0.6]
    assert ready is True
    assert [seen.method for seen in server.seen] == ["POST", "POST", "POST", "GET"]


async def test_async_client_never_retries_400() -> None:
    with ScriptedServer([_error(400, "invalid_image")]) as server:
        async with AsyncCAServeClient(server.url, retry=FAST) as client:
            with pytest.raises(APIError) as info:
                await client.classify(b"not an image")
    assert info.value.status == 400 and len(server.seen) == 1
    assert server.seen[0].headers["Content-Type"] == "application/octet-stream"


def test_backoff_grows_and_stays_within_bounds() -> None:
    policy = RetryPolicy(backoff_base_s=0.1, backoff_max_s=0.4)
    for attempt, ceiling in enumerate([0.1, 0.2, 0.4, 0.4]):
        delays = [policy.delay_s(attempt) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jittered
    assert all(2.0 <= policy.delay_s(0, 2.0) <= 2.2 for _ in range(100))


def test_parse_retry_after() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=5), usegmt=True), now) == 5.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("-3") == 0.0


def test_content_type_sniffing() -> None:
    assert sniff_content_type(_jpeg()) == "image/jpeg"
    assert sniff_content_type(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert sniff_content_type(b"GIF89a...") == "image/gif"
    assert sniff_content_type(b"hello") is None
    cmyk = to_upload(Image.new("CMYK", (4, 4)))
    assert cmyk.content_type == "image/png" and Image.open(io.BytesIO(cmyk.data)).mode == "RGB"
    with pytest.raises(TypeError):
        to_upload(42)  # type: ignore[arg-type]
