"""The served graph: uint8 images in, probabilities out.

Normalisation and softmax live inside the graph so 4x fewer bytes cross the wire (uint8
rather than float32) and the accelerator does the arithmetic.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from service.spec import ModelSpec


class ServedModel(nn.Module):
    """`[N, H, W, 3]` uint8 RGB -> `[N, num_classes]` float32 probabilities."""

    scale: Tensor
    shift: Tensor

    def __init__(self, network: nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        self.network = network
        mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
        # (x / 255 - mean) / std folded into one multiply-add.
        self.register_buffer("scale", 1.0 / (255.0 * std))
        self.register_buffer("shift", -mean / std)

    def forward(self, image: Tensor) -> Tensor:
        x = image.permute(0, 3, 1, 2).float() * self.scale + self.shift
        return torch.softmax(self.network(x), dim=1)
