import itertools

import numpy as np
import pytest

from kp_model.evaluation.assignment import assign


def brute_force(cost: np.ndarray) -> float:
    """The minimum total cost over every one-to-one assignment of the smaller side."""
    n, m = cost.shape
    if n <= m:
        return min(sum(cost[i, p[i]] for i in range(n)) for p in itertools.permutations(range(m), n))
    return min(sum(cost[p[j], j] for j in range(m)) for p in itertools.permutations(range(n), m))


def test_a_fixed_case() -> None:
    # greedy (row 0 takes its cheapest, column 0) costs 1 + 10; the optimum pairs 0-1 and 1-0: 2 + 2
    assert assign(np.array([[1.0, 2.0], [2.0, 10.0]])) == [(0, 1), (1, 0)]


@pytest.mark.parametrize("seed", range(40))
def test_optimal_on_random_rectangular_matrices(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, m = (int(v) for v in rng.integers(1, 6, 2))
    cost = rng.random((n, m))
    pairs = assign(cost)
    assert len(pairs) == min(n, m)
    assert len({i for i, _ in pairs}) == len({j for _, j in pairs}) == len(pairs)
    assert sum(cost[i, j] for i, j in pairs) == pytest.approx(brute_force(cost))


def test_empty_and_bad_input() -> None:
    assert assign(np.zeros((0, 3))) == [] and assign(np.zeros((3, 0))) == []
    with pytest.raises(ValueError, match="finite"):
        assign(np.array([[np.nan]]))
    with pytest.raises(ValueError, match="2-D"):
        assign(np.zeros(3))
