"""Turn one `run_all` result into Markdown (tables, goals with their ratios) and a PNG."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

SERVICES = ("gateway", "gateway_tuned", "torchserve", "plain_fastapi")
TITLES = {"gateway": "gateway", "gateway_tuned": "gateway (tuned)", "torchserve": "TorchServe",
          "plain_fastapi": "plain FastAPI"}


def _point(result: dict[str, Any], service: str, photos: str, c: int) -> dict[str, Any] | None:
    for point in result["points"]:
        if (point["service"], point["photos"], point["concurrency"]) == (service, photos, c):
            summary: dict[str, Any] = point["summary"]
            return summary
    return None


def requests_per_s(summary: Mapping[str, Any] | None) -> float:
    """A `ca-serve bench` summary's requests/s; NaN without one."""
    return float(summary["throughput"]["requests_per_s"]) if summary else math.nan


def latency_ms(summary: Mapping[str, Any] | None, key: str) -> float:
    """A summary's latency percentile `key` ("p50", "p99"); NaN without one."""
    if not summary or not summary["latency_ms"]:
        return math.nan
    return float(summary["latency_ms"][key])


# The ceilings the goals use: plain Pillow, with JPEG draft at the gateway's scale for
# 12 MP phone photos (the ceiling assumes plain Pillow decoding; a server that decodes
# faster is allowed to beat it).
WEB_CEILING, PHONE_CEILING = "web_plain_pillow", "phone_plain_pillow_draft"
BASELINE_ENGINE = "onnxruntime"  # the ceiling's engine before OpenVINO: a fixed bar


def _f(value: float, digits: int = 1) -> str:
    return "–" if math.isnan(value) else f"{value:.{digits}f}"


class Goal(NamedTuple):
    """One goal row: the single-run value, and the paired rounds' median where measured."""

    goal: str
    measured: str
    met: bool | None  # None where a number is missing
    paired: str = "–"
    paired_met: bool | None = None


# How each paired-rounds value prints (`benchmarks.paired.round_ratios` keys).
PAIRED_FORMATS = {"c32_of_ceiling": "{:.0%}", "c32_of_ort_ceiling": "{:.2f}",
                  "c1_p50_ms": "{:.1f} ms"}


def _judge(value: float, limit: float, above: bool) -> bool | None:
    return None if math.isnan(value) else (value >= limit if above else value <= limit)


def served_engine(result: dict[str, Any], gw: str = "gateway") -> str:
    """The engine gateway column `gw` served on (as its /readyz said)."""
    return str((result.get("served_engines") or {}).get(gw, BASELINE_ENGINE))


def engine_ceiling(result: dict[str, Any], engine: str) -> dict[str, Any]:
    """`engine`'s derived ceilings from the run's ceiling measurement ({} if not run)."""
    found: dict[str, Any] = result["ceiling"]["engines"].get(engine, {}).get("ceiling", {})
    return found


def _rate(ceiling: dict[str, Any], key: str) -> float:
    return float(ceiling[key]["images_per_s"]) if key in ceiling else math.nan


