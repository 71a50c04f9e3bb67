"""Multipart parsing of hostile file names: what is echoed is a plain base name."""

from __future__ import annotations

import pytest

from service.errors import BadRequest
from service.gateway.uploads import MAX_FILENAME_CHARS, clean_filename, parse_multipart


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("cat.jpg", "cat.jpg"),
        ("../../etc/passwd", "passwd"),
        ("/abs/path/to/x.png", "x.png"),
        ("C:\\x\\y.jpg", "y.jpg"),
        ("mixed/dirs\\and/..\\z.gif", "z.gif"),
        ("a\x00b.jpg", "ab.jpg"),
        ("evil\r\nX-Injected: 1.jpg", "evilX-Injected: 1.jpg"),
        ("\x1b[31mred.jpg", "[31mred.jpg"),
        ("tab\there\x7f\x85.jpg", "tabhere.jpg"),
        ("line\u2028para\u2029.jpg", "linepara.jpg"),
        ("x\u202egpj.exe", "xgpj.exe"),  # a right-to-left override would show "exe.jpg"
        ("<img src=x onerror=alert(1)>.jpg", "<img src=x onerror=alert(1)>.jpg"),
        ("café 猫🐈 'quoted' \"double\".jpg", "café 猫🐈 'quoted' \"double\".jpg"),
        ("", None),
        ("dir/", None),
        ("..", None),
        ("../..", None),
        (".\x00.", None),
        ("\x00\r\n", None),
        (None, None),
    ],
)
def test_clean_filename(raw: str | None, clean: str | None) -> None:
    assert clean_filename(raw) == clean


def test_long_names_are_capped() -> None:
    name = clean_filename("d/" + "é" * 10_000 + ".jpg")
    assert name is not None and len(name) == MAX_FILENAME_CHARS and set(name) == {"é"}


def multipart(filename: bytes) -> bytes:
    return (
        b'--bb\r\nContent-Disposition: form-data; name="file"; filename="' + filename
        + b'"\r\nContent-Type: image/png\r\n\r\nDATA\r\n--bb--\r\n'
    )


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        (b"a\x00b.jpg", "ab.jpg"),
        (b"a\nb.jpg", "ab.jpg"),  # a bare LF stays inside the header line
        (b"../../etc/passwd", "passwd"),
        (b"C:\\x\\y.jpg", "y.jpg"),
        ("\x1b[2J\u202e.jpg".encode(), "[2J.jpg"),
        (b"x" * 4000, "x" * MAX_FILENAME_CHARS),
        (b"..", None),
    ],
)
def test_parsed_parts_carry_clean_names(raw: bytes, clean: str | None) -> None:
    [upload] = parse_multipart(multipart(raw), "multipart/form-data; boundary=bb", max_files=1)
    assert upload.filename == clean and upload.data == b"DATA"


def test_a_name_longer_than_a_header_line_is_a_bad_request() -> None:
    with pytest.raises(BadRequest) as info:
        parse_multipart(multipart(b"a" * 10_000), "multipart/form-data; boundary=bb", max_files=1)
    assert "aaaa" not in info.value.message
