"""Holding a loaded model version to what its weights answered when `build-repo` wrote it,
and choosing the version an embedded gateway starts on.

`Probe` runs the verification photos (`service.verification`, preprocessed as served)
through a backend and compares the answers with the version's `verification.json`.
`start_sound_version` starts the backend: a version with a record must pass the check to
serve; an unpinned gateway (`CA_MODEL_VERSION` empty) whose newest version will not load
or pass refuses it (logged, `ca_gateway_model_reloads_total{result="refused"}`) and
starts on the next older one, so a bad version in the repository cannot keep a restarted
gateway down. A pinned gateway serves its version or does not start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import NDArray

from service.errors import ContractError
from service.gateway.backends import Backend, build_backend
from service.gateway.metrics import GatewayMetrics
from service.gateway.modelinfo import ModelInfo, read_weights
from service.gateway.settings import EffectiveSettings, Settings
from service.spec import ModelSpec, SpecError
from service.verification import FP32, Check, Reference, Tolerance, compare, verification_batch
from service.versions import Fingerprint, fingerprint, numbered_versions

logger = logging.getLogger("ca.gateway.rollout")

MakeBackend = Callable[[Settings, ModelInfo, EffectiveSettings], Backend]


class Probe:
    """The verification photos for `spec`, prepared once, sent in batches of at most
    `max_batch_size` (what the backend accepts)."""

    def __init__(self, spec: ModelSpec, max_batch_size: int) -> None:
        self.spec = spec
        self.max_batch_size = max_batch_size
        self._batch: NDArray[np.uint8] | None = None

    async def batch(self) -> NDArray[np.uint8]:
        if self._batch is None:
            self._batch = await asyncio.to_thread(verification_batch, self.spec)
        return self._batch

    async def check(
        self, backend: Backend, reference: Reference, tolerance: Tolerance = FP32
    ) -> Check:
        """`backend`'s answers on the photos against `reference`."""
        batch = await self.batch()
        size = self.max_batch_size
        rows = [await backend.infer(batch[i : i + size]) for i in range(0, len(batch), size)]
        return compare(np.concatenate(rows), reference.probs, tolerance)


@dataclass
class Started:
    """The backend serving at start, its `model` (version and weights), and the versions
    refused on the way with their fingerprints (so the poll does not retry them as they
    are)."""

    backend: Backend
    model: ModelInfo
    refused: dict[str, Fingerprint] = field(default_factory=dict)


async def start_sound_version(
    settings: Settings,
    effective: EffectiveSettings,
    model: ModelInfo,
    metrics: GatewayMetrics,
    probe: Probe,
    make_backend: MakeBackend = build_backend,
) -> Started:
    """Start the backend on `model.version`, or for an unpinned embedded gateway on the
    newest version that loads and answers as recorded. Raises the last version's error
    (`ContractError`, `SpecError`) when none does."""
    embedded = settings.backend == "embedded"
    if not embedded or settings.model_version:
        backend = make_backend(settings, model, effective)
        await _start_checked(backend, model, probe, embedded)
        return Started(backend, model)
    model_file = model.onnx_path.name
    older = [v for v in numbered_versions(model.model_dir) if int(v) < int(model.version or 0)]
    refused: dict[str, Fingerprint] = {}
    candidates = [model.version, *reversed(older)]
    for number, version in enumerate(candidates, 1):
        version_dir = model.model_dir / version
        try:
            weights = model.weights if version == model.version else read_weights(version_dir)
            candidate = replace(model, version=version, weights=weights)
            backend = make_backend(settings, candidate, effective)
            await _start_checked(backend, candidate, probe, embedded)
        except (ContractError, SpecError) as exc:
            if number == len(candidates):
                raise
            refused[version] = fingerprint(version_dir, model_file)
            metrics.model_reloads.labels("refused").inc()
            logger.error(
                "refused version %s of %s at start-up: %s; trying version %s",
                version, model.spec.name, exc, candidates[number],
            )
            continue
        return Started(backend, candidate, refused)
    raise AssertionError("unreachable: the last candidate returns or raises")


async def _start_checked(backend: Backend, model: ModelInfo, probe: Probe, verify: bool) -> None:
    """Start `backend` and, when `verify` and the version has a record, check it; closes
    the backend and raises `ContractError` when it fails."""
    try:
        try:
            await backend.start()
        except ContractError:
            raise
        except Exception as exc:  # a corrupt file: the engines raise their own errors
            detail = f"{type(exc).__name__}: {exc}"
            raise ContractError(f"cannot load {model.onnx_path}: {detail}") from exc
        reference = Reference.load(model.model_dir / model.version) if verify else None
        if reference is None:
            return
        check = await probe.check(backend, reference)
        if not check.passed:
            raise ContractError(
                f"version {model.version} of {model.spec.name} does not answer as recorded "
                f"in its verification.json: {check.describe()}"
            )
        logger.info("version %s verified: %s", model.version, check.describe())
    except BaseException:
        await backend.close()
        raise