def goals(result: dict[str, Any], gw: str = "gateway") -> list[Goal]:
    """The goal rows for gateway column `gw` (paired values only for the main gateway)."""
    engine = served_engine(result, gw)
    web_ceiling = _rate(engine_ceiling(result, engine), WEB_CEILING)
    ort_ceiling = _rate(engine_ceiling(result, BASELINE_ENGINE), WEB_CEILING)
    paired = (result.get("paired") or {}).get("medians", {}) if gw == "gateway" else {}

    def p(service: str, photos: str, c: int) -> dict[str, Any] | None:
        return _point(result, service, photos, c)

    rows: list[Goal] = []

    def add(goal: str, value: float, limit: float, text: str, above: bool = True,
            paired_key: str = "") -> None:
        row = Goal(goal, text, _judge(value, limit, above))
        spread = paired.get(paired_key)
        if spread:
            fmt = PAIRED_FORMATS.get(paired_key, "{:.2f}")
            row = row._replace(
                paired=f"{fmt.format(spread['median'])} ({fmt.format(spread['min'])} to "
                       f"{fmt.format(spread['max'])}, {spread['n']} round"
                       f"{'s' if spread['n'] != 1 else ''})",
                paired_met=_judge(spread["median"], limit, above))
        rows.append(row)

    gw32, ts32 = requests_per_s(p(gw, "web", 32)), requests_per_s(p("torchserve", "web", 32))
    add("web c=32 >= 2.0x TorchServe", gw32 / ts32, 2.0, f"{gw32 / ts32:.2f}x",
        paired_key="c32_vs_torchserve")
    add("web c=32 >= 1.05x the ONNX Runtime 2-core ceiling", gw32 / ort_ceiling, 1.05,
        f"{gw32:.1f} / {ort_ceiling:.1f} = {gw32 / ort_ceiling:.2f}x",
        paired_key="c32_of_ort_ceiling")
    add(f"web c=32 >= 90% of the 2-core ceiling on the engine served ({engine})",
        gw32 / web_ceiling, 0.9, f"{gw32:.1f} / {web_ceiling:.1f} = {gw32 / web_ceiling:.0%}",
        paired_key="c32_of_ceiling")
    gw8, ts8 = p(gw, "web", 8), p("torchserve", "web", 8)
    add("web c=8 >= 4x TorchServe throughput", requests_per_s(gw8) / requests_per_s(ts8), 4.0,
        f"{requests_per_s(gw8) / requests_per_s(ts8):.2f}x", paired_key="c8_vs_torchserve")
    add("web c=8 p99 < 0.4 of TorchServe's", latency_ms(gw8, "p99") / latency_ms(ts8, "p99"),
        0.4, f"{latency_ms(gw8, 'p99'):.0f} ms vs {latency_ms(ts8, 'p99'):.0f} ms "
        f"({latency_ms(gw8, 'p99') / latency_ms(ts8, 'p99'):.2f})", above=False,
        paired_key="c8_p99_vs_torchserve")
    p50 = latency_ms(p(gw, "web", 1), "p50")
    add("web c=1 p50 <= 7 ms", p50, 7.0, f"{p50:.1f} ms", above=False, paired_key="c1_p50_ms")
    ph8, tsph8 = requests_per_s(p(gw, "phone", 8)), requests_per_s(p("torchserve", "phone", 8))
    add("phone c=8 >= 3.5x TorchServe", ph8 / tsph8, 3.5, f"{ph8 / tsph8:.2f}x")
    memory = (result.get("memory") or {}) if gw == "gateway" else {}
    keys = sorted((k for k in memory if k.startswith("after_")),
                  key=lambda k: int(k.split("_")[1]))
    if len(keys) == 2:
        growth = memory[keys[1]] - memory[keys[0]]
        add(f"RSS growth {keys[0][6:-3]} -> {keys[1][6:-3]} requests <= 50 MB", growth, 50.0,
            f"{memory[keys[0]]:.0f} -> {memory[keys[1]]:.0f} MB (+{growth:.0f})", above=False)
    rss = result.get("rss_mb", {})
    if "torchserve" in rss and gw in rss:
        add("gateway RSS < TorchServe RSS", rss[gw], rss["torchserve"],
            f"{rss[gw]:.0f} MB vs {rss['torchserve']:.0f} MB", above=False)
    baseline = next((g for g in ("gateway", "gateway_tuned") if g != gw and g in rss
                     and served_engine(result, g) == BASELINE_ENGINE), None)
    if baseline and engine != BASELINE_ENGINE and gw in rss:
        add("gateway RSS <= the ONNX Runtime gateway's", rss[gw], rss[baseline],
            f"{rss[gw]:.0f} MB vs {rss[baseline]:.0f} MB", above=False)
    return rows


def _mark(met: bool | None) -> str:
    return "–" if met is None else ("yes" if met else "**no**")


