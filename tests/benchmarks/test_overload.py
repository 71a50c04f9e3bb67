"""The overload benchmark's figures and verdicts, from made-up outcomes (no server)."""

from __future__ import annotations

import pytest

from benchmarks.overload import Outcome, summarize, verdicts


def outcomes(ok: int, shed: int, *, ok_s: float = 0.3, shed_s: float = 0.01,
             retry_after: bool = True, other: int = 0) -> list[Outcome]:
    return ([Outcome(200, ok_s, False, 0.0) for _ in range(ok)]
            + [Outcome(503, shed_s, retry_after, 0.0, "overloaded") for _ in range(shed)]
            + [Outcome(504, 10.0, False, 0.0, "timeout") for _ in range(other)])


def test_goodput_is_answers_per_second_against_capacity() -> None:
    summary = summarize(outcomes(300, 600), 10.0, 40.0, 0.25, 380.0, 395.0)
    assert summary["goodput_per_s"] == 30.0 and summary["goodput_of_capacity"] == 0.75
    assert summary["offered_per_s"] == 90.0 and summary["statuses"] == {"200": 300, "503": 600}
    assert summary["admitted_p99_s"] == 0.3 and summary["shed_p99_s"] == 0.01
    assert summary["generator_cpu_ms_per_request"] == pytest.approx(1000 * 0.25 * 10 / 900, 1e-3)
    assert all(verdicts(summary).values())


@pytest.mark.parametrize(("changes", "broken"), [
    ({"ok_s": 1.2}, "admitted p99 <= 1 s"),
    ({"shed_s": 0.05}, "503 p99 <= 25 ms"),
    ({"retry_after": False}, "only 200 and 503, every 503 with Retry-After"),
    ({"other": 1}, "only 200 and 503, every 503 with Retry-After"),
])
def test_each_goal_fails_on_its_own(changes: dict[str, object], broken: str) -> None:
    summary = summarize(outcomes(300, 600, **changes), 10.0, 40.0, 0.25, 380.0, 395.0)  # type: ignore[arg-type]
    assert [goal for goal, met in verdicts(summary).items() if not met] == [broken]


def test_memory_must_settle_within_30_mb() -> None:
    summary = summarize(outcomes(10, 10), 1.0, 10.0, 0.1, 380.0, 411.0)
    assert not verdicts(summary)["RSS back within 30 MB"]
