"""The photos every benchmark sends: web-size and phone-size JPEGs made from real photos.

Web-size: each test photo cropped to 4:3 (or 3:4) and resized to 500x375 (375x500), JPEG
q90, plus mirrored copies to make eight. Phone-size: each photo cropped to 4:3, upscaled
to 4032x3024 (12 MP) with mild sensor-like noise (so the files are 3-5 MB, as a phone's
are, rather than the ~1 MB a smooth upscale compresses to), JPEG q92, stored landscape
with EXIF orientation 6 ("rotate 90 clockwise to view") as phones store portrait shots.
Deterministic (seeded), so every run and every peer sees the same bytes.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

SOURCE_DIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "images"
WEB_SIZE = (500, 375)
PHONE_SIZE = (4032, 3024)
EXIF_ORIENTATION = 0x0112
WEB_COUNT = 8
PHONE_COUNT = 4


def _sources(source_dir: Path) -> list[Image.Image]:
    files = sorted(p for p in source_dir.iterdir() if p.suffix.lower() in {".jpg", ".png"})
    if not files:
        raise FileNotFoundError(f"no .jpg/.png photos in {source_dir}")
    return [Image.open(p).convert("RGB") for p in files]


def _jpeg(image: Image.Image, quality: int, exif: Image.Exif | None = None) -> bytes:
    buffer = io.BytesIO()
    if exif is None:
        image.save(buffer, format="JPEG", quality=quality)
    else:
        image.save(buffer, format="JPEG", quality=quality, exif=exif.tobytes())
    return buffer.getvalue()


def web_photos(source_dir: Path = SOURCE_DIR, count: int = WEB_COUNT) -> list[bytes]:
    """`count` ~500x375 JPEGs (portraits stay portrait)."""
    sources = _sources(source_dir)
    photos: list[bytes] = []
    for i in range(count):
        image = sources[i % len(sources)]
        if i >= len(sources):
            image = ImageOps.mirror(image)
        size = WEB_SIZE if image.width >= image.height else WEB_SIZE[::-1]
        photos.append(_jpeg(ImageOps.fit(image, size, Image.Resampling.LANCZOS), 90))
    return photos


def phone_photos(source_dir: Path = SOURCE_DIR, count: int = PHONE_COUNT) -> list[bytes]:
    """`count` 4032x3024 JPEGs with EXIF orientation 6."""
    rng = np.random.default_rng(0)
    sources = _sources(source_dir)
    photos: list[bytes] = []
    for i in range(count):
        image = ImageOps.fit(sources[i % len(sources)], PHONE_SIZE, Image.Resampling.BICUBIC)
        pixels = np.asarray(image, dtype=np.int16)
        noise = rng.normal(0.0, 6.0, size=pixels.shape).astype(np.int16)
        noisy = Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8), "RGB")
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = 6
        photos.append(_jpeg(noisy, 92, exif))
    return photos


def write_sets(directory: Path) -> dict[str, Path]:
    """Write `web/` and `phone/` under `directory` (reused if already there)."""
    sets = {"web": (web_photos, WEB_COUNT), "phone": (phone_photos, PHONE_COUNT)}
    paths: dict[str, Path] = {}
    for name, (make, count) in sets.items():
        folder = directory / name
        if len(list(folder.glob("*.jpg"))) != count:
            folder.mkdir(parents=True, exist_ok=True)
            for i, data in enumerate(make()):
                (folder / f"{name}_{i}.jpg").write_bytes(data)
        paths[name] = folder
    return paths


def read_set(folder: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(folder.glob("*.jpg"))]


if __name__ == "__main__":
    import sys

    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("benchmarks/results/tmp/photos")
    for name, folder in write_sets(out).items():
        sizes = [len(b) for b in read_set(folder)]
        average_kb = sum(sizes) / len(sizes) / 1e3
        print(f"{name}: {len(sizes)} photos in {folder}, {average_kb:.0f} kB average")