def paired_section(paired: dict[str, Any]) -> list[str]:
    """Markdown for `benchmarks.paired`: each round between its two ceiling probes."""
    lines = ["", "## Paired rounds (drift control)", "",
             f"Each round loads web photos for {paired['duration_s']:g} s per point between two "
             "ceiling probes (each engine on 1 thread + plain Pillow); its ratios use the mean "
             f"of those probes: the ceiling of the engine served ({paired.get('served', '?')}) "
             "and ONNX Runtime's. The goals table shows the medians.", "",
             "| round | ceilings before -> after (images/s) | ceiling | ORT ceiling "
             "| gateway c=32 | of ceiling | / ORT ceiling | / TorchServe | c=8 / TorchServe "
             "| c=8 p99 / TorchServe's | c=1 p50 ms |",
             "|" + " --- |" * 11]
    probes = paired["probes"]
    for index, r in enumerate(paired["rounds"]):
        lines.append(
            f"| {index + 1} | {_rates(probes[index])} -> {_rates(probes[index + 1])} | "
            f"{_f(r['ceiling'])} | {_f(r['ort_ceiling'])} | {_f(r['gateway_c32'])} "
            f"| {_f(r['c32_of_ceiling'] * 100, 0)}% | {_f(r['c32_of_ort_ceiling'], 2)} "
            f"| {_f(r['c32_vs_torchserve'], 2)} | {_f(r['c8_vs_torchserve'], 2)} "
            f"| {_f(r['c8_p99_vs_torchserve'], 2)} | {_f(r['c1_p50_ms'])} |")
    return lines


def _rates(probe: dict[str, Any]) -> str:
    """A probe's ceilings, one per engine: "openvino 120.1, onnxruntime 101.3"."""
    return ", ".join(f"{name} {rate}" for name, rate in probe["ceiling"].items())


def titles(result: dict[str, Any]) -> dict[str, str]:
    """Column titles; `--tuned-title` renames the second gateway's column."""
    return {**TITLES, **({"gateway_tuned": result["tuned_title"]}
                         if result.get("tuned_title") else {})}


def markdown(result: dict[str, Any], plot_name: str) -> str:
    ceil = result["ceiling"]
    services = [s for s in SERVICES if any(p["service"] == s for p in result["points"])]
    lines = [
        f"# ca-serve benchmark, {result['date']}",
        "",
        f"- machine: {result['machine']} (shared with other work: absolute numbers are noisy, "
        f"ratios within this run hold better; load average at the end "
        f"{result['load_average_end']})",
        "- model: CA-MobileNetV2, the same seeded checkpoint for every service; "
        + ", ".join(f"{name} {version}" for name, version in ceil["versions"].items())
        + f", Pillow {ceil['pillow']}",
        f"- load: `ca-serve bench` closed loop on loopback, {result['duration_s']:g} s per point "
        f"after a warm-up of `concurrency` requests; one image per request (raw JPEG body); "
        f"the load generator shares the 2 cores",
        f"- gateway settings: {result['gateway_env'] or 'defaults'}"
        + (f"; gateway (tuned): {result['tuned_env']}" if result.get("tuned_env") else "")
        + (f"; TorchServe: {result['torchserve_config']}" if result["torchserve_config"] else ""),
    ]
    if result.get("label"):
        lines.append(f"- note: {result['label']}")
    lines += [f"- {note}" for note in result.get("notes", [])]
    lines += ["", "## HTTP, answered requests/s (p50 / p99 ms of the answered)", ""]
    header = "| photos | concurrency | " + " | ".join(titles(result)[s] for s in services) + " |"
    lines += [header, "|" + " --- |" * (2 + len(services))]
    for photos in ("web", "phone"):
        for c in (1, 8, 32):
            cells = []
            for service in services:
                s = _point(result, service, photos, c)
                cells.append(cell(s))
            lines.append(f"| {photos} | {c} | " + " | ".join(cells) + " |")
    lines += ["", "## Ceiling (in-process, same run)", "", "| what | value |", "| --- | --- |"]
    for photos, paths in ceil["preprocess_ms"].items():
        for path, ms in paths.items():
            lines.append(f"| preprocess {photos}, {path.replace('_', ' ')} | {ms} ms/photo |")
    for name, measured in ceil["engines"].items():
        lines += ceiling_rows(name, measured)
    served = {served_engine(result, gw) for gw in ("gateway", "gateway_tuned") if gw in services}
    lines.append(f"| engine served | {', '.join(sorted(served))} |")
    for gw in (s for s in ("gateway", "gateway_tuned") if s in services):
        lines += ["", f"## Goals, {titles(result)[gw]}", "",
                  "| goal | measured (main points) | met | paired rounds: median (range) "
                  "| met |", "| --- | --- | --- | --- | --- |"]
        for row in goals(result, gw):
            lines.append(f"| {row.goal} | {row.measured} | {_mark(row.met)} | {row.paired} "
                         f"| {_mark(row.paired_met)} |")
    if result.get("paired"):
        lines += paired_section(result["paired"])
    if result.get("rss_mb"):
        lines += ["", "RSS after the load points (MB, whole process group): " + ", ".join(
            f"{titles(result).get(k, k)} {v:.0f}" for k, v in result["rss_mb"].items())]
    if result.get("memory"):
        lines.append("Fresh gateway memory run (MB): " + ", ".join(
            f"{k.removesuffix('_mb')} {v:.0f}" for k, v in result["memory"].items()))
    lines += ["", f"![throughput and p99]({plot_name})", ""]
    return "\n".join(lines)


