"""Preprocessing: every mode to RGB, EXIF, draft decoding, limits, broken input."""

from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from service.errors import ImageTooLarge, UndecodableImage
from service.preprocess import preprocess, to_rgb
from service.spec import ModelSpec
from tests.conftest import photo_paths

SPEC = ModelSpec(name="test")
LIMIT = 40_000_000


def reference(image: Image.Image) -> np.ndarray:
    """Plain PIL, written independently: RGB, shorter side to 256 (bilinear), centre 224."""
    image = image.convert("RGB")
    w, h = image.size
    size = (256, int(256 * h / w)) if w < h else (int(256 * w / h), 256)
    image = image.resize(size, Image.BILINEAR)
    left = round((size[0] - 224) / 2.0)
    top = round((size[1] - 224) / 2.0)
    return np.asarray(image.crop((left, top, left + 224, top + 224)))


def assert_matches_reference(out: np.ndarray, expected: np.ndarray) -> None:
    """Equal but for Pillow's fixed-point rounding: the gateway resizes only the cropped
    region, so a few values may differ, by 1 grey level at most."""
    assert out.shape == expected.shape
    diff = np.abs(out.astype(np.int16) - expected.astype(np.int16))
    assert diff.max() <= 1, f"{diff.max()} grey levels apart"
    assert (diff > 0).mean() < 0.01, f"{(diff > 0).mean():.2%} of values differ"


def encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def run(data: bytes, limit: int = LIMIT) -> np.ndarray:
    return preprocess(data, SPEC, max_image_pixels=limit)


def gradient(width: int, height: int) -> Image.Image:
    """An RGB image whose every region differs (so crops and rotations show)."""
    x = np.linspace(0, 255, width, dtype=np.float64)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float64)[:, None, None]
    rgb = np.concatenate(
        [
            np.broadcast_to(x, (height, width, 1)),
            np.broadcast_to(y, (height, width, 1)),
            np.broadcast_to((x + y) / 2, (height, width, 1)),
        ],
        axis=2,
    )
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


@pytest.mark.parametrize("path", photo_paths(), ids=lambda p: p.name)
def test_real_photos_match_the_plain_reference(path: Path) -> None:
    out = run(path.read_bytes())
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]
    assert_matches_reference(out, reference(Image.open(path)))


@pytest.mark.parametrize("size", [(300, 500), (500, 300), (224, 224), (100, 80), (256, 1000)])
def test_sizes_and_orientations_match_reference(size: tuple[int, int]) -> None:
    image = gradient(*size)
    assert_matches_reference(run(encode(image, "PNG")), reference(image))


@pytest.mark.parametrize("mode", ["L", "1", "CMYK", "YCbCr", "P"])
def test_opaque_modes_become_rgb_like_pillow_converts_them(mode: str) -> None:
    source = gradient(320, 240).convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "YCbCr") else "PNG"
    if mode == "YCbCr":
        fmt, source = "JPEG", gradient(320, 240)
    data = encode(source, fmt)
    expected = reference(Image.open(io.BytesIO(data)).convert("RGB"))
    assert_matches_reference(run(data), expected)


