"""The plan check's rule, on made-up probabilities: tolerance, top-1, near-ties."""

from __future__ import annotations

import numpy as np

from service.model.plan_check import PLAN_PROBS_ATOL, TOP1_TIE_RTOL, compare


def probs(*rows: list[float]) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


REFERENCE = probs([0.45, 0.35, 0.20], [0.34, 0.33, 0.33])


def test_fp16_sized_differences_with_the_same_winners_pass() -> None:
    result = compare(probs([0.42, 0.37, 0.21], [0.345, 0.33, 0.325]), REFERENCE)
    assert result["ok"] and result["top1_same"] == 2
    assert abs(result["max_abs_diff"] - 0.03) < 1e-6


def test_another_winner_fails_even_within_the_tolerance() -> None:
    result = compare(probs([0.39, 0.41, 0.20], [0.34, 0.33, 0.33]), REFERENCE)
    assert result["max_abs_diff"] <= PLAN_PROBS_ATOL
    assert not result["ok"] and result["top1_same"] == 1


def test_a_near_tie_the_reference_cannot_separate_may_swap() -> None:
    # Row 2: 0.33 is within TOP1_TIE_RTOL of 0.34 in the reference, so a plan that picks
    # class 1 agrees; class 1 at 0.35 in row 1 is no tie with 0.45.
    assert 0.34 * (1 - TOP1_TIE_RTOL) <= 0.33 and 0.45 * (1 - TOP1_TIE_RTOL) > 0.35
    assert compare(probs([0.45, 0.35, 0.20], [0.33, 0.34, 0.33]), REFERENCE)["ok"]


def test_too_far_off_or_not_finite_or_misshapen_fails() -> None:
    assert not compare(probs([0.60, 0.20, 0.20], [0.34, 0.33, 0.33]), REFERENCE)["ok"]
    assert not compare(probs([np.nan, 0.3, 0.2], [0.34, 0.33, 0.33]), REFERENCE)["ok"]
    assert "shape" in compare(probs([0.5, 0.3, 0.2]), REFERENCE)["problem"]