def cell(summary: dict[str, Any] | None) -> str:
    """`**ok req/s** (p50 / p99 ms)`, and the share of refused or failed requests (503s
    from admission's queue-wait budget, at closed-loop points beyond capacity)."""
    if not summary:
        return "–"
    text = (f"**{_f(requests_per_s(summary))}** ({_f(latency_ms(summary, 'p50'), 0)} / "
            f"{_f(latency_ms(summary, 'p99'), 0)})")
    counts = summary.get("requests") or {}
    failed, total = counts.get("failed", 0), counts.get("total", 0)
    return text + (f", {failed / total:.0%} failed" if failed else "")


def ceiling_rows(name: str, measured: dict[str, Any]) -> list[str]:
    """Table rows for one engine's ceiling measurement."""
    rows = [f"| {name}, batch {p['batch']}, {p['threads']} thread(s) | {p['images_per_s']} "
            f"images/s ({p['core_ms_per_image']} core-ms/image) |" for p in measured["points"]]
    derived, streams = measured["ceiling"], measured["streams"]
    best = derived["best"]
    rows.append(f"| {name}, best cost | {best['core_ms_per_image']} core-ms/image "
                f"(batch {best['batch']}, {best['threads']} thread(s)) |")
    rows.append(f"| {name}, {streams['streams']} concurrent 1-thread streams, batch "
                f"{streams['batch']} (as the gateway runs under load; not the goals' ceiling) "
                f"| {streams['images_per_s']} images/s ({streams['core_ms_per_image']} "
                f"core-ms/image) |")
    for key in ("web_plain_pillow", "web_gateway_draft", "phone_plain_pillow_draft",
                "phone_gateway_draft", "web_concurrent_streams", "phone_concurrent_streams"):
        rows.append(f"| {name}, 2-core ceiling, {key.replace('_', ' ')} | "
                    f"{derived[key]['images_per_s']} images/s |")
    return rows


def plot(result: dict[str, Any], path: Path) -> None:
    """Two panels per photo set: requests/s and p99 by concurrency, one bar per service."""
    services = [s for s in SERVICES if any(p["service"] == s for p in result["points"])]
    figure = Figure(figsize=(12, 7), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 2)
    colours = {"gateway": "#2a9d8f", "gateway_tuned": "#264653", "torchserve": "#e9c46a",
               "plain_fastapi": "#e76f51"}
    width = 0.8 / max(1, len(services))
    ceil = engine_ceiling(result, served_engine(result))
    for column, photos in enumerate(("web", "phone")):
        for row, (metric, label) in enumerate((("rps", "requests/s"), ("p99", "p99 latency (ms)"))):
            ax = axes[row][column]
            for i, service in enumerate(services):
                values = []
                for c in (1, 8, 32):
                    s = _point(result, service, photos, c)
                    values.append(requests_per_s(s) if metric == "rps" else latency_ms(s, "p99"))
                xs = [x + i * width for x in range(3)]
                ax.bar(xs, values, width, label=titles(result)[service], color=colours[service])
            ax.set_xticks([x + width * (len(services) - 1) / 2 for x in range(3)],
                          ["c=1", "c=8", "c=32"])
            ax.set(title=f"{photos} photos: {label}", ylabel=label)
            if metric == "rps":
                key = WEB_CEILING if photos == "web" else PHONE_CEILING
                ax.axhline(_rate(ceil, key), color="#555555", linestyle="--",
                           label=f"2-core ceiling ({served_engine(result)})")
            ax.grid(axis="y", alpha=0.3)
            ax.legend(loc="best", fontsize=8)
    figure.suptitle(f"ca-serve vs peers, {result['date']} ({result['machine']})", fontsize=10)
    figure.savefig(path, dpi=80)
