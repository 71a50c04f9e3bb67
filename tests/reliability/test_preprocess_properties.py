"""Property tests of `service.preprocess`, judged against plain Pillow.

Valid generated images (any size, mode, format and EXIF orientation) must come out as one
`[224, 224, 3]` uint8 array, equal to an independent resize-and-crop wherever Pillow's
own conversion is the contract. Hostile bytes (random, a known header then garbage,
corrupted photos) must get the verdict an independent decode with plain Pillow gives:
`UndecodableImage` (400) only when Pillow cannot decode them either, `ImageTooLarge` (413)
exactly when the declared size is over the limit, and an image whenever Pillow decodes
them. A `preprocess` that answered 400 to everything fails every test here.
"""

from __future__ import annotations

import io
import json
import os
import struct
import warnings
from enum import Enum
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from service import preprocess as preprocess_module
from service.errors import ImageTooLarge, ServiceError, UndecodableImage
from service.preprocess import preprocess
from service.spec import ModelSpec
from tests.conftest import photo_paths

# Pillow warns about the corrupt EXIF the fuzzers make; only exceptions matter here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SPEC = ModelSpec.from_dict({"name": "m", "num_classes": 10})
PIXEL_LIMIT = 40_000_000
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")
# A header, then garbage: reaches deeper into each decoder than random bytes do.
MAGICS = (b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"GIF87a", b"BM",
          b"II*\x00", b"MM\x00*", b"RIFF\x00\x00\x00\x00WEBPVP8 ")
# `make mutation` runs these once per mutant and scales the example counts down (0.2).
EXAMPLES_SCALE = float(os.environ.get("HYPOTHESIS_EXAMPLES_SCALE", "1"))


def examples(count: int) -> int:
    return max(10, int(count * EXAMPLES_SCALE))


# Derandomized: the same examples on every run, so a red run is a real regression and a
# mutation run is reproducible (explore with `derandomize=False` when changing the code).
HYPOTHESIS = settings(
    max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow],
    database=None, derandomize=True,
)


# -- the independent verdict ---------------------------------------------------------------
class Verdict(Enum):
    IMAGE = "image"
    TOO_LARGE = "too large"
    UNDECODABLE = "undecodable"