def test_cmyk_jpeg_is_converted() -> None:
    data = encode(gradient(320, 240).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = run(data)
    # Close to the RGB original (JPEG loss aside): the channels are not inverted/garbled.
    np.testing.assert_allclose(
        out.mean(axis=(0, 1)), reference(gradient(320, 240)).mean(axis=(0, 1)), atol=6
    )


@pytest.mark.parametrize(("mode", "fmt"), [("RGBA", "PNG"), ("LA", "PNG"), ("RGBA", "WEBP")])
def test_alpha_is_composited_over_white(mode: str, fmt: str) -> None:
    rgba = np.zeros((240, 320, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red where opaque
    rgba[:, :160, 3] = 255  # left half opaque, right half fully transparent
    image = Image.fromarray(rgba, "RGBA")
    if mode == "LA":
        image = image.convert("LA")
    out = run(encode(image, fmt, lossless=True) if fmt == "WEBP" else encode(image, fmt))
    assert (out[:, -20:] == 255).all(), "transparent pixels must be white"
    assert out[:, :20].mean() < 200


def test_palette_with_transparency_index() -> None:
    image = Image.new("P", (300, 300), 0)
    image.putpalette([0, 0, 0, 10, 200, 10] + [0] * 762)
    image.paste(1, (0, 0, 150, 300))
    data = encode(image, "PNG", transparency=0)  # index 0 (black) is transparent
    out = run(data)
    assert (out[:, -20:] == 255).all()
    np.testing.assert_array_equal(out[100, 5], [10, 200, 10])


def test_sixteen_bit_greyscale_is_scaled_not_clipped() -> None:
    values = np.tile(np.linspace(0, 65535, 320), (240, 1)).astype(np.uint16)
    image = Image.fromarray(values)  # mode I;16
    assert image.mode.startswith("I;16")
    out = run(encode(image, "PNG"))
    # A ramp from black to white, not all-white as a clipping conversion would give.
    assert out[:, 0].mean() < 60 and out[:, -1].mean() > 195
    assert (out[..., 0] == out[..., 1]).all()


def test_float_tiff() -> None:
    values = np.tile(np.linspace(0, 255, 320, dtype=np.float32), (240, 1))
    out = run(encode(Image.fromarray(values, "F"), "TIFF"))
    assert out[:, 0].mean() < 60 and out[:, -1].mean() > 195


# EXIF orientation -> how the camera stored an upright scene (the inverse of the turn the
# orientation asks for when displaying).
STORED_AS = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@pytest.mark.parametrize("orientation", sorted(STORED_AS))
@pytest.mark.parametrize("size", [(300, 400), (517, 383)])
def test_exif_orientation_is_applied(orientation: int, size: tuple[int, int]) -> None:
    upright = gradient(*size)
    turn = STORED_AS[orientation]
    stored = upright if turn is None else upright.transpose(turn)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(stored, "PNG", exif=exif.tobytes())
    assert_matches_reference(run(data), reference(upright))


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (240, 240), color) for color in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=50)
    out = run(buffer.getvalue())
    assert out[..., 0].mean() > 200 and out[..., 2].mean() < 50


def test_animated_webp_and_multipage_tiff_use_first_frame() -> None:
    frames = [Image.new("RGB", (240, 240), c) for c in ((0, 255, 0), (255, 0, 255))]
    for fmt in ("WEBP", "TIFF"):
        buffer = io.BytesIO()
        frames[0].save(buffer, fmt, save_all=True, append_images=frames[1:], lossless=True)
        out = run(buffer.getvalue())
        assert out[..., 1].mean() > 200 and out[..., 0].mean() < 50, fmt


def test_bmp_is_accepted() -> None:
    image = gradient(300, 260)
    assert_matches_reference(run(encode(image, "BMP")), reference(image))


def test_large_jpeg_is_decoded_at_reduced_scale(monkeypatch: pytest.MonkeyPatch) -> None:
    image = gradient(2400, 1800)
    data = encode(image, "JPEG", quality=95)
    sizes: list[tuple[int, int]] = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self: JpegImagePlugin.JpegImageFile, mode: str | None, size: tuple[int, int] | None):  # type: ignore[no-untyped-def]
        result = original(self, mode, size)
        sizes.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    out = run(data)
    assert sizes == [(1200, 900)]  # 1/2 scale: the shorter side stays >= 2 x 256
    diff = np.abs(out.astype(int) - reference(image).astype(int))
    assert diff.mean() < 2.0


def test_small_jpeg_is_not_drafted() -> None:
    path = next(p for p in photo_paths() if p.suffix == ".jpg")
    image = Image.open(path)
    image.draft(None, (512, 512))
    assert image.size == Image.open(path).size


def test_extreme_aspect_ratio_stays_bounded() -> None:
    image = gradient(20_000, 10)  # would be 512,000 x 256 after a plain resize
    start = time.perf_counter()
    out = run(encode(image, "PNG"))
    assert out.shape == (224, 224, 3)
    assert time.perf_counter() - start < 5.0


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("size", [(10_000, 5_000), (60_000, 60_000)])
def test_pixel_bombs_are_rejected_from_the_header(size: tuple[int, int]) -> None:
    data = _png_header_only(*size)  # a few dozen bytes claiming 50 M / 3.6 G pixels
    start = time.perf_counter()
    with pytest.raises(ImageTooLarge) as info:
        run(data)
    assert time.perf_counter() - start < 0.5  # nothing was decoded
    assert info.value.code == "image_too_large"


def test_gif_bomb_rejected() -> None:
    # GIF logical screen of 65535 x 65535 with a 1x1 frame.
    data = (
        b"GIF89a"
        + struct.pack("<HH", 65535, 65535)
        + b"\x00\x00\x00"
        + b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
    )
    with pytest.raises(ImageTooLarge):
        run(data)


