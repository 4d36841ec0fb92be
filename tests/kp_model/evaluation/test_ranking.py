import math

import numpy as np
import pytest

from kp_model.evaluation.ranking import auroc, ranks, spearman


def test_ranks_share_ties() -> None:
    assert ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_auroc() -> None:
    assert auroc(np.array([0.9, 0.8, 0.1, 0.2]), np.array([1, 1, 0, 0])) == 1.0
    assert auroc(np.array([0.1, 0.2, 0.9, 0.8]), np.array([1, 1, 0, 0])) == 0.0
    # positives 0.5 and 0.3 against negatives 0.4 and 0.5: pairs won 1 + 0.5 + 0 + 0 of 4
    assert auroc(np.array([0.5, 0.3, 0.4, 0.5]), np.array([1, 1, 0, 0])) == pytest.approx(1.5 / 4)
    assert math.isnan(auroc(np.array([0.5, 0.3]), np.array([1, 1])))


def test_spearman() -> None:
    assert spearman(np.array([1.0, 2, 3, 4]), np.array([10.0, 20, 30, 45])) == pytest.approx(1.0)
    assert spearman(np.array([1.0, 2, 3, 4]), np.array([4.0, 3, 2, 1])) == pytest.approx(-1.0)
    # ranks (1,2,3) and (1,3,2): 1 - 6 * 2 / (3 * 8) = 0.5
    assert spearman(np.array([1.0, 2, 3]), np.array([1.0, 3, 2])) == pytest.approx(0.5)
    assert math.isnan(spearman(np.array([1.0, 1.0]), np.array([1.0, 2.0])))
