"""CA-MobileNetV2, its checkpoint loading, exports and the Triton repository writer.

The only part of the project that imports torch. The names below are imported lazily, so
`python -m service.model.tensorrt` (the TensorRT init step) runs in an image without torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.model.checkpoint import CheckpointError, load_checkpoint
    from service.model.network import (
        CAMobileNetV2,
        CoordinateAttention,
        InvertedResidual,
        ca_mobilenet_v2,
    )

_EXPORTS = {
    "CheckpointError": "service.model.checkpoint",
    "load_checkpoint": "service.model.checkpoint",
    "CAMobileNetV2": "service.model.network",
    "CoordinateAttention": "service.model.network",
    "InvertedResidual": "service.model.network",
    "ca_mobilenet_v2": "service.model.network",
}

__all__ = [
    "CAMobileNetV2",
    "CheckpointError",
    "CoordinateAttention",
    "InvertedResidual",
    "ca_mobilenet_v2",
    "load_checkpoint",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'service.model' has no attribute {name!r}")
