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

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.spec import ONNX_MODEL, ModelSpec

# Batches in flight against Triton when `max_concurrent_batches` is 0: a remote server
# pipelines, so a few batches on the wire let transfer and queueing overlap its compute.
TRITON_CONCURRENT_BATCHES = 4


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
    model_name: str = ONNX_MODEL
    model_version: str = "1"
    triton_url: str = "127.0.0.1:8001"
    triton_protocol: Literal["grpc", "http"] = "grpc"
    triton_model: str = ONNX_MODEL
    triton_model_version: str = ""
    triton_use_classification: bool = True
    triton_health_interval_s: float = Field(
        default=1.0, gt=0.0, description="How often the Triton backend probes readiness"
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
    # CPU: ONNX Runtime's cost per image is lowest at batch 2-8; batches form from what
    # queued while the backend was busy, so waiting for company (a delay) only adds latency
    # when a stream is idle (docs/performance.md).
    max_batch_size: int = Field(default=4, ge=1, le=1024)
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

    # Security.
    api_keys: Annotated[tuple[str, ...], NoDecode] = ()
    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        # Environment variables carry lists as "a,b,c".
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @property
    def model_dir(self) -> Path:
        return self.model_repository / self.model_name


@dataclass(frozen=True)
class EffectiveSettings:
    """The capacity values the gateway runs with, every default applied (all >= 1)."""

    #: Images per backend call: `max_batch_size`, capped by the model's own limit.
    max_batch_size: int
    #: Batches in flight at once; for the embedded backend also its single-thread streams.
    concurrent_batches: int
    #: Threads the embedded backend's engine gives a batch that runs alone.
    inference_threads: int
    #: Threads decoding and resizing images (and parsing multipart bodies).
    preprocess_threads: int


def resolve(settings: Settings, spec: ModelSpec, *, cores: int | None = None) -> EffectiveSettings:
    """Apply the defaults: 0 threads means one per core (`cores`, by default the cores
    this process may run on); 0 concurrent batches means one per inference thread for the
    embedded backend (one single-threaded inference stream per core under load) and
    `TRITON_CONCURRENT_BATCHES` for Triton; the batch size never exceeds what the model
    accepts (`spec.max_batch_size`)."""
    cores = cores if cores is not None else available_cores()
    inference_threads = settings.inference_threads or cores
    default_batches = (
        TRITON_CONCURRENT_BATCHES if settings.backend == "triton" else inference_threads
    )
    return EffectiveSettings(
        max_batch_size=min(settings.max_batch_size, spec.max_batch_size),
        concurrent_batches=settings.max_concurrent_batches or default_batches,
        inference_threads=inference_threads,
        preprocess_threads=settings.preprocess_threads or cores,
    )