def pillow_verdict(data: bytes, limit: int = PIXEL_LIMIT) -> Verdict:
    """What plain Pillow makes of `data`: open (the accepted formats only), the size
    against `limit`, then frame 0 decoded, turned upright and converted to RGB."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data), formats=FORMATS)
            width, height = image.size
            if width * height > limit:
                return Verdict.TOO_LARGE
            if width < 1 or height < 1:
                return Verdict.UNDECODABLE
            image.seek(0)
            image.load()
            upright = ImageOps.exif_transpose(image)
            if upright.mode in ("I;16", "I;16B", "I;16L", "I"):
                upright = upright.point(lambda v: v / 257).convert("L")  # 16-bit grey to 8
            upright.convert("RGB")
    except Image.DecompressionBombError:
        return Verdict.TOO_LARGE
    except Exception:
        return Verdict.UNDECODABLE
    return Verdict.IMAGE


def gateway_verdict(data: bytes) -> Verdict:
    """What `preprocess` makes of `data`; any other exception fails the test."""
    try:
        out = preprocess(data, SPEC, max_image_pixels=PIXEL_LIMIT)
    except (UndecodableImage, ImageTooLarge) as error:
        assert error.code in ("undecodable_image", "image_too_large") and error.message
        json.dumps(error.message)  # renders as JSON
        for leak in (" at 0x", ".py", "Traceback", "site-packages", "/work/", "/usr/", "/tmp/"):
            assert leak not in error.message, error.message  # no paths or addresses
        return Verdict.UNDECODABLE if isinstance(error, UndecodableImage) else Verdict.TOO_LARGE
    except ServiceError as error:  # pragma: no cover - a failure, shown plainly
        raise AssertionError(f"undocumented service error {error.code}: {error.message}") from error
    assert out.shape == SPEC.input_shape and out.dtype == np.uint8 and out.flags.c_contiguous
    return Verdict.IMAGE


def check(data: bytes) -> None:
    """The gateway's verdict is Pillow's: 400 only for what Pillow cannot decode, 413 only
    for what is too large, an image for everything Pillow decodes."""
    assert gateway_verdict(data) == pillow_verdict(data)


# -- valid images, generated -----------------------------------------------------------
def smooth_pixels(rng: np.random.Generator, width: int, height: int, channels: int) -> np.ndarray:
    """Random but locally smooth content (a coarse random grid, bilinearly enlarged), so
    crops, flips and rotations all show and lossy formats keep it recognisable."""
    coarse = rng.integers(0, 256, (4, 4, channels), dtype=np.uint8)
    planes = [
        np.asarray(Image.fromarray(coarse[..., c], "L").resize((width, height), Image.BILINEAR))
        for c in range(channels)
    ]
    return np.stack(planes, axis=-1)


# mode -> formats that store it as such
MODES = {
    "RGB": ("JPEG", "PNG", "WEBP", "BMP", "TIFF"),
    "L": ("JPEG", "PNG", "BMP", "TIFF"),
    "P": ("PNG", "GIF", "BMP", "TIFF"),
    "CMYK": ("JPEG", "TIFF"),
    "1": ("PNG", "BMP", "TIFF"),
    "RGBA": ("PNG", "WEBP", "TIFF"),
    "LA": ("PNG",),
    "I;16": ("PNG", "TIFF"),
}
# Modes whose conversion to RGB is plain Pillow's `convert("RGB")` (no alpha, no 16 bits).
PLAIN_MODES = ("RGB", "L", "P", "CMYK", "1")


@st.composite
def valid_images(draw: st.DrawFn, modes: tuple[str, ...] = tuple(MODES)) -> tuple[bytes, str]:
    mode = draw(st.sampled_from(modes))
    fmt = draw(st.sampled_from(MODES[mode]))
    width, height = draw(st.integers(1, 480)), draw(st.integers(1, 480))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rgb = Image.fromarray(smooth_pixels(rng, width, height, 3), "RGB")
    if mode == "RGBA":
        alpha = Image.fromarray(smooth_pixels(rng, width, height, 1)[..., 0], "L")
        image = rgb.convert("RGBA")
        image.putalpha(alpha)
    elif mode == "LA":
        image = rgb.convert("LA")
    elif mode == "I;16":
        wide = smooth_pixels(rng, width, height, 1)[..., 0].astype(np.uint16) * 257
        image = Image.fromarray(wide)
        assert image.mode == "I;16", image.mode
    elif mode == "P":
        image = rgb.quantize(colors=draw(st.integers(2, 256)))
    else:
        image = rgb.convert(mode)
    buffer = io.BytesIO()
    options: dict[str, object] = {}
    if fmt in ("JPEG", "WEBP", "TIFF", "PNG"):
        orientation = draw(st.integers(1, 8))
        if orientation != 1:
            exif = Image.Exif()
            exif[0x0112] = orientation
            options["exif"] = exif.tobytes()
    if fmt == "JPEG":
        options["quality"] = draw(st.integers(50, 95))
    image.save(buffer, fmt, **options)
    return buffer.getvalue(), mode


def reference(data: bytes) -> np.ndarray:
    """Written here on purpose: upright, RGB, shorter side to 256 (bilinear), centre 224."""
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    w, h = image.size
    size = (256, max(1, int(256 * h / w))) if w <= h else (max(1, int(256 * w / h)), 256)
    image = image.resize(size, Image.BILINEAR)
    left, top = round((size[0] - 224) / 2.0), round((size[1] - 224) / 2.0)
    return np.asarray(image.crop((left, top, left + 224, top + 224)), dtype=np.uint8)


@HYPOTHESIS
@given(valid_images())
def test_every_valid_image_becomes_one_model_input(image: tuple[bytes, str]) -> None:
    data, _ = image
    out = preprocess(data, SPEC, max_image_pixels=PIXEL_LIMIT)
    assert out.shape == SPEC.input_shape and out.dtype == np.uint8 and out.flags.c_contiguous
    assert pillow_verdict(data) is Verdict.IMAGE


@HYPOTHESIS
@given(valid_images(PLAIN_MODES))
def test_valid_images_match_an_independent_resize_and_crop(image: tuple[bytes, str]) -> None:
    data, _ = image
    out = preprocess(data, SPEC, max_image_pixels=PIXEL_LIMIT)
    # The gateway resizes only the cropped region: Pillow's fixed-point rounding then
    # differs by one grey level, never more, and either way: ~0.1% of a photo's values,
    # but up to a few tenths of a dithered drawing's or of an exact linear ramp's, whose
    # every value sits on a rounding boundary. A systematic shift would move them all.
    diff = out.astype(np.int16) - reference(data).astype(np.int16)
    assert np.abs(diff).max() <= 1, f"{np.abs(diff).max()} grey levels apart"
    assert abs(diff.mean()) < 0.02, f"off by {diff.mean():+.3f} on average"
    assert (diff != 0).mean() < 0.5, f"{(diff != 0).mean():.2%} of values differ"


@HYPOTHESIS
@given(st.integers(1, 3000), st.integers(1, 3000))
def test_the_pixel_limit_is_exact(width: int, height: int) -> None:
    """Just over the limit is 413, at the limit is an image: the header decides, not the
    decoder (a 1-pixel-per-row PNG keeps these cheap)."""
    buffer = io.BytesIO()
    Image.new("L", (width, height), 128).save(buffer, "PNG")
    data = buffer.getvalue()
    limit = width * height
    assert preprocess(data, SPEC, max_image_pixels=limit).shape == SPEC.input_shape
    with pytest.raises(ImageTooLarge):
        preprocess(data, SPEC, max_image_pixels=limit - 1)


def test_a_failure_after_decoding_is_not_blamed_on_the_image(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only decoding and mode conversion map to 400: a bug in the resize and crop of
    decoded pixels surfaces as itself (a 500 that monitoring sees)."""
    data = encoded_photos()[0]

    def broken(*args: object) -> np.ndarray:
        raise ZeroDivisionError("a bug in our arithmetic")

    monkeypatch.setattr(preprocess_module, "_resize_and_crop", broken)
    with pytest.raises(ZeroDivisionError):
        preprocess(data, SPEC, max_image_pixels=PIXEL_LIMIT)


