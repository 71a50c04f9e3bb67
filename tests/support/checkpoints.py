"""Checkpoints the tests make (real weights cannot be downloaded here).

A freshly initialised CA-MobileNetV2 gives the same near-uniform answer for every image:
its activations shrink through sixteen attention gates. `calibrated_network` re-estimates
the BatchNorm statistics on photo-like inputs and widens the head, so its predictions
depend on the image and its top-5 scores are well separated, which is what tests that
compare rankings across backends need.
"""

from __future__ import annotations

from pathlib import Path

import torch

from service.model.network import CAMobileNetV2, ca_mobilenet_v2
from service.model.served import ServedModel
from service.spec import ModelSpec
from service.verification import verification_batch


def calibrated_network(seed: int = 1, num_classes: int = 1000) -> CAMobileNetV2:
    torch.manual_seed(seed)
    network = ca_mobilenet_v2(num_classes=num_classes)
    spec = ModelSpec(name="calibration", num_classes=num_classes)
    photos = torch.from_numpy(verification_batch(spec))
    noise = torch.randint(0, 256, (8, *spec.input_shape), dtype=torch.uint8)
    batch = torch.cat([photos, noise])
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration pass
    served = ServedModel(network, spec).train()
    with torch.no_grad():
        served(batch)
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 0.1
    head = network.classifier[1]
    assert isinstance(head, torch.nn.Linear)
    torch.nn.init.normal_(head.weight, 0.0, 0.25)
    return network.eval()


def save_released_format(network: CAMobileNetV2, path: Path) -> Path:
    """A plain state_dict with the head stored flat (`classifier.weight`), like `mbv2_ca.pth`."""
    state = {
        key.replace("classifier.1.", "classifier."): value
        for key, value in network.state_dict().items()
    }
    torch.save(state, path)
    return path
