"""The export gate's arithmetic alone (numpy, no model): `verify`, `same_ranking` and
`top_k_indices` at their boundaries. `test_export_gate.py` shows the gate at work in
`build-repo`; these pin down where it draws the line."""

from __future__ import annotations

import numpy as np
import pytest

from service.model.export import (
    PROBS_ATOL,
    TOP_K,
    Agreement,
    ExportMismatch,
    same_ranking,
    top_k_indices,
    verify,
)


def reference(rows: int = 3, classes: int = 20) -> np.ndarray:
    """Well-separated scores (steps of 1e-3), a different order per row."""
    rng = np.random.default_rng(0)
    out = np.empty((rows, classes), dtype=np.float64)
    for row in range(rows):
        out[row, rng.permutation(classes)] = np.arange(classes)[::-1] * 1e-3 + 0.01
    return out


def runner(values: np.ndarray):  # type: ignore[no-untyped-def]
    def run(batch: np.ndarray) -> np.ndarray:
        return values.astype(np.float32)

    return run


BATCH = np.zeros((3, 2, 2, 3), dtype=np.uint8)


def test_agreement_reports_what_was_compared() -> None:
    ref = reference()
    agreement = verify("onnx", ref, runner(ref), BATCH)
    assert agreement == Agreement(
        form="onnx",
        max_abs_diff=pytest.approx(float(np.max(np.abs(ref.astype(np.float32) - ref)))),
        same_top_k=True,
        batch_size=3,
    )
    assert agreement.max_abs_diff < 1e-8


def test_a_shape_mismatch_is_refused_by_name() -> None:
    ref = reference()
    with pytest.raises(ExportMismatch, match=r"torchscript: output shape \(3, 19\)"):
        verify("torchscript", ref, runner(ref[:, :19]), BATCH)
    with pytest.raises(ExportMismatch, match="output shape"):
        verify("torchscript", ref, runner(ref[:2]), BATCH)


@pytest.mark.parametrize(("drift", "passes"), [(0.5 * PROBS_ATOL, True), (2 * PROBS_ATOL, False)])
def test_the_tolerance_is_where_it_says(drift: float, passes: bool) -> None:
    ref = reference()
    drifted = ref.copy()
    drifted[1, 7] += drift  # one value, ranking unchanged (steps of 1e-3)
    if passes:
        assert verify("onnx", ref, runner(drifted), BATCH).max_abs_diff == pytest.approx(
            drift, rel=1e-2
        )
    else:
        with pytest.raises(ExportMismatch, match=r"max \|diff\| 2\.00e-05 \(limit 1e-05\)"):
            verify("onnx", ref, runner(drifted), BATCH)


def test_a_changed_ranking_is_refused_even_within_tolerance() -> None:
    """Two classes 1.5e-5 apart swap places with each moved by less than the tolerance."""
    ref = reference(rows=1, classes=8)
    order = np.argsort(-ref[0])
    a, b = order[3], order[4]
    ref[0, b] = ref[0, a] - 1.5e-5
    got = ref.copy()
    got[0, a] -= 0.9 * PROBS_ATOL
    got[0, b] += 0.9 * PROBS_ATOL
    with pytest.raises(ExportMismatch, match="same top-5: False"):
        verify("onnx", ref, runner(got), BATCH[:1])


def test_same_ranking_looks_at_the_top_k_only() -> None:
    ref = reference(rows=1, classes=10)
    order = np.argsort(-ref[0])
    got = ref.copy()
    got[0, order[TOP_K]], got[0, order[TOP_K + 1]] = ref[0, order[TOP_K + 1]], ref[0, order[TOP_K]]
    assert same_ranking(got, ref)  # ranks 6 and 7 swapped: outside the top-5
    assert not same_ranking(got, ref, k=TOP_K + 1)
    swapped = ref.copy()
    swapped[0, order[0]], swapped[0, order[1]] = ref[0, order[1]], ref[0, order[0]]
    assert not same_ranking(swapped, ref)


def test_same_ranking_tolerance_is_a_parameter() -> None:
    ref = np.array([[0.5, 0.3, 0.3 - 4e-5, 0.1]])
    swapped = ref[:, [0, 2, 1, 3]]
    assert not same_ranking(swapped, ref, k=3)
    assert same_ranking(swapped, ref, k=3, atol=5e-5)
    assert same_ranking(swapped, ref, k=1)


def test_top_k_indices_are_best_first_with_ties_to_the_lower_index() -> None:
    probs = np.array([[0.1, 0.4, 0.2, 0.4, 0.3, 0.0, 0.05]])
    assert top_k_indices(probs).tolist() == [[1, 3, 4, 2, 0]]
    assert top_k_indices(probs, 2).tolist() == [[1, 3]]
    assert top_k_indices(probs[:, :3], 10).tolist() == [[1, 2, 0]]


def test_top_k_indices_keep_index_order_among_ties_in_a_full_size_row() -> None:
    probs = np.zeros((1, 1000))
    probs[0, 500:] = 0.001
    assert top_k_indices(probs).tolist() == [[500, 501, 502, 503, 504]]


def test_same_ranking_accepts_a_difference_of_exactly_the_tolerance() -> None:
    ref = np.array([[0.75, 0.5, 0.25, 0.0]])
    swapped = ref[:, [0, 2, 1, 3]]  # ranks 2 and 3 apart by exactly 0.25 (exact in binary)
    assert same_ranking(swapped, ref, k=3, atol=0.25)
    assert not same_ranking(swapped, ref, k=3, atol=0.2499)


def test_verify_accepts_a_difference_of_exactly_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.model import export

    limit = 2.0**-17  # exact in binary, so the difference below is exactly the limit
    monkeypatch.setattr(export, "PROBS_ATOL", limit)
    ref = reference()
    got = ref.astype(np.float32).astype(np.float64)
    got[0, 0] += limit
    assert np.max(np.abs(got - ref.astype(np.float32).astype(np.float64))) == limit
    ref32 = ref.astype(np.float32).astype(np.float64)
    assert verify("onnx", ref32, runner(got), BATCH).max_abs_diff == limit
    got[0, 0] += limit
    with pytest.raises(ExportMismatch):
        verify("onnx", ref32, runner(got), BATCH)


def test_verify_runs_the_candidate_on_the_batch_it_was_given() -> None:
    ref = reference()
    seen: list[np.ndarray] = []

    def candidate(batch: np.ndarray) -> np.ndarray:
        seen.append(batch)
        return ref[: len(batch)].astype(np.float32)

    assert verify("onnx", ref, candidate, BATCH).batch_size == 3
    assert len(seen) == 1 and seen[0] is BATCH
