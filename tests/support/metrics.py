"""Reading a Prometheus registry in tests: one sample, or a histogram's buckets."""

from __future__ import annotations

from prometheus_client import CollectorRegistry


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def at_most(registry: CollectorRegistry, histogram: str, bound_s: float) -> float:
    """Observations of an unlabelled histogram in its buckets up to `bound_s` (the largest
    bucket bound not above it)."""
    buckets = {
        float(s.labels["le"]): s.value
        for metric in registry.collect()
        for s in metric.samples
        if s.name == f"{histogram}_bucket"
    }
    return buckets[max(le for le in buckets if le <= bound_s)]
