"""Paired rounds: each round's goal ratios use the ceiling probed beside it."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import pytest

from benchmarks import paired, report
from benchmarks.servers import Server
from service.spec import ModelSpec


def summary(rps: float, p50: float = 10.0, p99: float = 20.0) -> dict[str, Any]:
    return {"throughput": {"requests_per_s": rps}, "latency_ms": {"p50": p50, "p99": p99}}


def probe(ort_ms: float, pre_ms: float = 3.0, cores: int = 2) -> dict[str, Any]:
    return {"cores": cores, "ort_core_ms": ort_ms, "preprocess_ms": pre_ms,
            "ceiling": cores * 1000 / (ort_ms + pre_ms)}


def test_a_round_uses_the_ceiling_between_its_two_probes() -> None:
    loads = {("gateway", "web", 32): summary(100.0), ("torchserve", "web", 32): summary(50.0),
             ("plain_fastapi", "web", 32): summary(25.0),
             ("gateway", "web", 8): summary(90.0, p99=100.0),
             ("torchserve", "web", 8): summary(30.0, p99=400.0),
             ("gateway", "web", 1): summary(60.0, p50=14.0)}
    # Costs 10 + 3 before and 14 + 3 after: 15 core-ms per image on average, so a ceiling of
    # 2000 / 15 = 133.3, not the mean of the two rates (143.6).
    got = paired.round_ratios(probe(10.0), probe(14.0), loads)
    assert got["ceiling"] == pytest.approx(2000 / 15)
    assert got["c32_of_ceiling"] == pytest.approx(100 / (2000 / 15))
    assert got["c32_vs_torchserve"] == pytest.approx(2.0)
    assert got["c32_vs_plain_fastapi"] == pytest.approx(4.0)
    assert got["c8_vs_torchserve"] == pytest.approx(3.0)
    assert got["c8_p99_vs_torchserve"] == pytest.approx(0.25)
    assert got["c1_p50_ms"] == 14.0


def test_a_missing_peer_leaves_its_ratios_out_of_the_medians() -> None:
    alone = {("gateway", "web", 32): summary(80.0), ("gateway", "web", 1): summary(50.0)}
    first = paired.round_ratios(probe(12.0), probe(12.0), alone)
    assert math.isnan(first["c32_vs_torchserve"])
    second = paired.round_ratios(probe(12.0), probe(12.0),
                                 {**alone, ("torchserve", "web", 32): summary(40.0)})
    spread = paired.medians([first, second])
    assert spread["c32_vs_torchserve"] == {"median": 2.0, "min": 2.0, "max": 2.0, "n": 1}
    assert spread["c32_of_ceiling"]["n"] == 2
    assert "c8_vs_torchserve" not in spread


class FakeProbe:
    """Probes that report a machine getting slower round by round."""

    def __init__(self) -> None:
        self.calls = 0

    def measure(self) -> dict[str, Any]:
        self.calls += 1
        return probe(10.0 + self.calls)


def test_rounds_load_every_started_service_between_probes(tmp_path: Path) -> None:
    servers = {name: Server(name=name, argv=[], url="http://127.0.0.1:1", ready_path="/",
                            log=tmp_path / f"{name}.log")
               for name in ("gateway", "torchserve")}
    calls: list[tuple[str, int, float]] = []

    def load(server: Server, images: Path, c: int, out: Path, duration_s: float
             ) -> dict[str, Any]:
        calls.append((server.name, c, duration_s))
        return summary(100.0 if server.name == "gateway" else 40.0)

    fake = FakeProbe()
    result = paired.run(servers, fake, tmp_path, 2, 3.0, tmp_path, load)  # type: ignore[arg-type]
    assert fake.calls == 3  # one before each round and one after the last
    per_round = [(s, c) for s, photos, c in paired.POINTS if s in servers]
    assert [(s, c) for s, c, _ in calls] == per_round * 2
    assert {d for _, _, d in calls} == {3.0}
    # Round 2 sits between the probes of 12 and 13 ms: 2000 / 15.5.
    assert result["rounds"][1]["ceiling"] == pytest.approx(2000 / 15.5)
    assert result["medians"]["c32_vs_torchserve"]["median"] == pytest.approx(2.5)


def test_the_probe_times_the_served_model_and_plain_pillow(
    model_repository: Path, photos: list[Path], tmp_path: Path
) -> None:
    web = tmp_path / "web"
    web.mkdir()
    for path in [p for p in photos if p.suffix.lower() == ".jpg"][:2]:
        shutil.copy(path, web / path.name)
    model_dir = model_repository / "ca_mobilenetv2_onnx"
    real = paired.CeilingProbe(model_dir / "1" / "model.onnx", ModelSpec.load(model_dir), web,
                               batch=2, seconds=0.2)
    got = real.measure()
    assert got["ort_core_ms"] > 0.5 and got["preprocess_ms"] > 0.1
    assert got["ceiling"] == pytest.approx(
        got["cores"] * 1000 / (got["ort_core_ms"] + got["preprocess_ms"]), rel=0.01)


def test_the_goals_table_shows_paired_medians_beside_the_main_points() -> None:
    ceilings = {"web_plain_pillow": {"images_per_s": 100.0},
                "phone_plain_pillow_draft": {"images_per_s": 20.0},
                "phone_gateway_draft": {"images_per_s": 22.0}}
    points = [{"service": s, "photos": "web", "concurrency": c, "summary": summary(rps)}
              for s, c, rps in (("gateway", 32, 85.0), ("torchserve", 32, 60.0),
                                ("gateway", 1, 50.0))]
    rounds = [{"c32_of_ceiling": v, "c32_vs_torchserve": 1.6, "c1_p50_ms": 14.0}
              for v in (0.88, 0.91, 0.93)]
    result = {"ceiling": {"ceiling": ceilings}, "points": points,
              "paired": {"medians": paired.medians(rounds)}}
    rows = {row.goal: row for row in report.goals(result)}
    share = rows["web c=32 >= 90% of the 2-core ceiling"]
    assert (share.met, share.paired_met) == (False, True)  # 85% alone, median 91%
    assert share.paired == "91% (88% to 93%, 3 rounds)"
    assert rows["web c=1 p50 < 15 ms"].paired == "14.0 ms (14.0 ms to 14.0 ms, 3 rounds)"
    assert rows["web c=8 >= 2x TorchServe throughput"].paired_met is None
