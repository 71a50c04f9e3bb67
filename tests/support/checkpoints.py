"""Checkpoints the tests make (real weights cannot be downloaded here).

`calibrated_network` is the product's own (`service.model.demo`): a seeded network whose
predictions depend on the image and whose top-5 scores are well separated, which is what
tests that compare rankings across backends need.
"""

from __future__ import annotations

from pathlib import Path

import torch

from service.model.demo import calibrated_network
from service.model.network import CAMobileNetV2

__all__ = ["calibrated_network", "save_released_format"]


def save_released_format(network: CAMobileNetV2, path: Path) -> Path:
    """A plain state_dict with the head stored flat (`classifier.weight`), like `mbv2_ca.pth`."""
    state = {
        key.replace("classifier.1.", "classifier."): value
        for key, value in network.state_dict().items()
    }
    torch.save(state, path)
    return path
