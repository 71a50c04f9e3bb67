"""Real photos, preprocessed exactly as the gateway does, for checking exported models.

Torch-free and web-framework-free; used by the repository builder and the GPU agreement
checks. Preprocessing is the gateway's own (`service.preprocess`), so exports are verified
on the very inputs they will be served.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from service.preprocess import preprocess
from service.spec import ModelSpec

VERIFY_DIR = Path(__file__).parent / "data" / "verify"
_PIXEL_LIMIT = 100_000_000


def verification_images() -> list[Path]:
    return sorted(VERIFY_DIR.glob("*.jpg"))


def verification_batch(spec: ModelSpec) -> NDArray[np.uint8]:
    """`[N, H, W, 3]` uint8: each shipped photo through the serving preprocessing."""
    return np.stack(
        [
            preprocess(p.read_bytes(), spec, max_image_pixels=_PIXEL_LIMIT)
            for p in verification_images()
        ]
    )
