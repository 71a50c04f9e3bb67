"""Inference backends behind one protocol (`Backend`), chosen by `settings.backend`."""

from __future__ import annotations

from service.gateway.backends.base import Backend, TopK, top_k_from_probs
from service.gateway.modelinfo import ModelInfo
from service.gateway.settings import Settings

__all__ = ["Backend", "TopK", "build_backend", "top_k_from_probs"]


def build_backend(settings: Settings, model: ModelInfo) -> Backend:
    """The backend `settings.backend` names, not yet started."""
    if settings.backend == "triton":
        from service.gateway.backends.triton import TritonBackend

        return TritonBackend(settings, model.spec)
    from service.gateway.backends.embedded import EmbeddedBackend

    return EmbeddedBackend(
        model.onnx_path,
        model.spec,
        version=settings.model_version,
        threads=settings.inference_workers,
        streams=settings.max_concurrent_batches or settings.inference_workers,
        spinning=settings.inference_spinning,
        rewrite_graph=settings.inference_rewrite_graph,
        warm_up_batch=min(settings.max_batch_size, model.spec.max_batch_size),
    )
