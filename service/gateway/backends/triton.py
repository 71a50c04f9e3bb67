"""A Triton Inference Server behind tritonclient (gRPC aio by default, HTTP aio optional).

At start-up and after every reconnect the model's metadata is checked against the spec
(input/output names, datatypes, shapes with a batch dimension). A watcher task probes
server and model readiness every `health_interval_s`; a failed call marks the
backend down at once, so requests fail fast (503) and `/readyz` answers 503 until a
probe sees Triton ready again. The gRPC channel retries connections within a second,
so a restarted Triton is picked up without restarting the gateway.

Top-k uses Triton's classification extension (`class_count`) when enabled: only `k`
"score:index:label" strings per image cross the wire instead of every probability.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from tritonclient.utils import InferenceServerException

from service.errors import BackendUnavailable, ContractError, RequestTimeout, ServiceError
from service.gateway.backends.base import TopK, top_k_from_probs
from service.gateway.tracing import client_call
from service.spec import ModelSpec

logger = logging.getLogger("ca.gateway.backend.triton")

_MAX_MESSAGE_BYTES = 2**31 - 1
# Reconnect quickly after Triton restarts (gRPC's default backoff grows to 120 s).
_GRPC_CHANNEL_ARGS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),
]
_TRITON_DTYPES = {"uint8": "UINT8", "float32": "FP32"}


class TritonBackend:
    """Serves `model` (`version`, or the newest when empty) from the Triton server at
    `url` over `protocol`; every call is bounded by `timeout_s`, readiness is probed every
    `health_interval_s`. `assumed_version` is reported until Triton's metadata names the
    version it serves."""

    name = "triton"

    def __init__(
        self,
        spec: ModelSpec,
        *,
        url: str,
        model: str,
        version: str = "",
        assumed_version: str = "1",
        protocol: Literal["grpc", "http"] = "grpc",
        use_classification: bool = True,
        timeout_s: float = 10.0,
        health_interval_s: float = 1.0,
    ) -> None:
        self.spec = spec
        self.url = url
        self.protocol = protocol
        self.model = model
        self.version = version
        self.use_classification = use_classification
        self.timeout_s = timeout_s
        self.interval_s = health_interval_s
        self._client: Any = None
        self._ready = False
        self._state = "not connected yet"
        self._served_version = version or assumed_version
        self._contract_ok = False
        self._watcher: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def set_cpu_jobs_probe(self, probe: Callable[[], int]) -> None:
        """Nothing to do: inference runs on Triton's machine, not on the gateway's cores."""

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        """Connect and check the contract if Triton answers; raise `ContractError` on a
        mismatch. An unreachable Triton is not an error: the backend starts not ready."""
        self._client = self._make_client()
        await self._probe()
        self._watcher = asyncio.get_running_loop().create_task(
            self._watch(), name="triton-watcher"
        )

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.close()
        self._ready = False

    def ready(self) -> bool:
        return self._ready

    def status(self) -> str:
        return self._state

    def model_version(self) -> str:
        return self._served_version

    def _make_client(self) -> Any:
        if self.protocol == "grpc":
            import tritonclient.grpc.aio as grpcclient

            return grpcclient.InferenceServerClient(self.url, channel_args=_GRPC_CHANNEL_ARGS)
        import tritonclient.http.aio as httpclient

        return httpclient.InferenceServerClient(self.url, conn_timeout=self.timeout_s)

    def _module(self) -> Any:
        if self.protocol == "grpc":
            import tritonclient.grpc.aio as grpcclient

            return grpcclient
        import tritonclient.http.aio as httpclient

        return httpclient

    # -- health ----------------------------------------------------------------------
    async def _watch(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            self._wake.clear()
            try:
                await self._probe()
            except ContractError as exc:
                # Keep serving nothing rather than feeding a model the wrong tensors.
                self._mark_down(f"contract mismatch: {exc}")
                logger.error("triton model %s does not match its spec: %s", self.model, exc)

    async def _probe(self) -> None:
        try:
            async with asyncio.timeout(max(1.0, self.interval_s * 2)):
                server_ready = await self._client.is_server_ready()
                model_ready = server_ready and await self._client.is_model_ready(
                    self.model, self.version
                )
                if model_ready and not self._contract_ok:
                    await self._check_contract()
        except ContractError:
            raise
        except Exception as exc:  # unreachable, timed out, refused: all mean "down"
            self._mark_down(f"triton at {self.url} unreachable: {_short(exc)}")
            return
        if not server_ready:
            self._mark_down(f"triton at {self.url} is not ready")
        elif not model_ready:
            self._mark_down(f"model {self.model} is not ready on triton")
        elif not self._ready:
            self._ready, self._state = True, "ready"
            logger.info("triton at %s serves %s v%s", self.url, self.model, self._served_version)

    def _mark_down(self, reason: str) -> None:
        if self._ready or self._state != reason:
            logger.warning("triton backend down: %s", reason)
        self._ready, self._state = False, reason
        self._contract_ok = False  # a restarted Triton may serve another model
        self._wake.set()

    async def _check_contract(self) -> None:
        if self.protocol == "grpc":
            meta = await self._client.get_model_metadata(self.model, self.version, as_json=True)
        else:
            meta = await self._client.get_model_metadata(self.model, self.version)
        check_metadata_contract(meta, self.spec)
        versions = [str(v) for v in meta.get("versions", [])]
        if not self.version and versions:
            self._served_version = max(versions, key=lambda v: (len(v), v))
        self._contract_ok = True

    # -- inference -------------------------------------------------------------------
    async def infer(self, batch: NDArray[np.uint8]) -> NDArray[np.float32]:
        result = await self._call(batch, class_count=0)
        return np.asarray(result.as_numpy(self.spec.output_name), dtype=np.float32)

    async def top_k(self, batch: NDArray[np.uint8], k: int) -> TopK:
        if not self.use_classification:
            return top_k_from_probs(await self.infer(batch), k)
        result = await self._call(batch, class_count=k)
        return parse_classification(result.as_numpy(self.spec.output_name), k)

    async def _call(self, batch: NDArray[np.uint8], *, class_count: int) -> Any:
        if not self._ready:
            raise BackendUnavailable(f"triton backend not ready: {self._state}")
        module = self._module()
        image = module.InferInput(self.spec.input_name, list(batch.shape), "UINT8")
        image.set_data_from_numpy(batch)
        output = module.InferRequestedOutput(self.spec.output_name, class_count=class_count)
        kwargs: dict[str, Any] = {"model_version": self.version, "outputs": [output]}
        if self.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout_s
        try:
            async with asyncio.timeout(self.timeout_s):
                with client_call("triton infer", self._span_attributes) as headers:
                    # headers: the trace context (W3C traceparent), as gRPC metadata or
                    # HTTP headers, so Triton's own spans join the caller's trace.
                    return await self._client.infer(
                        self.model, [image], headers=headers, **kwargs
                    )
        except ServiceError:
            raise
        except TimeoutError as exc:
            raise RequestTimeout(f"triton did not answer in {self.timeout_s} s") from exc
        except InferenceServerException as exc:
            raise self._translate(exc) from exc
        except Exception as exc:  # connection refused/reset (aiohttp, OSError)
            self._mark_down(f"triton at {self.url} unreachable: {_short(exc)}")
            raise BackendUnavailable(f"triton unreachable: {_short(exc)}") from exc

    def _span_attributes(self) -> dict[str, str | int]:
        host, _, port = self.url.rpartition(":")
        return {
            "rpc.system": "grpc" if self.protocol == "grpc" else "http",
            "server.address": host.removeprefix("dns:///"),
            "server.port": int(port) if port.isdigit() else 0,
            "ca.triton.model": self.model,
        }

    def _translate(self, exc: InferenceServerException) -> ServiceError:
        status = str(exc.status() or "")
        if "DEADLINE_EXCEEDED" in status:
            return RequestTimeout(f"triton did not answer in {self.timeout_s} s")
        if "UNAVAILABLE" in status or "not ready" in str(exc.message()).lower():
            self._mark_down(f"triton at {self.url} unavailable: {_short(exc)}")
            return BackendUnavailable(f"triton unavailable: {_short(exc)}")
        # Anything else is Triton rejecting or failing the batch: not the client's fault.
        self._wake.set()
        return BackendUnavailable(f"triton failed the request: {_short(exc)}")


def check_metadata_contract(meta: dict[str, Any], spec: ModelSpec) -> None:
    """Raise `ContractError` unless Triton's model metadata matches the spec."""
    inputs = {t["name"]: t for t in meta.get("inputs", [])}
    outputs = {t["name"]: t for t in meta.get("outputs", [])}
    image = inputs.get(spec.input_name)
    if image is None:
        raise ContractError(f"triton model has no input {spec.input_name!r}: {sorted(inputs)}")
    expected_dtype = _TRITON_DTYPES.get(spec.dtype, spec.dtype.upper())
    if image["datatype"] != expected_dtype:
        raise ContractError(f"input {spec.input_name} is {image['datatype']}, not {expected_dtype}")
    shape = [int(d) for d in image["shape"]]
    if len(shape) != 4 or shape[1:] != list(spec.input_shape) or shape[0] != -1:
        raise ContractError(
            f"input {spec.input_name} has shape {shape}, expected [-1, *{spec.input_shape}] "
            "(a batching model)"
        )
    probs = outputs.get(spec.output_name)
    if probs is None:
        raise ContractError(f"triton model has no output {spec.output_name!r}: {sorted(outputs)}")
    if probs["datatype"] != "FP32":
        raise ContractError(f"output {spec.output_name} is {probs['datatype']}, not FP32")
    out_shape = [int(d) for d in probs["shape"]]
    if len(out_shape) != 2 or out_shape[1] != spec.num_classes:
        raise ContractError(
            f"output {spec.output_name} has shape {out_shape}, expected [-1, {spec.num_classes}]"
        )


def parse_classification(raw: NDArray[Any], k: int) -> TopK:
    """Decode the classification extension's `[N, k]` "score:index[:label]" strings."""
    rows = raw.reshape(raw.shape[0], -1) if raw.ndim != 2 else raw
    indices = np.zeros((rows.shape[0], k), dtype=np.int64)
    scores = np.zeros((rows.shape[0], k), dtype=np.float32)
    if rows.shape[1] < k:
        raise BackendUnavailable(f"triton returned {rows.shape[1]} classes, asked for {k}")
    for i, row in enumerate(rows):
        for j, entry in enumerate(row[:k]):
            text = entry.decode() if isinstance(entry, bytes) else str(entry)
            score, index = text.split(":", 2)[:2]
            scores[i, j], indices[i, j] = float(score), int(index)
    return TopK(indices=indices, scores=scores)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
