"""Typed views of the gateway's JSON answers (schema: `service/gateway/schemas.py`).

Parsing is strict about what the contract promises (`predictions` with `label`, `index`,
`score`) and raises `APIError` with code `bad_response` when an answer does not fit it,
so a gateway/client mismatch is loud rather than a silent `None`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from clients.errors import APIError


@dataclass(frozen=True)
class Prediction:
    """One class: its ImageNet label, its index in the model's output, its probability."""

    label: str
    index: int
    score: float


@dataclass(frozen=True)
class Classification:
    """The answer for one image: predictions sorted by score, best first."""

    predictions: tuple[Prediction, ...]
    model: str
    model_version: str
    filename: str | None = None
    request_id: str | None = None
    latency_s: float | None = None
    """Round trip of the HTTP request that carried this image, measured by the client."""

    @property
    def top(self) -> Prediction:
        """The most probable class."""
        return self.predictions[0]


@dataclass(frozen=True)
class ModelInfo:
    """`GET /v1/model`: what is being served and where its weights came from.

    `random_init` True means the weights are random and every answer is noise.
    """

    name: str
    version: str
    backend: str
    architecture: str
    num_classes: int
    input_size: int
    resize_shorter: int
    weights_source: str
    random_init: bool
    weights_sha256: str | None = None
    weights_warning: str | None = None
    labels: tuple[str, ...] = field(default=(), repr=False)


def _bad(message: str) -> APIError:
    return APIError(200, "bad_response", f"unexpected answer from the gateway: {message}")


def _prediction(item: Any) -> Prediction:
    try:
        return Prediction(label=str(item["label"]), index=int(item["index"]),
                          score=float(item["score"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise _bad(f"prediction {item!r}") from exc


def parse_classify(
    payload: Any, *, request_id: str | None = None, latency_s: float | None = None
) -> list[Classification]:
    """One `Classification` per image of a `POST /classify` answer, in request order."""
    if not isinstance(payload, Mapping) or not isinstance(payload.get("results"), list):
        raise _bad("no 'results' list")
    model = payload.get("model")
    if not isinstance(model, Mapping) or "name" not in model or "version" not in model:
        raise _bad("no 'model' with name and version")
    results = []
    for item in payload["results"]:
        if not isinstance(item, Mapping) or not isinstance(item.get("predictions"), list):
            raise _bad(f"result {item!r}")
        filename = item.get("filename")
        results.append(
            Classification(
                predictions=tuple(_prediction(p) for p in item["predictions"]),
                model=str(model["name"]),
                model_version=str(model["version"]),
                filename=str(filename) if filename is not None else None,
                request_id=request_id,
                latency_s=latency_s,
            )
        )
    return results


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def parse_model_info(payload: Any) -> ModelInfo:
    """A `ModelInfo` from a `GET /v1/model` answer."""
    try:
        weights = payload["weights"]
        return ModelInfo(
            name=str(payload["name"]),
            version=str(payload["version"]),
            backend=str(payload["backend"]),
            architecture=str(payload["architecture"]),
            num_classes=int(payload["num_classes"]),
            input_size=int(payload["input_size"]),
            resize_shorter=int(payload["resize_shorter"]),
            weights_source=str(weights["source"]),
            random_init=bool(weights["random_init"]),
            weights_sha256=_optional_str(weights.get("sha256")),
            weights_warning=_optional_str(weights.get("warning")),
            labels=tuple(str(label) for label in payload.get("labels", ())),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _bad(f"model info without {exc}") from exc
