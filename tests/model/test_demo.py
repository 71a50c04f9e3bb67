"""The demo weights served where no trained checkpoint can be had: reproducible, and each
photo gets its own answer (a random-init network answers every photo alike)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from service.model.demo import demo_network
from service.model.served import ServedModel
from service.model.weights import random_network
from service.preprocess import preprocess
from service.spec import ModelSpec

SPEC = ModelSpec(name="demo")
# The photos the README's quick start sends.
README_PHOTOS = ("chelsea.jpg", "coffee.jpg", "astronaut.png", "rocket.jpg")


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    images = Path(__file__).resolve().parents[1] / "data" / "images"
    return torch.from_numpy(np.stack([
        preprocess((images / name).read_bytes(), SPEC, max_image_pixels=100_000_000)
        for name in README_PHOTOS
    ]))


@pytest.fixture(scope="module")
def demo() -> torch.nn.Module:
    return demo_network()


def _probs(network: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return ServedModel(network, SPEC).eval()(batch)


def test_demo_weights_give_each_photo_its_own_clear_answer(
    demo: torch.nn.Module, batch: torch.Tensor
) -> None:
    probs = _probs(demo, batch)
    top = probs.topk(3, dim=1)
    assert len(set(top.indices[:, 0].tolist())) == len(README_PHOTOS)
    # Ranks well apart compared with the 1e-5 the exports are allowed to differ by.
    assert float((top.values[:, :-1] - top.values[:, 1:]).min()) > 1e-3
    assert float(top.values[:, 0].min()) > 3 / SPEC.num_classes


def test_demo_weights_are_reproducible(demo: torch.nn.Module) -> None:
    first, second = demo.state_dict(), demo_network().state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_random_init_answers_every_photo_alike(batch: torch.Tensor) -> None:
    """Why the demo weights exist: uniform, identical answers look like a broken service."""
    probs = _probs(random_network(), batch)
    assert float((probs - 1 / SPEC.num_classes).abs().max()) < 1e-4
