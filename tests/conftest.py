"""Fixtures shared across the suite: test-made checkpoints and a built CPU repository."""

from __future__ import annotations

from pathlib import Path

import pytest

TESTDATA_IMAGES = Path(__file__).resolve().parent / "data" / "images"


def photo_paths() -> list[Path]:
    """The real photos in tests/data/images (JPEG and PNG; SOURCES.md says where from)."""
    return sorted(p for p in TESTDATA_IMAGES.iterdir() if p.suffix.lower() in {".jpg", ".png"})


@pytest.fixture(scope="session")
def photos() -> list[Path]:
    paths = photo_paths()
    if not paths:
        pytest.fail(f"no test photos found in {TESTDATA_IMAGES}")
    return paths


@pytest.fixture(scope="session")
def test_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A calibrated CA-MobileNetV2 saved like the authors' release (flat classifier keys)."""
    from tests.support.checkpoints import calibrated_network, save_released_format

    path = tmp_path_factory.mktemp("checkpoint") / "mbv2_ca_test.pth"
    return save_released_format(calibrated_network(), path)


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory, test_checkpoint: Path) -> Path:
    """A `--target cpu` repository built from `test_checkpoint`: serves Triton (Python
    backend) and the embedded backend alike (`ca_mobilenetv2_onnx/1/model.onnx`)."""
    from service.model.repository import build_repository

    output = tmp_path_factory.mktemp("model_repository")
    build_repository(output, weights=str(test_checkpoint), target="cpu", progress=lambda _: None)
    return output
