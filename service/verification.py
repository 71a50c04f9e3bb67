"""Real photos, preprocessed exactly as the gateway does, for checking exported models.

Torch-free; used by the repository builder and the GPU agreement checks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from service.spec import ModelSpec

VERIFY_DIR = Path(__file__).parent / "data" / "verify"


def verification_images() -> list[Path]:
    return sorted(VERIFY_DIR.glob("*.jpg"))


def verification_batch(spec: ModelSpec) -> NDArray[np.uint8]:
    """`[N, H, W, 3]` uint8: each shipped photo through the serving preprocessing."""
    rows = []
    for path in verification_images():
        with Image.open(path) as image:
            rgb = image.convert("RGB")
            scale = spec.resize_shorter / min(rgb.size)
            size = (
                max(spec.input_size, round(rgb.width * scale)),
                max(spec.input_size, round(rgb.height * scale)),
            )
            resized = rgb.resize(size, Image.Resampling.BILINEAR)
            left = (resized.width - spec.input_size) // 2
            top = (resized.height - spec.input_size) // 2
            crop = resized.crop((left, top, left + spec.input_size, top + spec.input_size))
            rows.append(np.asarray(crop, dtype=np.uint8))
    return np.stack(rows)
