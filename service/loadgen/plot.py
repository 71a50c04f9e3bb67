"""The `--plot` PNG: latency histogram, latency CDF, and throughput over time.

Uses matplotlib's object API on the Agg canvas: no pyplot global state, no display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from service.loadgen.stats import Sample


def write_plot(samples: list[Sample], summary: dict[str, Any], path: Path) -> None:
    """Write a 3-panel PNG to `path`; panels say so plainly when there is nothing to draw."""
    figure = Figure(figsize=(15, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    histogram, cdf, throughput = figure.subplots(1, 3)
    latencies = np.sort(np.array([s.latency_s for s in samples if s.ok]) * 1000.0)
    percentiles = summary["latency_ms"]

    if latencies.size:
        histogram.hist(latencies, bins=min(60, max(10, latencies.size // 20)), color="#3a7bd5")
        cdf.plot(latencies, np.arange(1, latencies.size + 1) / latencies.size, color="#3a7bd5")
        for key, colour in (("p50", "#2a9d8f"), ("p95", "#e9c46a"), ("p99", "#e76f51")):
            for axes in (histogram, cdf):
                axes.axvline(percentiles[key], color=colour, linestyle="--",
                             label=f"{key} {percentiles[key]:.1f} ms")
        histogram.legend(loc="upper right")
    else:
        for axes in (histogram, cdf):
            axes.text(0.5, 0.5, "no successful requests", ha="center", transform=axes.transAxes)
    histogram.set(title="Latency histogram (ok requests)", xlabel="latency (ms)",
                  ylabel="requests")
    cdf.set(title="Latency CDF", xlabel="latency (ms)", ylabel="fraction of requests",
            ylim=(0, 1.01))
    cdf.grid(alpha=0.3)

    bins = summary["timeline"]
    edges = [b["t_s"] for b in bins] + [bins[-1]["t_s"] + bins[-1]["width_s"]]
    for key, colour, label in (("images_per_s", "#3a7bd5", "images/s (ok)"),
                               ("failed_per_s", "#e76f51", "failed requests/s")):
        values = [b[key] for b in bins]
        throughput.stairs(values, edges, color=colour, label=label, linewidth=2, baseline=None)
    throughput.set(title="Throughput over time", xlabel="time (s)", ylabel="per second",
                   ylim=(0, None))
    throughput.grid(alpha=0.3)
    throughput.legend(loc="best")

    config = summary["config"]
    figure.suptitle(
        f"ca-serve bench: {config['target']}, concurrency {config['concurrency']}, "
        f"{config['batch_files']} image(s)/request, "
        f"{summary['throughput']['images_per_s']:.1f} images/s"
    )
    figure.savefig(path, dpi=100)
