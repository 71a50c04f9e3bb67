"""Model versions for rollout tests: tiny models (`gateway.tiny_onnx_model`) whose seed
sets their answers, written as `build-repo` writes a version (staged, then renamed into
place, with `weights.json` and `verification.json`), or deliberately broken.

Each seed answers every photo differently from the others, so a response tells by its
scores which version computed it (`Answers`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort

from service.preprocess import preprocess
from service.spec import ModelSpec
from service.verification import Reference, verification_batch
from service.versions import staging_dir
from tests.support.gateway import TINY_MODEL, tiny_onnx_model, write_tiny_repository

Broken = Literal["truncated", "wrong_answers"]


def run_onnx(model: bytes, batch: np.ndarray) -> np.ndarray:
    """The model's probabilities for a uint8 batch, on ONNX Runtime."""
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["PROBS"], {"IMAGE": batch})[0], dtype=np.float32)


def write_version(
    model_dir: Path,
    version: str,
    model: bytes,
    *,
    reference_model: bytes | None = None,
    publish: bool = True,
    extra_files: dict[str, bytes] | None = None,
) -> Path:
    """Write `model_dir/<version>/` with `model` as `model.onnx` and the reference answers
    of `reference_model` (default: `model` itself) on the verification photos. Published
    by one rename unless `publish` is false (then the staging directory is returned)."""
    spec = ModelSpec.load(model_dir)
    answers = run_onnx(reference_model or model, verification_batch(spec))
    staging = staging_dir(model_dir, version)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    (staging / "model.onnx").write_bytes(model)
    for name, data in (extra_files or {}).items():
        (staging / name).write_bytes(data)
    (staging / "verification.json").write_text(Reference.of(answers).to_json())
    (staging / "weights.json").write_text(
        json.dumps({"source": f"tiny-v{version}", "random_init": False})
    )
    if not publish:
        return staging
    os.rename(staging, model_dir / version)
    return model_dir / version


def write_tiny_version(
    root: Path,
    version: str,
    seed: int,
    *,
    broken: Broken | None = None,
    num_classes: int = 10,
    name: str = TINY_MODEL,
) -> Path:
    """Version `version` of the tiny model answering as `seed`. `broken`: `truncated`
    (half the model file, so it cannot load) or `wrong_answers` (a sound model whose
    verification.json records another seed's answers)."""
    model = tiny_onnx_model(num_classes, seed=seed)
    reference = None
    if broken == "truncated":
        reference, model = model, model[: len(model) // 2]
    elif broken == "wrong_answers":
        reference = tiny_onnx_model(num_classes, seed=seed + 1000)
    return write_version(root / name, version, model, reference_model=reference)


def tiny_versioned_repository(root: Path, seed: int = 0, *, num_classes: int = 10) -> Path:
    """A tiny repository whose version 1 answers as `seed`, with its verification record."""
    write_tiny_repository(root, num_classes=num_classes)
    shutil.rmtree(root / TINY_MODEL / "1")
    write_tiny_version(root, "1", seed, num_classes=num_classes)
    return root


class Answers:
    """What each version's model answers on some photos: `top[version][i]` is photo i's
    (best class, its score), computed on ONNX Runtime from the model files themselves."""

    def __init__(self, photos: list[bytes], spec: ModelSpec, models: dict[str, bytes]) -> None:
        batch = np.stack([preprocess(p, spec, max_image_pixels=10**8) for p in photos])
        self.top = {
            version: [(int(row.argmax()), float(row.max())) for row in run_onnx(model, batch)]
            for version, model in models.items()
        }

    def matches(self, version: str, photo: int, index: int, score: float) -> bool:
        """Whether (`index`, `score`) is what `version` answers for `photo`."""
        if version not in self.top:
            return False
        best, expected = self.top[version][photo]
        return best == index and abs(expected - score) <= 1e-4


def tiny_answers(photos: list[bytes], spec: ModelSpec, seeds: dict[str, int]) -> Answers:
    """`Answers` of the tiny model, version -> seed."""
    models = {v: tiny_onnx_model(spec.num_classes, seed=s) for v, s in seeds.items()}
    return Answers(photos, spec, models)
