"""Both engines against eager PyTorch on the real network: the served probabilities
within `PROBS_ATOL` (1e-5) and the same top-5, on real photos preprocessed as served, at
every batch size the batcher can form, on the lone and the concurrent variant alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from service.gateway.backends.engine import ENGINES, EngineConfig, EngineName, load_engine
from service.model.checkpoint import load_checkpoint
from service.model.export import PROBS_ATOL, TOP_K, eager_runner
from service.model.served import ServedModel
from service.preprocess import preprocess
from service.spec import ONNX_MODEL, ModelSpec
from service.verification import verification_images

DEFAULT_MAX_BATCH = 4  # Settings().max_batch_size: what the lone variant sees


@pytest.fixture(scope="module")
def spec(model_repository: Path) -> ModelSpec:
    return ModelSpec.load(model_repository / ONNX_MODEL)


@pytest.fixture(scope="module")
def photos_and_reference(
    spec: ModelSpec, photos: list[Path], test_checkpoint: Path
) -> tuple[np.ndarray, np.ndarray]:
    """Every probe photo (the shipped verification photos and the test photos) as served,
    and eager PyTorch's probabilities for each, one image at a time."""
    paths = [*verification_images(), *photos]
    batch = np.stack([preprocess(p.read_bytes(), spec, max_image_pixels=10**8) for p in paths])
    served = ServedModel(load_checkpoint(test_checkpoint), spec).eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = np.concatenate(
            [eager_runner(served)(batch[i : i + 1]) for i in range(len(batch))]
        )
    finally:
        torch.set_num_threads(threads)  # later tests' eager references use the default
    # A network whose answers differ by photo, or agreement would prove little.
    assert len({int(row.argmax()) for row in reference}) > 1
    return batch, reference


def batch_of(photos: np.ndarray, size: int) -> tuple[np.ndarray, list[int]]:
    """`size` photos, cycling through all of them from an offset that moves with the size,
    so every photo lands at several positions across the sizes."""
    order = [(size + i) % len(photos) for i in range(size)]
    return photos[order], order


@pytest.mark.parametrize("runtime", ENGINES)
def test_engine_matches_eager_pytorch_at_every_batch_size(
    runtime: EngineName, model_repository: Path, spec: ModelSpec,
    photos_and_reference: tuple[np.ndarray, np.ndarray],
) -> None:
    photos, reference = photos_and_reference
    engine = load_engine(runtime, model_repository / ONNX_MODEL / "1" / "model.onnx", spec,
                         EngineConfig(threads=2, streams=2, warm_up_batch=DEFAULT_MAX_BATCH))
    assert engine.name == runtime
    try:
        checked = []
        for lone, sizes in ((False, range(1, spec.max_batch_size + 1)),
                            (True, range(1, DEFAULT_MAX_BATCH + 1))):
            for size in sizes:
                batch, order = batch_of(photos, size)
                probs = engine.run(batch, lone=lone)
                want = reference[order]
                assert probs.shape == want.shape and probs.dtype == np.float32
                diff = float(np.abs(probs - want).max())
                assert diff <= PROBS_ATOL, (runtime, lone, size, diff)
                top = np.argsort(-probs, axis=1, kind="stable")[:, :TOP_K]
                want_top = np.argsort(-want, axis=1, kind="stable")[:, :TOP_K]
                assert (top == want_top).all(), (runtime, lone, size)
                checked.append(size)
        assert len(checked) == spec.max_batch_size + DEFAULT_MAX_BATCH
    finally:
        engine.close()
