"""Hostile multipart file names against a real gateway process: the answer echoes each as
a plain base name (no directories, no control characters, at most 255 characters), HTML
stays text inside the JSON, and nothing of the raw name reaches an error message."""

from __future__ import annotations

import httpx

from tests.reliability.support import png_bytes

BOUNDARY = "hostile-names"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def body(parts: list[tuple[bytes, bytes]]) -> bytes:
    """`(raw filename bytes, data)` parts named `file`, the names sent byte for byte."""
    out = b""
    for filename, data in parts:
        out += (
            f"--{BOUNDARY}\r\n".encode()
            + b'Content-Disposition: form-data; name="file"; filename="' + filename + b'"\r\n'
            + b"Content-Type: image/png\r\n\r\n" + data + b"\r\n"
        )
    return out + f"--{BOUNDARY}--\r\n".encode()


HTML = "<img src=x onerror=alert(1)>.jpg"
# raw name as sent -> the name the answer must carry
CASES: list[tuple[bytes, str | None]] = [
    (b"nul\x00inside.png", "nulinside.png"),
    (b"bare\nline\nfeeds.png", "barelinefeeds.png"),
    (b"../../etc/passwd", "passwd"),
    (b"C:\\x\\y.jpg", "y.jpg"),
    (HTML.encode(), HTML),
    ("\x1b[31m\u202eunicode 猫🐈 café.png".encode(), "[31municode 猫🐈 café.png"),
    (b"w" * 4000 + b".png", "w" * 255),
    (b"../", None),
]


def test_hostile_names_are_echoed_as_clean_base_names(http: httpx.Client) -> None:
    parts = [(raw, png_bytes()) for raw, _ in CASES]
    response = http.post("/classify", content=body(parts), headers={"Content-Type": MULTIPART})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    names = [result["filename"] for result in response.json()["results"]]
    assert names == [clean for _, clean in CASES]
    # The HTML name is text in a JSON string, not dropped or mangled.
    assert '"filename":"<img src=x onerror=alert(1)>.jpg"' in response.text
    for raw in (b"\x00", b"\x1b", b"\n", b"etc/", b"\\x\\", "\u202e".encode()):
        assert raw not in response.content


def test_error_messages_name_files_by_their_clean_names(http: httpx.Client) -> None:
    parts = [(b"ok.png", png_bytes()), (b"../../secret/\x00bad\x1b.png", b"not an image")]
    response = http.post("/classify", content=body(parts), headers={"Content-Type": MULTIPART})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "undecodable_image"
    assert error["message"].startswith("file 2 (bad.png): ")
    assert "secret" not in error["message"] and "\x00" not in error["message"]


def test_a_10000_character_name_is_refused_without_echo(http: httpx.Client) -> None:
    parts = [(b"n" * 10_000 + b".png", png_bytes())]
    response = http.post("/classify", content=body(parts), headers={"Content-Type": MULTIPART})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "bad_request" and "nnnn" not in error["message"]
    assert len(response.content) < 500
    good = http.post("/classify", content=png_bytes(), headers={"Content-Type": "image/png"})
    assert good.status_code == 200
