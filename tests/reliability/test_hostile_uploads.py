"""Hostile uploads against a real gateway process: each gets its documented 4xx within a
bounded time, the process's peak memory stays bounded, and a good request still works
right after."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.reliability.support import (
    MIB,
    RawResponse,
    animated_gif,
    gif_bomb,
    jpeg_with_metadata,
    multipart_body,
    peak_rss_mib,
    png_bomb,
    png_bytes,
    png_with_text,
    png_with_ztxt_bomb,
    raw_http,
    rss_mib,
)
from tests.support.gateway import GatewayServer

# Peak resident memory may grow by at most this much over the warmed-up process for any
# one hostile request (a 10 MiB body is held once or twice while it is read and parsed).
PEAK_GROWTH_MIB = 96.0


@pytest.fixture(scope="module")
def baseline(gateway: GatewayServer, http: httpx.Client) -> float:
    """Peak RSS after a few ordinary requests (allocators and thread pools warmed up)."""
    for _ in range(5):
        assert post(http, png_bytes()).status_code == 200
    assert gateway.process is not None
    return peak_rss_mib(gateway.process.pid)


def post(http: httpx.Client, data: bytes, ctype: str = "image/png") -> httpx.Response:
    return http.post("/classify", content=data, headers={"Content-Type": ctype})


def assert_bounded_and_serving(gateway: GatewayServer, http: httpx.Client, baseline: float) -> None:
    assert gateway.process is not None and gateway.process.poll() is None
    peak = peak_rss_mib(gateway.process.pid)
    assert peak < baseline + PEAK_GROWTH_MIB, f"peak RSS {peak:.0f} MiB, baseline {baseline:.0f}"
    good = post(http, png_bytes())
    assert good.status_code == 200, good.text


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


IMAGE_CASES: dict[str, tuple[Callable[[], bytes], str, set[int]]] = {
    # name: (payload, content type, acceptable statuses)
    "png_30k_x_30k": (lambda: png_bomb(30_000, 30_000), "image/png", {413}),
    "png_1M_x_1M": (lambda: png_bomb(1_000_000, 1_000_000), "image/png", {413}),
    "png_2^31_wide": (lambda: png_bomb(2**31 - 1, 1), "image/png", {400, 413}),
    "gif_30k_x_30k": (lambda: gif_bomb(30_000, 30_000), "image/gif", {413}),
    "gif_65535_x_65535": (lambda: gif_bomb(65_535, 65_535), "image/gif", {413}),
    "png_8MiB_text_chunk": (lambda: png_with_text(8 * MIB), "image/png", {200}),
    "png_ztxt_bomb_500MB": (lambda: png_with_ztxt_bomb(500_000_000), "image/png", {200, 400}),
    "jpeg_4MiB_icc_and_4MiB_app1": (
        lambda: jpeg_with_metadata(4 * MIB, 64), "image/jpeg", {200},
    ),
    "gif_3000_frames": (lambda: animated_gif(3000), "image/gif", {200}),
}


@pytest.mark.parametrize("case", sorted(IMAGE_CASES))
def test_hostile_images(
    case: str, gateway: GatewayServer, http: httpx.Client, baseline: float
) -> None:
    make, ctype, statuses = IMAGE_CASES[case]
    response = post(http, make(), ctype)
    assert response.status_code in statuses, response.text
    assert response.elapsed.total_seconds() < 5.0
    if response.status_code == 413:
        assert response.json()["error"]["code"] == "image_too_large"
    elif response.status_code == 400:
        assert response.json()["error"]["code"] == "undecodable_image"
    assert_bounded_and_serving(gateway, http, baseline)


@pytest.mark.parametrize("fraction", [0.9, 0.5, 0.1, 0.01])
def test_truncated_jpegs(
    fraction: float, photos: list[Path], gateway: GatewayServer, http: httpx.Client,
    baseline: float,
) -> None:
    for path in photos:
        if path.suffix.lower() != ".jpg":
            continue
        data = path.read_bytes()
        response = post(http, data[: int(len(data) * fraction)], "image/jpeg")
        assert_error(response, 400, "undecodable_image")
    assert_bounded_and_serving(gateway, http, baseline)


def _head(port: int, extra: str) -> bytes:
    return (
        f"POST /classify HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}\r\n"
    ).encode()


def _status_code(answer: RawResponse) -> str:
    import json

    return str(json.loads(answer.body)["error"]["code"])


def test_60mb_upload_with_content_length(
    gateway: GatewayServer, http: httpx.Client, baseline: float
) -> None:
    size = 60 * 1_000_000
    head = _head(gateway.port, f"Content-Type: image/jpeg\r\nContent-Length: {size}\r\n")
    answer = raw_http(gateway.port, head, (b"\xff" * MIB for _ in range(60)), deadline_s=20)
    assert answer.status == 413 and _status_code(answer) == "payload_too_large"
    assert answer.elapsed_s < 5.0
    assert answer.sent_bytes < 20 * MIB, "the 413 should come from the header, not the body"
    assert_bounded_and_serving(gateway, http, baseline)


def test_60mb_chunked_upload(gateway: GatewayServer, http: httpx.Client, baseline: float) -> None:
    head = _head(gateway.port, "Content-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n")
    chunk = f"{MIB:x}\r\n".encode() + b"\xff" * MIB + b"\r\n"
    answer = raw_http(gateway.port, head, (chunk for _ in range(60)), deadline_s=20)
    assert answer.status == 413 and _status_code(answer) == "payload_too_large"
    assert answer.elapsed_s < 5.0
    assert answer.sent_bytes < 30 * MIB, "the body should be cut off near the 10 MiB limit"
    assert_bounded_and_serving(gateway, http, baseline)


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [("file", 413, "too_many_files"), ("other", 400, "bad_request")],
)
def test_1000_part_multipart(
    name: str, status: int, code: str, gateway: GatewayServer, http: httpx.Client,
    baseline: float,
) -> None:
    image = png_bytes((8, 8))
    body = multipart_body([(name, image, "image/png")] * 1000)
    response = http.post(
        "/classify", content=body,
        headers={"Content-Type": "multipart/form-data; boundary=rel-boundary"},
    )
    assert_error(response, status, code)
    assert response.elapsed.total_seconds() < 5.0
    assert_bounded_and_serving(gateway, http, baseline)


def test_slow_drip_upload_gets_408_in_bounded_time(
    gateway: GatewayServer, http: httpx.Client, baseline: float
) -> None:
    """A body trickling in a few bytes per second is cut off at `body_timeout_s` (2 s
    here) with 408, instead of holding a connection and a task for as long as it likes."""
    head = _head(gateway.port, "Content-Type: image/png\r\nContent-Length: 100000\r\n")
    answer = raw_http(gateway.port, head, (b"\x89PN" for _ in range(12)), pause_s=0.5,
                      deadline_s=10)
    assert answer.status == 408, answer.head
    assert _status_code(answer) == "body_timeout"
    assert answer.elapsed_s < 4.0
    # Other clients were served all along.
    assert_bounded_and_serving(gateway, http, baseline)


def test_memory_after_everything(gateway: GatewayServer, baseline: float) -> None:
    assert gateway.process is not None
    assert rss_mib(gateway.process.pid) < baseline + PEAK_GROWTH_MIB
