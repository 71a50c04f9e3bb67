"""One Triton address: its client (one gRPC channel, or one HTTP connection pool), its
health, its contract check and the calls in flight on it.

Everything the gateway knows about a Triton server is per endpoint, because the servers
behind one DNS name differ during a rollout or a failure: one may be dead, one may serve
another version, one may not have loaded the model yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from service.errors import ContractError
from service.gateway.backends.base import ModelId
from service.gateway.backends.triton_contract import (
    Failure,
    answered_by,
    check_batch_limit,
    check_metadata_contract,
    classify_failure,
    runs_half_precision,
    served_version,
)
from service.gateway.tracing import client_call
from service.spec import ModelSpec

logger = logging.getLogger("ca.gateway.backend.triton")

Protocol = Literal["grpc", "http"]
_MAX_MESSAGE_BYTES = 2**31 - 1
# Reconnect quickly after Triton restarts (gRPC's default backoff grows to 120 s).
GRPC_CHANNEL_ARGS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),  # the backend retries, on another endpoint
]


class CallFailed(Exception):
    """A call on one endpoint failed; `failure` says how, `detail` for humans."""

    def __init__(self, failure: Failure, detail: str) -> None:
        super().__init__(detail)
        self.failure = failure
        self.detail = detail


class Endpoint:
    """The Triton server at `address` serving `model` (`version`, or its newest when
    empty) for batches of up to `max_batch_size`. Not ready until a probe has seen the
    server and the model ready and the model's metadata and config match `spec`."""

    def __init__(
        self,
        address: str,
        *,
        protocol: Protocol,
        model: str,
        version: str,
        spec: ModelSpec,
        max_batch_size: int,
        timeout_s: float,
    ) -> None:
        self.address = address
        self.protocol = protocol
        self.model = model
        self.pinned_version = version
        self.spec = spec
        self.max_batch_size = max_batch_size
        self.timeout_s = timeout_s
        self.ready = False
        self.state = "not probed yet"
        #: The version this endpoint serves: from its metadata, then from each answer.
        self.version = version
        #: Set when the model there breaks the contract; cleared when it is reloaded.
        self.contract_error: str | None = None
        self.inflight = 0
        #: Calls in flight by the version they asked for ("" unpinned).
        self.inflight_by_version: Counter[str] = Counter()
        #: Whether the model's config runs it in half precision (set by the contract check).
        self.half_precision = False
        self._contract_ok = False
        self._client = self._make_client()

    def _make_client(self) -> Any:
        client = self.module().InferenceServerClient
        if self.protocol == "grpc":
            return client(self.address, channel_args=GRPC_CHANNEL_ARGS)
        return client(self.address, conn_timeout=self.timeout_s)

    def module(self) -> Any:
        """tritonclient's module for this protocol (its `InferInput`, `InferRequestedOutput`)."""
        if self.protocol == "grpc":
            import tritonclient.grpc.aio as grpcclient

            return grpcclient
        import tritonclient.http.aio as httpclient

        return httpclient

    async def close(self) -> None:
        self.ready = False
        with contextlib.suppress(Exception):
            await self._client.close()

    # -- health ----------------------------------------------------------------------
    async def probe(self, timeout_s: float) -> None:
        """Ask whether the server is live and the model ready at the version asked for,
        and check the contract once per load; updates `ready`, `state`, `version` and
        `contract_error`. Never raises.

        Not the server's readiness: Triton's (strict by default) is false while any version
        of any model loads, such as a new version loading beside the one serving during a
        rollout (by this gateway or another), while the version asked for keeps answering.
        A stopping Triton unloads its models, so their readiness goes with it."""
        try:
            async with asyncio.timeout(timeout_s):
                server_ready = await self._client.is_server_live()
                model_ready = server_ready and await self._client.is_model_ready(
                    self.model, self.pinned_version
                )
                if model_ready and not self._contract_ok:
                    await self._check_contract()
        except ContractError as exc:
            self.contract_error = str(exc)
            self.mark_down(f"contract mismatch: {exc}")
            return
        except Exception as exc:  # unreachable, timed out, refused: all mean "down"
            self.mark_down(f"unreachable: {short(exc)}")
            return
        if not server_ready:
            self.mark_down("server not live")
        elif not model_ready:
            self.mark_down(f"model {self.model} not ready")
        elif not self.ready:
            self.ready, self.state, self.contract_error = True, "ready", None
            logger.info("triton at %s serves %s v%s", self.address, self.model, self.version)

    def mark_down(self, reason: str) -> None:
        if self.ready or self.state != reason:
            logger.warning("triton at %s down: %s", self.address, reason)
        self.ready, self.state = False, reason
        self._contract_ok = False  # a restarted Triton may serve another model

    async def _check_contract(self) -> None:
        if self.protocol == "grpc":
            meta = await self._client.get_model_metadata(
                self.model, self.pinned_version, as_json=True
            )
            config = (
                await self._client.get_model_config(self.model, self.pinned_version, as_json=True)
            ).get("config", {})
        else:
            meta = await self._client.get_model_metadata(self.model, self.pinned_version)
            config = await self._client.get_model_config(self.model, self.pinned_version)
        check_metadata_contract(meta, self.spec)
        check_batch_limit(config, self.max_batch_size)
        self.half_precision = runs_half_precision(config)
        self.version = served_version(meta, self.pinned_version)
        self._contract_ok = True

    # -- inference -------------------------------------------------------------------
    async def infer(
        self,
        batch: NDArray[np.uint8],
        *,
        class_count: int,
        timeout_s: float,
        version: str | None = None,
    ) -> tuple[Any, ModelId]:
        """One inference call of at most `timeout_s` to `version` (default: the pinned
        one): tritonclient's result and the model that answered. Raises `CallFailed`; a
        failure that drops the endpoint (see `Failure`) has already marked it down."""
        module = self.module()
        image = module.InferInput(self.spec.input_name, list(batch.shape), "UINT8")
        image.set_data_from_numpy(batch)
        output = module.InferRequestedOutput(self.spec.output_name, class_count=class_count)
        asked = self.pinned_version if version is None else version
        kwargs: dict[str, Any] = {"model_version": asked, "outputs": [output]}
        if self.protocol == "grpc":
            kwargs["client_timeout"] = timeout_s
        self.inflight += 1
        self.inflight_by_version[asked] += 1
        try:
            async with asyncio.timeout(timeout_s):
                with client_call("triton infer", self._span_attributes) as headers:
                    # headers: the trace context (W3C traceparent), as gRPC metadata or
                    # HTTP headers, so Triton's own spans join the caller's trace.
                    result = await self._client.infer(
                        self.model, [image], headers=headers, **kwargs
                    )
        except Exception as exc:
            failure = classify_failure(exc)
            detail = f"triton at {self.address}: {failure.value}: {short(exc)}"
            if failure is Failure.TIMEOUT:
                detail = f"triton at {self.address} did not answer in {timeout_s:.3g} s"
            if failure.drops_endpoint:
                self.mark_down(f"{failure.value}: {short(exc)}")
            raise CallFailed(failure, detail) from exc
        finally:
            self.inflight -= 1
            self.inflight_by_version[asked] -= 1
        answered = answered_by(result) or ModelId(self.model, asked or self.version)
        self.version = answered.version or self.version
        return result, answered

    # -- versions (Triton's repository API, explicit model control) --------------------
    async def load_versions(self, versions: list[str], timeout_s: float) -> None:
        """Have Triton serve exactly `versions` of the model: its config with a `specific`
        version policy, sent with the load request, so versions already loaded keep
        serving while the others load or unload. Raises `ContractError` when a version is
        not ready afterwards (Triton skips a version its repository lacks without error)."""
        async with asyncio.timeout(timeout_s):
            if self.protocol == "grpc":
                config = (
                    await self._client.get_model_config(self.model, as_json=True)
                ).get("config", {})
            else:
                config = await self._client.get_model_config(self.model)
            wanted = sorted(set(versions), key=int)
            config["version_policy"] = {"specific": {"versions": [int(v) for v in wanted]}}
            await self._client.load_model(self.model, config=json.dumps(config))
            missing = [
                v for v in wanted if not await self._client.is_model_ready(self.model, v)
            ]
        if missing:
            raise ContractError(
                f"triton at {self.address} did not load version(s) {', '.join(missing)} of "
                f"{self.model}: is it in that server's repository?"
            )

    def pin(self, version: str) -> None:
        """Ask for `version` from the next call on."""
        self.pinned_version = self.version = version

    def _span_attributes(self) -> dict[str, str | int]:
        host, _, port = self.address.rpartition(":")
        return {
            "rpc.system": "grpc" if self.protocol == "grpc" else "http",
            "server.address": host,
            "server.port": int(port) if port.isdigit() else 0,
            "ca.triton.model": self.model,
        }


def short(exc: BaseException) -> str:
    """The first line of an exception's message, at most 200 characters."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
