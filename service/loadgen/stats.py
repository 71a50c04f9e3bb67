"""Samples of a load run and their summary: throughput, latency percentiles, status counts.

Latency percentiles are over successful requests only (a fast 503 is not a fast answer);
failed requests are counted by status and by error kind. Every request is exactly one of
`ok` or `failed`, and `sum(status_counts) + transport errors == total`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

PERCENTILES = (50, 90, 95, 99)


class Outcome(NamedTuple):
    """What one request came back with: its status (None when no answer came), an error
    kind when it failed, the images it carried, and the wait its `Retry-After` asked for."""

    status: str | None
    error: str | None
    images: int
    retry_after_s: float = 0.0


@dataclass(frozen=True)
class Sample:
    """One request: when it started (seconds since the run began), how long it took,
    how many images it carried, the status it got (`"200"`, `"503"`, Triton's `"OK"`; None
    when no answer came), and an error kind when it failed."""

    start_s: float
    latency_s: float
    images: int
    status: str | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def latency_ms(samples: list[Sample]) -> dict[str, float]:
    """min/mean/p50/p90/p95/p99/max in milliseconds over successful samples ({} if none)."""
    values = np.array([s.latency_s for s in samples if s.ok], dtype=np.float64) * 1000.0
    if values.size == 0:
        return {}
    summary = {"min": float(values.min()), "mean": float(values.mean())}
    for q, value in zip(PERCENTILES, np.percentile(values, PERCENTILES), strict=True):
        summary[f"p{q}"] = float(value)
    summary["max"] = float(values.max())
    return {key: round(value, 3) for key, value in summary.items()}


def timeline(samples: list[Sample], duration_s: float, bin_s: float = 1.0) -> list[dict[str, Any]]:
    """Completions per window of `bin_s` seconds (by finish time), as counts and rates.

    A final window shorter than half of `bin_s` is merged into the one before it, so the
    last point is not a noisy rate over a few milliseconds.
    """
    edges = list(np.arange(0.0, duration_s, bin_s)) or [0.0]
    if len(edges) > 1 and duration_s - edges[-1] < bin_s / 2:
        edges.pop()
    ends = [*edges[1:], max(duration_s, edges[-1] + 1e-9)]
    ok, failed, images = np.zeros(len(edges), int), np.zeros(len(edges), int), np.zeros(
        len(edges), int)
    for sample in samples:
        finished = sample.start_s + sample.latency_s
        index = min(len(edges) - 1, max(0, int(np.searchsorted(edges, finished, "right")) - 1))
        if sample.ok:
            ok[index] += 1
            images[index] += sample.images
        else:
            failed[index] += 1
    rows = []
    for i, (start, end) in enumerate(zip(edges, ends, strict=True)):
        width = max(end - start, 1e-9)
        rows.append({
            "t_s": round(float(start), 3), "width_s": round(float(width), 3),
            "ok": int(ok[i]), "failed": int(failed[i]), "images": int(images[i]),
            "images_per_s": round(float(images[i]) / width, 3),
            "failed_per_s": round(float(failed[i]) / width, 3),
        })
    return rows


def summarize(samples: list[Sample], duration_s: float, config: dict[str, Any]) -> dict[str, Any]:
    """The JSON document `ca-serve bench --out` writes."""
    ok = [s for s in samples if s.ok]
    status_counts = Counter(s.status for s in samples if s.status is not None)
    no_answer = sum(1 for s in samples if s.status is None)
    elapsed = max(duration_s, 1e-9)
    return {
        "config": config,
        "duration_s": round(duration_s, 3),
        "requests": {"total": len(samples), "ok": len(ok), "failed": len(samples) - len(ok),
                     "no_answer": no_answer},
        "images": {"total": sum(s.images for s in samples), "ok": sum(s.images for s in ok)},
        "throughput": {
            "requests_per_s": round(len(ok) / elapsed, 3),
            "images_per_s": round(sum(s.images for s in ok) / elapsed, 3),
        },
        "latency_ms": latency_ms(samples),
        "status_counts": dict(sorted(status_counts.items())),
        "errors": dict(Counter(s.error for s in samples if s.error is not None).most_common()),
        "timeline": timeline(samples, duration_s),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The human-readable report printed after a run."""
    config, requests = summary["config"], summary["requests"]
    lines = [
        f"target      {config['target']}  (concurrency {config['concurrency']}, "
        f"{config['batch_files']} image(s)/request, {summary['duration_s']:.1f} s)",
        f"requests    {requests['total']}  (ok {requests['ok']}, failed {requests['failed']})"
        f"   images ok {summary['images']['ok']}",
        f"throughput  {summary['throughput']['requests_per_s']:.1f} req/s   "
        f"{summary['throughput']['images_per_s']:.1f} images/s",
    ]
    latency = summary["latency_ms"]
    if latency:
        parts = "  ".join(f"{key} {latency[key]:.2f}"
                          for key in ("p50", "p90", "p95", "p99", "max"))
        lines.append(f"latency ms  {parts}   (mean {latency['mean']:.2f})")
    else:
        lines.append("latency ms  no successful requests")
    statuses = "  ".join(f"{k}: {v}" for k, v in summary["status_counts"].items()) or "none"
    lines.append(f"status      {statuses}")
    if summary["errors"]:
        errors = "  ".join(f"{k}: {v}" for k, v in summary["errors"].items())
        lines.append(f"errors      {errors}")
    return "\n".join(lines)
