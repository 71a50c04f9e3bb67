"""CA-MobileNetV2, its checkpoint loading, exports and the Triton repository writer.

The only part of the project that imports torch.
"""

from service.model.checkpoint import CheckpointError, load_checkpoint
from service.model.network import (
    CAMobileNetV2,
    CoordinateAttention,
    InvertedResidual,
    ca_mobilenet_v2,
)

__all__ = [
    "CAMobileNetV2",
    "CheckpointError",
    "CoordinateAttention",
    "InvertedResidual",
    "ca_mobilenet_v2",
    "load_checkpoint",
]