# -- hostile bytes ---------------------------------------------------------------------
@cache
def encoded_photos() -> tuple[bytes, ...]:
    """Each test photo, shrunk to 96 px, in every accepted format (small: fast to fuzz)."""
    out = []
    for path in photo_paths():
        with Image.open(path) as image:
            small = image.convert("RGB")
            small.thumbnail((96, 96))
        for fmt in FORMATS:
            buffer = io.BytesIO()
            small.save(buffer, fmt)
            out.append(buffer.getvalue())
    return tuple(out)


def real_photo_bytes() -> list[bytes]:
    return [Path(p).read_bytes() for p in photo_paths()]


@HYPOTHESIS
@given(st.binary(max_size=4096))
def test_arbitrary_bytes(data: bytes) -> None:
    check(data)


@HYPOTHESIS
@given(st.sampled_from(MAGICS), st.binary(max_size=2048))
def test_known_header_then_garbage(magic: bytes, tail: bytes) -> None:
    check(magic + tail)


@st.composite
def corrupted(draw: st.DrawFn) -> bytes:
    """An encoded photo with bit flips, overwritten runs, a cut, or an inserted run."""
    data = bytearray(draw(st.sampled_from(encoded_photos())))
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(("flip", "overwrite", "truncate", "insert")))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite":
            run = draw(st.binary(min_size=1, max_size=16))
            data[at : at + len(run)] = run
        elif kind == "truncate":
            del data[at:]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
    return bytes(data)


@settings(max_examples=examples(1000), deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(corrupted())
def test_corrupted_images(data: bytes) -> None:
    check(data)


@HYPOTHESIS
@given(st.sampled_from(range(len(photo_paths()))), st.floats(0.0, 1.0), st.integers(0, 7))
def test_real_photos_truncated_and_flipped(index: int, where: float, bit: int) -> None:
    data = bytearray(real_photo_bytes()[index])
    at = int(where * (len(data) - 1))
    flipped = bytearray(data)
    flipped[at] ^= 1 << bit
    check(bytes(flipped))
    check(bytes(data[:at]))


def test_the_fuzzers_seeds_decode_and_their_corruptions_are_not_all_refused() -> None:
    """The seeds are valid images, and the corruptions above reach both verdicts: a fuzzer
    whose every input is refused would test only the error path."""
    for data in (*encoded_photos(), *real_photo_bytes()):
        assert gateway_verdict(data) is Verdict.IMAGE
    jpeg = real_photo_bytes()[[p.suffix for p in photo_paths()].index(".jpg")]
    middle = bytearray(jpeg)
    middle[len(middle) // 2] ^= 0x10  # in the entropy-coded data: still decodes
    assert gateway_verdict(bytes(middle)) is Verdict.IMAGE
    assert gateway_verdict(jpeg[: len(jpeg) // 2]) is Verdict.UNDECODABLE


def test_a_corrupt_pointer_to_a_second_tiff_frame_does_not_refuse_the_first() -> None:
    """Found by `test_corrupted_images`: only frame 0 is served, so only frame 0 is read
    (counting the frames parsed every later header, and a broken one refused the image)."""
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(buffer, "TIFF")
    data = bytearray(buffer.getvalue())
    (ifd,) = struct.unpack("<I", data[4:8])
    (entries,) = struct.unpack("<H", data[ifd : ifd + 2])
    next_ifd = ifd + 2 + 12 * entries
    data[next_ifd : next_ifd + 4] = struct.pack("<I", len(data) // 2)  # into the pixels
    assert pillow_verdict(bytes(data)) is Verdict.IMAGE
    out = preprocess(bytes(data), SPEC, max_image_pixels=PIXEL_LIMIT)
    assert (out == np.array([10, 200, 30], dtype=np.uint8)).all()
