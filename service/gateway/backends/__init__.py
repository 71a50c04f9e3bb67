"""Inference backends behind one protocol (`Backend`), chosen by `settings.backend`."""

from __future__ import annotations

from service.gateway.backends.base import (
    Backend,
    ModelId,
    TopK,
    engine_of,
    spare_batches_of,
    top_k_from_probs,
)
from service.gateway.modelinfo import ModelInfo
from service.gateway.settings import EffectiveSettings, Settings

__all__ = [
    "Backend", "ModelId", "TopK", "build_backend", "engine_of", "spare_batches_of",
    "top_k_from_probs",
]


def build_backend(settings: Settings, model: ModelInfo, effective: EffectiveSettings) -> Backend:
    """The backend `settings.backend` names, not yet started. Every capacity value comes
    from `effective` (see `settings.resolve`), the rest from `settings` by name."""
    if settings.backend == "triton":
        from service.gateway.backends.triton import TritonBackend

        return TritonBackend(
            model.spec,
            url=settings.triton_url,
            protocol=settings.triton_protocol,
            model=settings.model_name,
            version=settings.model_version,
            use_classification=settings.triton_use_classification,
            timeout_s=settings.request_timeout_s,
            health_interval_s=settings.triton_health_interval_s,
            resolve_interval_s=settings.triton_resolve_interval_s,
            max_batch_size=effective.max_batch_size,
        )
    from service.gateway.backends.embedded import EmbeddedBackend

    return EmbeddedBackend(
        model.onnx_path,
        model.spec,
        version=model.version,
        threads=effective.inference_threads,
        streams=effective.concurrent_batches,
        spare_batches=effective.spare_batches,
        runtime=settings.embedded_runtime,
        spinning=settings.inference_spinning,
        rewrite_graph=settings.inference_rewrite_graph,
        warm_up_batch=effective.max_batch_size,
    )
