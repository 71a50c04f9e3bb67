"""Triton Inference Server, one or every server behind a DNS name, through tritonclient
(gRPC aio by default, HTTP aio optional).

**Balancing across Triton pods.** `CA_TRITON_URL=dns:///name:port` (`triton_target.py`)
means every address the name resolves to: the gateway resolves it itself, keeps one
client per address (`triton_pool.py`, `triton_endpoint.py`) and sends each call to the
ready endpoint with the fewest calls in flight, ties round robin. Resolution runs again
every `CA_TRITON_RESOLVE_INTERVAL_S` (10 s): a pod the Triton HPA adds gets calls within
that, plus CoreDNS's 5 s record TTL and one health probe (1 s), about 16 s in all. Chosen
over handing `dns:///` to gRPC with the `round_robin` policy because:
- gRPC's DNS resolver resolves again only when a connection drops or the policy asks, so
  added pods would idle until something failed; forcing it means rebuilding channels on a
  timer or a maximum connection age on the server, which Triton's gRPC server lacks;
- a channel knows connections, not Triton: a pod whose model is unloaded, still loading
  or of the wrong shape would stay in rotation; here each address is probed (server and
  model ready, metadata and config checked against the spec) and only ready ones get calls;
- retrying on *another* pod needs to know which pod failed, which a channel hides;
- the same pool serves the HTTP protocol, so both protocols balance.
The cost is one connection per Triton pod per gateway process, and this code.
A plain `host:port` is one endpoint, as before (gRPC resolves it per connection).

**Failures.** A call that finds its address gone (refused, reset, UNAVAILABLE) or the
model not loaded there drops that endpoint from rotation at once, until a probe sees it
ready again. Each failure the server side caused (those two, Triton's queue policy refusing
the request, an internal error) is retried once on another ready endpoint within the same
deadline: inference has no side effects. A Triton pod that dies so costs at most the calls
in flight on it, and none while a second pod is ready. Timeouts are not retried (the
deadline is spent) and neither are requests Triton refuses as invalid.

**Health.** A watcher probes every endpoint every `CA_TRITON_HEALTH_INTERVAL_S`; the
backend is ready while at least one endpoint is. With none ready, calls fail at once (503)
and `/readyz` answers 503. Each endpoint checks the model's metadata (tensors) and config
(`max_batch_size` at least the gateway's batch) after every (re)load and stays out of
rotation on a mismatch; `start()` raises `ContractError` when no endpoint is usable and one
mismatches.

**The model that answered.** Each inference response names its model and version; they
travel with the batch's `TopK` and `model_id()` reports the latest. Before any answer the
version is the one pinned (`CA_MODEL_VERSION`) or the newest the metadata lists.

Top-k uses Triton's classification extension (`class_count`) when enabled: only `k`
"score:index:label" strings per image cross the wire instead of every probability.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from service.errors import BackendUnavailable, ContractError, RequestTimeout
from service.gateway.backends.base import ModelId, TopK, top_k_from_probs
from service.gateway.backends.triton_contract import (
    Failure,
    check_metadata_contract,
    parse_classification,
)
from service.gateway.backends.triton_endpoint import CallFailed, Endpoint, short
from service.gateway.backends.triton_pool import EndpointPool
from service.gateway.backends.triton_target import parse_target, resolve
from service.spec import ModelSpec

__all__ = ["TritonBackend", "check_metadata_contract", "parse_classification"]

logger = logging.getLogger("ca.gateway.backend.triton")

#: Endpoints one batch may try: the first, then one other (inference is idempotent).
ATTEMPTS = 2
_RETRY_LOG_INTERVAL_S = 5.0


class TritonBackend:
    """Serves `model` (`version`, or the newest when empty) from the Triton server(s) at
    `url` over `protocol`, in batches of up to `max_batch_size`; each batch is bounded by
    `timeout_s` (a retry included). Endpoints are probed every `health_interval_s`, a
    `dns:` target resolved every `resolve_interval_s`. Raises `TargetError` (a
    `ValueError`) for a `url` it cannot parse."""

    name = "triton"

    def __init__(
        self,
        spec: ModelSpec,
        *,
        url: str,
        model: str,
        version: str = "",
        protocol: Literal["grpc", "http"] = "grpc",
        use_classification: bool = True,
        timeout_s: float = 10.0,
        health_interval_s: float = 1.0,
        resolve_interval_s: float = 10.0,
        max_batch_size: int | None = None,
    ) -> None:
        self.spec = spec
        self.url = url
        self.target = parse_target(url)
        self.protocol = protocol
        self.model = model
        self.version = version
        self.use_classification = use_classification
        self.timeout_s = timeout_s
        self.interval_s = health_interval_s
        self.resolve_interval_s = resolve_interval_s
        self.max_batch_size = max_batch_size or spec.max_batch_size
        self._pool = EndpointPool(self._new_endpoint)
        self._resolve_error: str | None = None
        self._answered: ModelId | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._retries = 0
        self._retry_logged_at = 0.0

    def _new_endpoint(self, address: str) -> Endpoint:
        return Endpoint(
            address,
            protocol=self.protocol,
            model=self.model,
            version=self.version,
            spec=self.spec,
            max_batch_size=self.max_batch_size,
            timeout_s=self.timeout_s,
        )

    def set_cpu_jobs_probe(self, probe: Callable[[], int]) -> None:
        """Nothing to do: inference runs on Triton's machines, not on the gateway's cores."""

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        """Resolve, connect and check the contract where Triton answers. Unreachable
        servers (or an unresolvable name) are not an error: the backend starts not ready.
        Raises `ContractError` when no endpoint is ready and one serves a mismatching model."""
        await self._resolve()
        await self._probe_all()
        if not self._pool.ready():
            mismatched = [e for e in self._pool.endpoints if e.contract_error]
            if mismatched:
                await self._pool.close()
                raise ContractError(
                    f"triton model {self.model} at {mismatched[0].address} does not match "
                    f"its spec: {mismatched[0].contract_error}"
                )
        self._watcher = asyncio.get_running_loop().create_task(
            self._watch(), name="triton-watcher"
        )

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self._pool.close()

    def ready(self) -> bool:
        return bool(self._pool.ready())

    def status(self) -> str:
        endpoints, ready = self._pool.endpoints, self._pool.ready()
        down = "; ".join(f"{e.address} {e.state}" for e in endpoints if not e.ready)
        if ready:
            tail = f"; down: {down}" if down else ""
            return f"ready: {len(ready)} of {len(endpoints)} triton endpoints{tail}"[:500]
        reasons = [r for r in (self._resolve_error, down) if r]
        return ("no triton endpoint ready: " + ("; ".join(reasons) or "none resolved"))[:500]

    def model_id(self) -> ModelId:
        if self._answered is not None:
            return self._answered
        ready = self._pool.ready()
        return ModelId(self.model, ready[0].version if ready else self.version)

    # -- versions (the rollout drives these: service/gateway/rollout.py) ---------------
    def pin(self, version: str) -> None:
        """Ask every endpoint, and those resolved later, for `version` from the next call
        on; `model_id` reports it until an answer says otherwise."""
        self.version = version
        for endpoint in self._pool.endpoints:
            endpoint.pin(version)
        self._answered = ModelId(self.model, version)

    @property
    def half_precision(self) -> bool:
        """Whether a ready endpoint's config runs the model in half precision."""
        return any(endpoint.half_precision for endpoint in self._pool.ready())

    @property
    def endpoints(self) -> list[Endpoint]:
        """The endpoints in rotation now, ready or not (for tests and diagnostics)."""
        return self._pool.endpoints

    @property
    def retries(self) -> int:
        """Batches sent to a second endpoint after the first failed, since start."""
        return self._retries

    # -- resolution and health -------------------------------------------------------
    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        next_resolution = loop.time() + self.resolve_interval_s
        while True:
            await asyncio.sleep(self.interval_s)
            if self.target.balanced and loop.time() >= next_resolution:
                next_resolution = loop.time() + self.resolve_interval_s
                await self._resolve()
            await self._probe_all()
            await self._pool.close_drained()

    async def _resolve(self) -> None:
        """Bring the pool to the addresses the target names now. A failed or empty
        resolution keeps the endpoints there are: their probes say whether they serve."""
        try:
            addresses = await resolve(self.target, timeout_s=max(1.0, self.interval_s * 2))
        except OSError as exc:
            self._note_resolution(f"cannot resolve {self.target.describe()}: {short(exc)}")
            return
        if not addresses:
            self._note_resolution(f"{self.target.describe()} resolves to no address")
            return
        self._note_resolution(None)
        added, gone = self._pool.update(addresses)
        if added or gone:
            logger.info(
                "triton endpoints for %s: %s (added %s, removed %s)",
                self.target.describe(),
                ", ".join(self._pool.addresses),
                [e.address for e in added],
                [e.address for e in gone],
            )

    def _note_resolution(self, error: str | None) -> None:
        if error is not None and error != self._resolve_error:
            logger.warning("%s", error)
        self._resolve_error = error

    async def _probe_all(self) -> None:
        timeout_s = max(1.0, self.interval_s * 2)
        await asyncio.gather(*(e.probe(timeout_s) for e in self._pool.endpoints))

    # -- inference -------------------------------------------------------------------
    async def infer(self, batch: NDArray[np.uint8]) -> NDArray[np.float32]:
        result, _ = await self._call(batch, class_count=0)
        return np.asarray(result.as_numpy(self.spec.output_name), dtype=np.float32)

    async def top_k(self, batch: NDArray[np.uint8], k: int) -> TopK:
        if self.use_classification:
            result, answered = await self._call(batch, class_count=k)
            top = parse_classification(result.as_numpy(self.spec.output_name), k)
        else:
            result, answered = await self._call(batch, class_count=0)
            probs = np.asarray(result.as_numpy(self.spec.output_name), dtype=np.float32)
            top = top_k_from_probs(probs, k)
        return TopK(top.indices, top.scores, answered)

    async def _call(self, batch: NDArray[np.uint8], *, class_count: int) -> tuple[Any, ModelId]:
        """Send `batch` to the best ready endpoint and, when that fails in a way another
        endpoint may not, once more to another, all within `timeout_s`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        tried: list[Endpoint] = []
        failed: CallFailed | None = None
        while len(tried) < ATTEMPTS:
            endpoint = self._pool.pick(exclude=tried)
            if endpoint is None:
                break
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise RequestTimeout(f"triton did not answer in {self.timeout_s} s")
            if tried:
                self._note_retry(failed, endpoint)
            tried.append(endpoint)
            try:
                result, answered = await endpoint.infer(
                    batch, class_count=class_count, timeout_s=remaining
                )
            except CallFailed as exc:
                failed = exc
                if not exc.failure.retryable:
                    break
                continue
            self._answered = answered
            return result, answered
        if failed is None:
            raise BackendUnavailable(f"triton backend not ready: {self.status()}")
        if failed.failure is Failure.TIMEOUT:
            raise RequestTimeout(failed.detail)
        raise BackendUnavailable(failed.detail)

    def _note_retry(self, failed: CallFailed | None, endpoint: Endpoint) -> None:
        self._retries += 1
        now = time.monotonic()
        if now - self._retry_logged_at >= _RETRY_LOG_INTERVAL_S:  # one line, not a flood
            self._retry_logged_at = now
            logger.warning(
                "retrying a batch on %s (%d retries so far): %s",
                endpoint.address,
                self._retries,
                failed.detail if failed else "",
            )
