"""Gateway settings: one typed object, read from `CA_*` environment variables, and the
one function that turns its "0 means default" knobs into the values that run.

Built by whoever starts the app (`ca-serve serve`, tests) and passed to
`create_app(settings)`; never instantiated at import time. `resolve(settings, spec)` is
the only place a default is filled in or a setting is capped by the model; the runtime
and the backend both run with its `EffectiveSettings`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.spec import ONNX_MODEL, ModelSpec
from service.versions import is_version_name

# The backends' defaults for `max_batch_size` and `max_concurrent_batches` when those are 0.
#
# Embedded: ONNX Runtime on the gateway's CPU costs least per image at batch 2-8; batches
# form from what queued while the backend was busy, so a cap of 4 only bounds the wait
# behind a batch (docs/performance.md); one batch in flight per inference thread.
EMBEDDED_BATCH_SIZE = 4
#
# Triton on a GPU (docs/performance.md, GPU; docs/deploy.md, capacity): a call costs 3-4 ms
# up to batch 8 whatever its size (kernel launches), 4.5 ms at batch 32 and 10.8 ms at 128
# (FP16, H200: 7,046 and 11,813 images/s), and Triton's dynamic batcher merges the calls
# of every gateway into GPU batches of up to the model's 128. A gpu-overlay gateway (2
# CPUs) prepares at most ~571 web photos/s. With 4 batches of 32 in flight and Triton
# answering within its queue-time budget (50 ms + one 10.8 ms batch), one gateway can
# carry 4 x 32 / 0.061 s = 2,100 images/s, 3.7x what its CPUs prepare: its CPU, not its
# slots, stays the limit until Triton's round trip passes 224 ms (4 x 32 / 571 /s), when
# Triton's own queue policy is about to refuse anyway. Fewer slots would halve that margin
# (2 x 32 caps at 1,050 images/s); more would only park more of one gateway's images in
# Triton's bounded queue. Larger calls than 32 add nothing on the GPU (Triton merges calls
# into its batches; a call of 128 could share a GPU batch with no other) and a failed call
# retried on another pod resends at most 32 images (4.8 MB).
TRITON_BATCH_SIZE = 32
TRITON_CONCURRENT_BATCHES = 4

# Settings that were removed, and what replaced them: starting with one set is an error,
# so a deployment cannot silently serve another model than the one it names.
RETIRED_VARIABLES = {
    "CA_TRITON_MODEL": "CA_MODEL_NAME names the served model on both backends",
    "CA_TRITON_MODEL_VERSION": "CA_MODEL_VERSION pins the version on both backends",
}


def available_cores() -> int:
    """Cores this process may run on (cgroup/affinity aware where the OS says so)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class Settings(BaseSettings):
    """Every knob of the gateway. Units are in the names."""

    model_config = SettingsConfigDict(env_prefix="CA_", extra="ignore", frozen=True)

    # Where the model comes from.
    backend: Literal["embedded", "triton"] = "embedded"
    model_repository: Path = Path("model_repository")
    model_name: str = Field(
        default=ONNX_MODEL,
        description="The served model: its directory in the repository (spec, labels) and, "
        "on Triton, the model name asked for",
    )
    model_version: str = Field(
        default="",
        description="Pin the version served on both backends; empty: the newest (embedded: "
        "the highest numbered directory, followed as new ones appear; Triton: its newest "
        "loaded version)",
    )
    model_poll_interval_s: float = Field(
        default=10.0, ge=0.0,
        description="Embedded backend, unpinned: how often the repository is checked for a "
        "newer complete version, which is verified and swapped in without a restart; 0: never",
    )
    triton_url: str = Field(
        default="127.0.0.1:8001",
        description="host:port (one server), or dns:///name:port / dns://DNS_IP[:port]/name:port "
        "(every address the name resolves to, balanced per call)",
    )
    triton_protocol: Literal["grpc", "http"] = "grpc"
    triton_use_classification: bool = True
    triton_health_interval_s: float = Field(
        default=1.0, gt=0.0, description="How often the Triton backend probes each endpoint"
    )
    triton_resolve_interval_s: float = Field(
        default=10.0, gt=0.0, description="How often a dns: CA_TRITON_URL is resolved again"
    )

    # Serving.
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    default_top_k: int = Field(default=5, ge=1)
    access_log: bool = True
    graceful_shutdown_s: float = Field(
        default=30.0, gt=0.0, description="On SIGTERM, how long in-flight requests may take"
    )

    # Batching and capacity.
    # Batches form from what queued while the backend was busy, so waiting for company (a
    # delay) only adds latency when a stream is idle (docs/performance.md).
    max_batch_size: int = Field(
        default=0, ge=0, le=1024,
        description="Images per backend call; 0 means the backend's default (embedded 4, "
        "Triton 32), always capped by the model's max_batch_size",
    )
    max_batch_delay_ms: float = Field(default=0.0, ge=0.0, le=1000.0)
    max_queue: int = Field(default=256, ge=1)
    request_timeout_s: float = Field(default=10.0, gt=0.0)
    # An online classifier answers quickly or not at all: past this estimated queue wait a
    # new request is refused at once (503), whatever the request timeout would still allow.
    max_queue_wait_s: float = Field(
        default=0.5, gt=0.0,
        description="Admission's latency budget: refuse (503 overloaded) when a new request "
        "would wait longer than this, by the estimate, before its images are worked on",
    )
    retry_after_s: int = Field(default=1, ge=0, description="Retry-After sent with 503 answers")
    max_concurrent_batches: int = Field(
        default=0, ge=0, description="Batches in flight at once; 0 means the backend's default"
    )
    # A stream that finishes a batch starts the next at once instead of idling while the
    # result goes back through the event loop; off while refusing, when those idle cycles
    # are what answers the refusals quickly (docs/performance.md).
    spare_batches: int = Field(
        default=1, ge=0, le=8,
        description="Embedded backend on OpenVINO: batches beyond the concurrent ones that "
        "wait inside the engine, used only while no request has been refused for a second",
    )
    preprocess_threads: int = Field(default=0, ge=0, description="0 means one per available core")
    inference_threads: int = Field(default=0, ge=0, description="0 means one per available core")
    embedded_runtime: Literal["auto", "openvino", "onnxruntime"] = Field(
        default="auto",
        description="Embedded backend's engine: OpenVINO where installed (auto), else ONNX Runtime",
    )
    inference_spinning: bool = Field(
        default=True, description="Let ONNX Runtime's intra-op threads spin while a run is on"
    )
    inference_rewrite_graph: bool = Field(
        default=True,
        description="ONNX Runtime engine: rewrite the graph so ONNX Runtime keeps it in its "
        "blocked CPU layout (same outputs, faster; see backends/blocked_layout.py)",
    )

    # Limits on what a client may send.
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(default=40_000_000, ge=1)
    max_files: int = Field(default=16, ge=1)
    body_timeout_s: float = Field(
        default=60.0, gt=0.0, description="How long a client may take to send its body; then 408"
    )

    # Connections (service/gateway/connections.py; docs/reliability.md, "Connection-level
    # limits"). A gateway reachable without a proxy in front must bound what a client can
    # hold by connecting and then sending nothing, or too little.
    http_implementation: Literal["auto", "httptools", "h11"] = Field(
        default="auto", description="uvicorn's HTTP parser; auto: httptools when installed"
    )
    header_timeout_s: float = Field(
        default=5.0, gt=0.0,
        description="How long a connection may take to deliver a complete request head "
        "(from connecting, or from the first byte of a next request); then it is closed",
    )
    keep_alive_timeout_s: float = Field(
        default=5.0, gt=0.0,
        description="How long a connection may sit idle between requests; then it is closed",
    )
    send_timeout_s: float = Field(
        default=10.0, gt=0.0,
        description="How long a client may leave unread what the gateway sends (a full "
        "buffer, or a close waiting to flush); then the connection is dropped",
    )
    max_connections: int = Field(
        default=0, ge=0,
        description="Open connections per process; 0 derives it from the file-descriptor "
        "limit. At the cap the connection idle longest is closed to make room",
    )
    max_header_bytes: int = Field(
        default=32 * 1024, ge=1024,
        description="The largest request line plus headers accepted; larger gets 431 (h11: 400)",
    )
    probe_connections: int = Field(
        default=16, ge=1,
        description="Connections kept beyond the cap for /healthz, /readyz and /metrics only",
    )

    # Security.
    api_keys: Annotated[tuple[str, ...], NoDecode] = ()
    # The model admin routes (load a version) change what every client gets: with no API
    # keys they would be open to anyone who can reach the gateway, so they stay off unless
    # this is set on purpose (a gateway only a trusted network can reach).
    allow_unauthenticated_admin: bool = Field(
        default=False,
        description="Open the model admin routes (POST /v1/model/reload, "
        "/v1/model/versions/{v}/load) when CA_API_KEYS is empty; with keys they need one",
    )
    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        # Environment variables carry lists as "a,b,c".
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("model_version")
    @classmethod
    def _check_model_version(cls, value: str) -> str:
        value = value.strip()
        if value and not is_version_name(value):
            raise ValueError(
                f"a version is a positive number (or empty: the newest), got {value!r}"
            )
        return value

    @field_validator("triton_url")
    @classmethod
    def _parse_triton_url(cls, value: str) -> str:
        # Lazy: the backends package imports this module.
        from service.gateway.backends.triton_target import parse_target

        parse_target(value)  # a TargetError (ValueError) becomes a validation error
        return value.strip()

    @model_validator(mode="after")
    def _no_retired_variables(self) -> Settings:
        for name, replacement in RETIRED_VARIABLES.items():
            if name in os.environ:
                raise ValueError(f"{name} is no longer read: {replacement}; unset it")
        return self

    @property
    def model_dir(self) -> Path:
        return self.model_repository / self.model_name


