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


def probe(ort_ms: float, pre_ms: float = 3.0, cores: int = 2,
          ov_ms: float | None = None) -> dict[str, Any]:
    core_ms = {"onnxruntime": ort_ms, **({"openvino": ov_ms} if ov_ms is not None else {})}
    return {"cores": cores, "core_ms": core_ms, "preprocess_ms": pre_ms,
            "ceiling": {name: cores * 1000 / (ms + pre_ms) for name, ms in core_ms.items()}}


def test_a_round_uses_the_ceiling_between_its_two_probes() -> None:
    loads = {("gateway", "web", 32): summary(100.0), ("torchserve", "web", 32): summary(50.0),
             ("gateway", "web", 8): summary(90.0, p99=100.0),
             ("torchserve", "web", 8): summary(30.0, p99=400.0),
             ("gateway", "web", 1): summary(60.0, p50=14.0)}
    # ONNX Runtime costs 10 + 3 before and 14 + 3 after: 15 core-ms per image on average,
    # so a ceiling of 2000 / 15 = 133.3, not the mean of the two rates (143.6). OpenVINO,
    # the engine served: 7 + 3 and 9 + 3, so 2000 / 11.
    got = paired.round_ratios(probe(10.0, ov_ms=7.0), probe(14.0, ov_ms=9.0), loads,
                              served="openvino")
    assert got["ceiling"] == pytest.approx(2000 / 11)
    assert got["ort_ceiling"] == pytest.approx(2000 / 15)
    assert got["c32_of_ceiling"] == pytest.approx(100 / (2000 / 11))
    assert got["c32_of_ort_ceiling"] == pytest.approx(100 / (2000 / 15))
    assert got["c32_vs_torchserve"] == pytest.approx(2.0)
    assert got["c8_vs_torchserve"] == pytest.approx(3.0)
    assert got["c8_p99_vs_torchserve"] == pytest.approx(0.25)
    assert got["c1_p50_ms"] == 14.0


def test_a_missing_peer_leaves_its_ratios_out_of_the_medians() -> None:
    alone = {("gateway", "web", 32): summary(80.0), ("gateway", "web", 1): summary(50.0)}
    first = paired.round_ratios(probe(12.0), probe(12.0), alone, served="onnxruntime")
    assert math.isnan(first["c32_vs_torchserve"])
    second = paired.round_ratios(probe(12.0), probe(12.0),
                                 {**alone, ("torchserve", "web", 32): summary(40.0)},
                                 served="onnxruntime")
    spread = paired.medians([first, second])
    assert spread["c32_vs_torchserve"] == {"median": 2.0, "min": 2.0, "max": 2.0, "n": 1}
    assert spread["c32_of_ceiling"]["n"] == 2
    assert "c8_vs_torchserve" not in spread
    # An engine that was not probed has no ceiling, rather than a wrong one.
    unprobed = paired.round_ratios(probe(12.0), probe(12.0), alone, served="openvino")
    assert math.isnan(unprobed["c32_of_ceiling"]) and unprobed["c32_of_ort_ceiling"] > 0


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
    result = paired.run(servers, fake, tmp_path, 2, 3.0, tmp_path, load,  # type: ignore[arg-type]
                        served="onnxruntime")
    assert fake.calls == 3  # one before each round and one after the last
    per_round = [(s, c) for s, photos, c in paired.POINTS if s in servers]
    assert [(s, c) for s, c, _ in calls] == per_round * 2
    assert {d for _, _, d in calls} == {3.0}
    # Round 2 sits between the probes of 12 and 13 ms: 2000 / 15.5.
    assert result["rounds"][1]["ceiling"] == pytest.approx(2000 / 15.5)
    assert result["medians"]["c32_vs_torchserve"]["median"] == pytest.approx(2.5)


def test_the_probe_times_each_engine_and_plain_pillow(
    model_repository: Path, photos: list[Path], tmp_path: Path
) -> None:
    web = tmp_path / "web"
    web.mkdir()
    for path in [p for p in photos if p.suffix.lower() == ".jpg"][:2]:
        shutil.copy(path, web / path.name)
    model_dir = model_repository / "ca_mobilenetv2_onnx"
    real = paired.CeilingProbe(model_dir / "1" / "model.onnx", ModelSpec.load(model_dir), web,
                               batches={"openvino": 1, "onnxruntime": 2}, seconds=0.2)
    got = real.measure()
    assert set(got["core_ms"]) == set(got["ceiling"]) == {"openvino", "onnxruntime"}
    assert got["preprocess_ms"] > 0.1
    for name, ms in got["core_ms"].items():
        assert ms > 0.5
        assert got["ceiling"][name] == pytest.approx(
            got["cores"] * 1000 / (ms + got["preprocess_ms"]), rel=0.01)


def engine_result(web: float, phone: float = 20.0) -> dict[str, Any]:
    return {"ceiling": {"web_plain_pillow": {"images_per_s": web},
                        "phone_plain_pillow_draft": {"images_per_s": phone}}}


def test_the_goals_table_shows_paired_medians_beside_the_main_points() -> None:
    points = [{"service": s, "photos": "web", "concurrency": c, "summary": summary(rps)}
              for s, c, rps in (("gateway", 32, 85.0), ("torchserve", 32, 40.0),
                                ("gateway", 1, 50.0))]
    rounds = [{"c32_of_ceiling": v, "c32_vs_torchserve": 2.1, "c1_p50_ms": 6.5}
              for v in (0.88, 0.91, 0.93)]
    result = {"ceiling": {"engines": {"openvino": engine_result(100.0),
                                      "onnxruntime": engine_result(80.0)}},
              "served_engines": {"gateway": "openvino"}, "points": points,
              "paired": {"medians": paired.medians(rounds)}}
    rows = {row.goal: row for row in report.goals(result)}
    share = rows["web c=32 >= 90% of the 2-core ceiling on the engine served (openvino)"]
    assert (share.met, share.paired_met) == (False, True)  # 85% alone, median 91%
    assert share.paired == "91% (88% to 93%, 3 rounds)"
    # Against ONNX Runtime's ceiling (80): 85 / 80 = 1.06, met.
    assert rows["web c=32 >= 1.05x the ONNX Runtime 2-core ceiling"].met is True
    assert rows["web c=32 >= 2.0x TorchServe"].met is True  # 85 / 40
    assert rows["web c=1 p50 <= 7 ms"].paired == "6.5 ms (6.5 ms to 6.5 ms, 3 rounds)"
    assert rows["web c=8 >= 4x TorchServe throughput"].paired_met is None


def test_rss_is_compared_with_a_gateway_on_onnx_runtime_when_one_ran() -> None:
    result = {"ceiling": {"engines": {"onnxruntime": engine_result(80.0)}},
              "served_engines": {"gateway": "openvino", "gateway_tuned": "onnxruntime"},
              "points": [], "rss_mb": {"gateway": 390.0, "gateway_tuned": 380.0}}
    rows = {row.goal: row for row in report.goals(result)}
    assert rows["gateway RSS <= the ONNX Runtime gateway's"].met is False
    tuned = {row.goal for row in report.goals(result, "gateway_tuned")}
    assert "gateway RSS <= the ONNX Runtime gateway's" not in tuned  # it is the baseline