def test_pixel_limit_is_a_setting() -> None:
    data = encode(gradient(300, 300), "PNG")
    with pytest.raises(ImageTooLarge, match="90000 pixels"):
        run(data, limit=89_999)
    assert run(data, limit=90_000).shape == (224, 224, 3)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage, not an image",
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
        b"\xff\xd8\xff" + b"\x00" * 10,
    ],
    ids=["empty", "text", "png-magic-only", "jpeg-magic-only"],
)
def test_garbage_is_undecodable(data: bytes) -> None:
    with pytest.raises(UndecodableImage) as info:
        run(data)
    assert info.value.code == "undecodable_image"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_truncated_files_are_undecodable(fmt: str) -> None:
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 255, (300, 300, 3), dtype=np.uint8))
    data = encode(noisy, fmt)
    with pytest.raises(UndecodableImage):
        run(data[: len(data) // 2])


def test_formats_outside_the_list_are_refused() -> None:
    data = encode(gradient(64, 64), "ICO")
    with pytest.raises(UndecodableImage, match="not a JPEG, PNG"):
        run(data)


def test_to_rgb_keeps_rgb_untouched() -> None:
    image = gradient(10, 10)
    assert to_rgb(image) is image


@pytest.mark.parametrize(
    ("value", "grey"), [(0, 0), (256, 0), (257, 1), (128 * 257, 128), (65535, 255)]
)
def test_sixteen_bit_grey_levels_map_exactly(value: int, grey: int) -> None:
    """value // 257: 0..65535 onto 0..255 with white staying white."""
    image = Image.fromarray(np.full((40, 60), value, dtype=np.uint16))
    assert image.mode == "I;16"
    assert (run(encode(image, "PNG")) == grey).all()


@pytest.mark.parametrize(("value", "grey"), [(-1000, 0), (70_000, 255), (514, 2)])
def test_thirty_two_bit_grey_is_clipped_to_the_sixteen_bit_range(value: int, grey: int) -> None:
    image = Image.fromarray(np.full((40, 60), value, dtype=np.int32))
    assert image.mode == "I"
    assert (run(encode(image, "TIFF")) == grey).all()


def test_decode_errors_are_described_briefly() -> None:
    from service.preprocess import _describe

    assert _describe(ValueError("  broken data stream \n")) == "broken data stream"
    assert _describe(struct.error()) == "error"
    assert _describe(EOFError("")) == "EOFError"
    assert _describe(OSError("x" * 500)) == "x" * 200
    with pytest.raises(UndecodableImage, match=r"^cannot decode image: .*truncated"):
        run(encode(gradient(64, 48), "PNG")[:-40])


@pytest.mark.parametrize(("value", "grey"), [(-5.0, 0), (0.0, 0), (100.7, 100), (300.0, 255)])
def test_float_grey_is_clipped_and_truncated(value: float, grey: int) -> None:
    image = Image.fromarray(np.full((40, 60), value, dtype=np.float32))
    assert image.mode == "F"
    assert (run(encode(image, "TIFF")) == grey).all()


@pytest.mark.parametrize(
    ("mode", "transparent", "other"),
    [("L", 40, 90), ("RGB", (40, 50, 60), (90, 10, 10)), ("1", 0, 255)],
)
def test_a_transparent_colour_key_shows_white(
    mode: str, transparent: int | tuple[int, int, int], other: int | tuple[int, int, int]
) -> None:
    """PNG's colour-key transparency (no alpha channel): keyed pixels become white."""
    image = Image.new(mode, (64, 48), transparent)
    image.paste(other, (32, 0, 64, 48))
    out = run(encode(image, "PNG", transparency=transparent))
    assert (out[:, :100] == 255).all()  # the keyed left half
    expected = np.array(Image.new(mode, (1, 1), other).convert("RGB"))[0, 0]
    assert (out[:, 124:] == expected).all()


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (b"", UndecodableImage, "^empty image$"),
        (b"GIF87a but not really", UndecodableImage,
         r"^not a JPEG, PNG, WebP, GIF, BMP or TIFF image \(or a corrupt one\)$"),
        (_png_header_only(10_000, 5_000), ImageTooLarge,
         "^image is 10000x5000 = 50000000 pixels; the limit is 40000000$"),
        (_png_header_only(60_000, 60_000), ImageTooLarge, "^image too large: Image size"),
    ],
    ids=["empty", "garbage", "over-the-limit", "pillow-bomb"],
)
def test_refusals_say_why(data: bytes, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        run(data)


def test_mpo_photos_are_drafted_like_jpegs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Phones' multi-picture JPEGs (MPO) are decoded at reduced scale as JPEGs are."""
    from service import preprocess as preprocess_module

    big = gradient(1400, 1100)
    jpeg = encode(big, "JPEG", quality=90)
    mpo = encode(big, "MPO", save_all=True, append_images=[big.copy()], quality=90)
    assert Image.open(io.BytesIO(mpo)).format == "MPO"
    drafted = run(mpo)
    assert (drafted == run(jpeg)).all()
    monkeypatch.setattr(preprocess_module, "DRAFT_MARGIN", 100)  # never reduce
    assert (run(mpo) != drafted).any()  # full-scale decoding gives other pixels