@dataclass(frozen=True)
class EffectiveSettings:
    """The capacity values the gateway runs with, every default applied (all >= 1)."""

    #: Images per backend call: `max_batch_size` or the backend's default, capped by the
    #: model's own limit.
    max_batch_size: int
    #: Batches in flight at once; for the embedded backend also its concurrent
    #: single-thread calls.
    concurrent_batches: int
    #: Threads the embedded backend's engine gives a batch that runs alone (on OpenVINO
    #: also the most single-thread streams it runs at once).
    inference_threads: int
    #: Threads decoding and resizing images (and parsing multipart bodies).
    preprocess_threads: int
    #: Batches the embedded backend may queue inside its engine beyond
    #: `concurrent_batches` while nothing is refused (0 for Triton).
    spare_batches: int = 0


def resolve(settings: Settings, spec: ModelSpec, *, cores: int | None = None) -> EffectiveSettings:
    """Apply the defaults: 0 threads means one per core (`cores`, by default the cores
    this process may run on); 0 concurrent batches means one per inference thread for the
    embedded backend (one single-threaded inference stream per core under load) and
    `TRITON_CONCURRENT_BATCHES` for Triton; batch size 0 means `EMBEDDED_BATCH_SIZE` or
    `TRITON_BATCH_SIZE`. The batch size never exceeds what the model accepts
    (`spec.max_batch_size`, which its Triton config repeats)."""
    cores = cores if cores is not None else available_cores()
    inference_threads = settings.inference_threads or cores
    triton = settings.backend == "triton"
    default_batches = TRITON_CONCURRENT_BATCHES if triton else inference_threads
    batch_size = settings.max_batch_size or (TRITON_BATCH_SIZE if triton else EMBEDDED_BATCH_SIZE)
    return EffectiveSettings(
        max_batch_size=min(batch_size, spec.max_batch_size),
        concurrent_batches=settings.max_concurrent_batches or default_batches,
        inference_threads=inference_threads,
        preprocess_threads=settings.preprocess_threads or cores,
        spare_batches=0 if triton else settings.spare_batches,
    )
