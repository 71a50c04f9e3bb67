"""TF32 on or off for CUDA convolutions and matrix products, across torch versions.

It matters at export too: `torch.jit.trace` records cuDNN's TF32 switch as a constant in
every convolution, so a model traced with the default (TF32 on) runs its convolutions in
TF32 on any GPU, whatever the server's settings. On an H200 that moved probabilities by
4e-3 against the CPU; traced with TF32 off they agreed within 4e-6."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


@contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 (10-bit mantissa) or IEEE FP32 for cuDNN and cuBLAS inside the block."""
    switches = _switches()
    saved = [getattr(owner, name) for owner, name, _, _ in switches]
    for owner, name, on, off in switches:
        setattr(owner, name, on if enabled else off)
    try:
        yield
    finally:
        for (owner, name, _, _), value in zip(switches, saved, strict=True):
            setattr(owner, name, value)


def _switches() -> list[tuple[Any, str, object, object]]:
    """(owner, attribute, TF32 value, FP32 value) for convolutions and matrix products.
    torch >= 2.9 has `fp32_precision` settings and refuses to mix them with the older
    `allow_tf32` flags in one process, so only one of the two kinds is touched."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    conv = getattr(cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        return [(conv, "fp32_precision", "tf32", "ieee"),
                (matmul, "fp32_precision", "tf32", "ieee")]
    return [(cudnn, "allow_tf32", True, False), (matmul, "allow_tf32", True, False)]
