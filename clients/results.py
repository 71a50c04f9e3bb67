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
    """`GET /v1/model`: what is being served and where its weights came from."""

    name: str
    version: str
    num_classes: int
    input_size: int
    weights_source: str
    random_init: bool
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


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
    model_name = str(model.get("name", "")) if isinstance(model, Mapping) else str(model or "")
    version = model.get("version") if isinstance(model, Mapping) else None
    model_version = str(payload.get("model_version", version or ""))
    results = []
    for item in payload["results"]:
        if not isinstance(item, Mapping) or not isinstance(item.get("predictions"), list):
            raise _bad(f"result {item!r}")
        filename = item.get("filename")
        results.append(
            Classification(
                predictions=tuple(_prediction(p) for p in item["predictions"]),
                model=model_name,
                model_version=model_version,
                filename=str(filename) if filename is not None else None,
                request_id=request_id,
                latency_s=latency_s,
            )
        )
    return results


def parse_model_info(payload: Any) -> ModelInfo:
    """A `ModelInfo` from a `GET /v1/model` answer."""
    if not isinstance(payload, Mapping):
        raise _bad("model info is not an object")
    try:
        weights = payload.get("weights") or {}
        return ModelInfo(
            name=str(payload["name"]),
            version=str(payload["version"]),
            num_classes=int(payload["num_classes"]),
            input_size=int(payload["input_size"]),
            weights_source=str(payload.get("weights_source", weights.get("source", "unknown"))),
            random_init=bool(payload.get("random_init", weights.get("random_init", False))),
            raw=dict(payload),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _bad(f"model info {payload!r}") from exc
