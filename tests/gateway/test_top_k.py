"""The top-k arithmetic every backend shares (`backends.base`): order, ties, dtypes, and
each caller's row trimmed to its own k."""

from __future__ import annotations

import numpy as np
import pytest

from service.gateway.backends.base import TopK, top_k_from_probs


def test_rows_best_first_ties_to_the_lower_index() -> None:
    probs = np.array(
        [[0.1, 0.5, 0.4, 0.0], [0.3, 0.3, 0.4, 0.0], [0.25, 0.25, 0.25, 0.25]], dtype=np.float32
    )
    top = top_k_from_probs(probs, 3)
    assert top.indices.tolist() == [[1, 2, 0], [2, 0, 1], [0, 1, 2]]
    expected = [[0.5, 0.4, 0.1], [0.4, 0.3, 0.3], [0.25] * 3]
    np.testing.assert_allclose(top.scores, expected, rtol=1e-6)
    assert top.indices.dtype == np.int64 and top.scores.dtype == np.float32
    assert len(top) == 3


def test_k_larger_than_the_classes_gives_every_class() -> None:
    probs = np.array([[0.2, 0.7, 0.1]], dtype=np.float32)
    top = top_k_from_probs(probs, 10)
    assert top.indices.shape == (1, 3) and top.indices.tolist() == [[1, 0, 2]]


def test_scores_keep_float32_from_wider_input() -> None:
    probs = np.array([[0.2, 0.8]], dtype=np.float64)
    assert top_k_from_probs(probs, 1).scores.dtype == np.float32


@pytest.mark.parametrize("shape", [(4,), (1, 2, 3)])
def test_only_two_dimensional_probabilities(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"\[N, classes\]"):
        top_k_from_probs(np.zeros(shape, dtype=np.float32), 1)


def test_row_trims_to_its_own_k_as_python_numbers() -> None:
    top = TopK(
        indices=np.array([[4, 2, 9], [1, 0, 3]], dtype=np.int64),
        scores=np.array([[0.5, 0.25, 0.125], [0.75, 0.125, 0.0625]], dtype=np.float32),
    )
    assert top.row(0, 1) == [(4, 0.5)]
    assert top.row(1, 3) == [(1, 0.75), (0, 0.125), (3, 0.0625)]
    assert top.row(1, 2) == [(1, 0.75), (0, 0.125)]
    index, score = top.row(0, 2)[1]
    assert type(index) is int and type(score) is float
    assert len(top) == 2


def test_ties_keep_index_order_in_a_full_size_row() -> None:
    """1000 classes, many exact ties (as random-init weights give): a stable order, which
    a plain quicksort does not keep at this size."""
    probs = np.zeros((2, 1000), dtype=np.float32)
    probs[:, :500] = 0.001
    probs[:, 500:] = 0.0005
    probs[1, 700] = 0.01
    top = top_k_from_probs(probs, 5)
    assert top.indices.tolist() == [[0, 1, 2, 3, 4], [700, 0, 1, 2, 3]]
