"""ONNX Runtime on the graph as exported against the graph the embedded backend serves
(`service.gateway.backends.blocked_layout`), interleaved so that drift hits both alike.

Each round times each configuration (threads x batch) on both graphs for `--seconds`,
alternating which goes first. Prints the median ms per image of each and the median of
the per-round ratios (rewritten / exported; below 1 is faster), with their range.

`.venv/bin/python -m benchmarks.graph_rewrite [--rounds 8] [--seconds 1]
    [--config 1x1 --config 1x4 --config 2x1]`   (threads x batch)
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from benchmarks import assets as assets_mod
from benchmarks.ceiling import timed
from service.gateway.backends import blocked_layout
from service.gateway.backends.embedded import open_session
from service.spec import ModelSpec

Feed = dict[str, NDArray[np.uint8]]


def ms_per_image(session: ort.InferenceSession, feed: Feed, seconds: float) -> float:
    times = timed(lambda: session.run(None, feed), min_s=seconds, min_runs=1, max_runs=10**6)
    batch = len(next(iter(feed.values())))
    return statistics.fmean(times) * 1000 / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--config", action="append", help="THREADSxBATCH (repeatable)")
    args = parser.parse_args()
    configs = [tuple(int(v) for v in c.split("x")) for c in args.config or ["1x1", "1x4", "2x1"]]
    found = assets_mod.ensure()
    spec = ModelSpec.load(found.repository / assets_mod.ONNX_MODEL_NAME)
    graphs = {
        "exported": found.onnx.read_bytes(),
        "rewritten": blocked_layout.load_for_cpu(found.onnx),
    }
    rng = np.random.default_rng(0)
    for threads, batch in configs:
        sessions = {
            name: open_session(graph, threads=threads, spinning=True)
            for name, graph in graphs.items()
        }
        feed = {spec.input_name: rng.integers(0, 255, (batch, *spec.input_shape), dtype=np.uint8)}
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for round_ in range(args.rounds):
            order = list(sessions) if round_ % 2 == 0 else list(reversed(sessions))
            for name in order:
                times[name].append(ms_per_image(sessions[name], feed, args.seconds))
        ratios = [new / old for new, old in zip(times["rewritten"], times["exported"], strict=True)]
        print(
            f"{threads} thread(s), batch {batch}: exported "
            f"{statistics.median(times['exported']):.2f} ms/image, rewritten "
            f"{statistics.median(times['rewritten']):.2f}; ratio median "
            f"{statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f}, "
            f"{args.rounds} rounds)",
            flush=True,
        )


if __name__ == "__main__":
    main()
