"""Moving the Triton servers behind the gateway to another version of the model, through
Triton's repository API (`--model-control-mode=explicit`).

Each step acts on every ready endpoint: `stage` has each server load the new version
beside the one serving (a load request carrying the model's config with a `specific`
version policy: versions already loaded keep serving meanwhile), `probe` runs a batch on
the new version of each server, and `release`, once the gateway asks for the new version
(`TritonBackend.pin`), waits for the calls still on other versions and has each server
keep only the new one. Triton reads versions from its own repository: the new version
must be there on every server first (docs/deploy.md, "Model versions").
"""

from __future__ import annotations

import asyncio

import numpy as np
from numpy.typing import NDArray

from service.errors import BackendUnavailable
from service.gateway.backends.triton import TritonBackend
from service.gateway.backends.triton_endpoint import CallFailed, Endpoint

_DRAIN_POLL_S = 0.01


def ready_endpoints(backend: TritonBackend) -> list[Endpoint]:
    """The endpoints in rotation and ready; raises `BackendUnavailable` when none is."""
    ready = [endpoint for endpoint in backend.endpoints if endpoint.ready]
    if not ready:
        raise BackendUnavailable(f"no triton endpoint ready: {backend.status()}")
    return ready


async def stage(backend: TritonBackend, serving: str, version: str, timeout_s: float) -> None:
    """Have every ready server load `version` beside `serving`; raises `ContractError` if
    one does not have it ready afterwards."""
    await asyncio.gather(
        *(e.load_versions([serving, version], timeout_s) for e in ready_endpoints(backend))
    )


async def probe(
    backend: TritonBackend, batch: NDArray[np.uint8], version: str, max_batch_size: int
) -> list[tuple[str, NDArray[np.float32]]]:
    """Probabilities for `batch` from `version` on every ready server, by address, in
    calls of at most `max_batch_size` images. Raises `BackendUnavailable` on a failed call."""
    answers = []
    for endpoint in ready_endpoints(backend):
        rows = []
        for start in range(0, len(batch), max_batch_size):
            try:
                result, _ = await endpoint.infer(
                    batch[start : start + max_batch_size],
                    class_count=0,
                    timeout_s=backend.timeout_s,
                    version=version,
                )
            except CallFailed as exc:
                raise BackendUnavailable(exc.detail) from exc
            rows.append(np.asarray(result.as_numpy(backend.spec.output_name), dtype=np.float32))
        answers.append((endpoint.address, np.concatenate(rows)))
    return answers


async def release(backend: TritonBackend, version: str, timeout_s: float) -> None:
    """Once calls ask for `version`: wait (up to `timeout_s`) for each server's calls on
    other versions to return, then have it keep `version` only."""

    async def one(endpoint: Endpoint) -> None:
        async with asyncio.timeout(timeout_s):
            # Once per rollout: polling beats an event that every call would have to set.
            while _calls_on_others(endpoint, version):  # noqa: ASYNC110
                await asyncio.sleep(_DRAIN_POLL_S)
        await endpoint.load_versions([version], timeout_s)

    await asyncio.gather(*(one(endpoint) for endpoint in ready_endpoints(backend)))


def _calls_on_others(endpoint: Endpoint, version: str) -> bool:
    return any(n for v, n in endpoint.inflight_by_version.items() if v != version)


async def unstage(backend: TritonBackend, serving: str, timeout_s: float) -> None:
    """After a refused version: have every ready server keep `serving` only (best effort:
    a server that fails here still serves `serving`, which the gateway asks for)."""
    await asyncio.gather(
        *(e.load_versions([serving], timeout_s) for e in backend.endpoints if e.ready),
        return_exceptions=True,
    )
