"""The reference a version records (`verification.json`) and the check a served version
must pass against it (`service.verification`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.model.plan_check import PLAN_PROBS_ATOL
from service.spec import SpecError
from service.verification import FP16, FP32, PROBS_ATOL, Reference, compare, verification_images


def probs(seed: int = 0, classes: int = 50) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(len(verification_images()), classes))
    out = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return out.astype(np.float32)


def test_a_reference_round_trips_exactly(tmp_path: Path) -> None:
    reference = Reference.of(probs())
    (tmp_path / "verification.json").write_text(reference.to_json())
    loaded = Reference.load(tmp_path)
    assert loaded is not None and loaded.photos == reference.photos
    assert np.array_equal(loaded.probs, reference.probs)  # float32 printed exactly
    assert Reference.load(tmp_path / "absent") is None


@pytest.mark.parametrize(
    "text", ["not json", '{"photos": []}', '{"photos": ["other.jpg"], "probs": [[1.0]]}']
)
def test_a_record_that_cannot_be_checked_here_is_an_error(tmp_path: Path, text: str) -> None:
    (tmp_path / "verification.json").write_text(text)
    with pytest.raises(SpecError):
        Reference.load(tmp_path)


def test_the_check_holds_the_export_gates_line() -> None:
    reference = probs()
    assert compare(reference, reference).passed
    drifted = reference.copy()
    drifted[0, 0] += 0.5 * PROBS_ATOL
    assert compare(drifted, reference).passed
    drifted[0, 0] += 2 * PROBS_ATOL
    check = compare(drifted, reference)
    assert not check.passed and check.same_top_k and "limit 1e-05" in check.describe()
    other = probs(seed=1)
    assert not compare(other, reference).passed and not compare(other, reference).same_top_k
    assert not compare(reference[:2], reference).passed  # a missing row
    nan = reference.copy()
    nan[1, 1] = np.nan
    assert not compare(nan, reference).passed


def test_half_precision_is_held_to_the_plan_checks_limit_and_top_1() -> None:
    assert FP32.atol == PROBS_ATOL and FP32.top_k == 5
    assert FP16.atol == PLAN_PROBS_ATOL and FP16.top_k == 1
    reference = probs()
    rounded = reference.astype(np.float16).astype(np.float32)
    assert compare(rounded, reference, FP16).passed
    assert not compare(rounded, reference, FP32).passed
