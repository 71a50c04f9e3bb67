"""What the gateway checks in Triton's answers: the model's metadata and config against the
spec, the version served, the classification extension's strings and the failure kinds.

Pure functions of what tritonclient returns (JSON-like dicts, protobuf responses,
`InferenceServerException`): no connection, no state.
"""

from __future__ import annotations

import enum
from typing import Any

import numpy as np
from numpy.typing import NDArray
from tritonclient.utils import InferenceServerException

from service.errors import BackendUnavailable, ContractError
from service.gateway.backends.base import ModelId, TopK
from service.spec import ModelSpec

_TRITON_DTYPES = {"uint8": "UINT8", "float32": "FP32"}
# Triton's scheduler refusing a request it could not queue or start in time (the model's
# queue policy): the server is alive and another replica may have room.
_QUEUE_REJECTIONS = ("exceeds maximum queue size", "request timeout expired")
# The model is not loaded on that server (unloaded, still loading, another repository).
_MODEL_MISSING = ("unknown model", "is not ready", "is not found", "failed to load")


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


def check_batch_limit(config: dict[str, Any], max_batch_size: int) -> None:
    """Raise `ContractError` when the model's config (`max_batch_size`) accepts smaller
    batches than the gateway forms: Triton would refuse every full batch."""
    accepted = int(config.get("max_batch_size", 0) or 0)
    if accepted < max_batch_size:
        raise ContractError(
            f"triton's config for {config.get('name', 'the model')} accepts batches of at most "
            f"{accepted}; the gateway forms up to {max_batch_size} (lower CA_MAX_BATCH_SIZE, "
            "or serve the spec's max_batch_size)"
        )


def runs_half_precision(config: dict[str, Any]) -> bool:
    """Whether Triton runs the model of `config` (its JSON form) in half precision: a
    TensorRT plan (built FP16 by default), or ONNX Runtime's TensorRT accelerator set to
    FP16. Its answers are then held to the FP16 tolerance, not the FP32 one."""
    if config.get("platform") == "tensorrt_plan":
        return True
    accelerators = (
        config.get("optimization", {}).get("execution_accelerators", {})
        .get("gpu_execution_accelerator", [])
    )
    return any(
        accelerator.get("name") == "tensorrt"
        and str(accelerator.get("parameters", {}).get("precision_mode", "")).upper() == "FP16"
        for accelerator in accelerators
    )


def served_version(meta: dict[str, Any], pinned: str) -> str:
    """The version a call answers with: `pinned` when set, else the newest the metadata
    lists (Triton routes an unversioned call to its newest loaded version)."""
    if pinned:
        return pinned
    versions = [str(v) for v in meta.get("versions", [])]
    return max(versions, key=lambda v: (len(v), v)) if versions else ""


def answered_by(result: Any) -> ModelId | None:
    """The model name and version an inference response says it came from (gRPC's
    `ModelInferResponse` or HTTP's JSON), or None when it names none."""
    response = result.get_response()
    if isinstance(response, dict):
        name, version = response.get("model_name"), response.get("model_version")
    else:
        name, version = getattr(response, "model_name", ""), getattr(response, "model_version", "")
    return ModelId(str(name), str(version or "")) if name else None


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


class Failure(enum.Enum):
    """What a failed call says about the endpoint that failed it, and whether the same
    batch may go to another endpoint (inference has no side effects, so any failure the
    server caused may be retried; the caller's own deadline may not)."""

    #: The address does not answer (refused, reset, gone): drop it from rotation, retry.
    GONE = "gone"
    #: The model is not loaded there: drop the address until a probe sees it, retry.
    MODEL_MISSING = "model_missing"
    #: Triton's queue policy refused the request (queue full or waited too long): the
    #: server is alive and stays in rotation; retry where there may be room.
    REJECTED = "rejected"
    #: Triton failed the batch (an internal error, a crashed backend stub): retry.
    FAILED = "failed"
    #: The call ran out of time: no time left to retry.
    TIMEOUT = "timeout"
    #: The request itself was refused (invalid argument, too large): another endpoint
    #: would refuse it too.
    REFUSED = "refused"

    @property
    def retryable(self) -> bool:
        return self not in (Failure.TIMEOUT, Failure.REFUSED)

    @property
    def drops_endpoint(self) -> bool:
        return self in (Failure.GONE, Failure.MODEL_MISSING)


def classify_failure(exc: BaseException) -> Failure:
    """The kind of a failed tritonclient call. gRPC statuses read `StatusCode.X`; HTTP
    ones are status codes. Anything not from tritonclient (aiohttp's connection errors,
    `OSError`) means the address is gone."""
    if isinstance(exc, TimeoutError):
        return Failure.TIMEOUT
    if not isinstance(exc, InferenceServerException):
        return Failure.GONE
    status = str(exc.status() or "").removeprefix("StatusCode.")
    message = str(exc.message() or "").lower()
    if status in ("DEADLINE_EXCEEDED", "504"):
        return Failure.TIMEOUT
    if any(text in message for text in _QUEUE_REJECTIONS):
        return Failure.REJECTED
    if any(text in message for text in _MODEL_MISSING):
        return Failure.MODEL_MISSING
    if status in ("UNAVAILABLE", "503"):
        return Failure.GONE
    if status in ("INTERNAL", "UNKNOWN", "CANCELLED", "ABORTED", "500", "502"):
        return Failure.FAILED
    return Failure.REFUSED
