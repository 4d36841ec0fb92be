import math

import numpy as np
import pytest

from kp_model.evaluation.instances import ImageScore, Truth, oks, score_image, summarise_instances

TRUTH_A = Truth(np.array([[10.0, 10.0], [20.0, 10.0]]), np.array([True, True]), (0.0, 0.0, 100.0, 100.0))
TRUTH_B = Truth(np.array([[210.0, 10.0], [220.0, 10.0]]), np.array([True, False]), (200.0, 0.0, 100.0, 100.0))


def test_oks_fixed_values() -> None:
    assert oks(TRUTH_A.keypoints, TRUTH_A) == 1.0
    # both keypoints 13.3 px off: kappa x sqrt(area) = 0.133 x 100 = 13.3 px, so each scores exp(-1/2)
    assert oks(TRUTH_A.keypoints + [13.3, 0.0], TRUTH_A) == pytest.approx(math.exp(-0.5))
    # only counted keypoints enter; a non-finite counted prediction scores 0
    assert oks(np.array([[210.0, 10.0], [999.0, 999.0]]), TRUTH_B) == 1.0
    assert oks(np.array([[np.nan, 10.0], [20.0, 10.0]]), TRUTH_A) == 0.0


def test_predictions_are_matched_one_to_one_whatever_their_order() -> None:
    preds = [TRUTH_B.keypoints.copy(), TRUTH_A.keypoints + [13.3, 0.0], np.array([[500.0, 500.0], [510.0, 500.0]])]
    score = score_image(preds, [TRUTH_A, TRUTH_B])
    assert (score.predicted, score.true) == (3, 2)
    assert sorted(score.pair_oks) == pytest.approx(sorted([1.0, math.exp(-0.5)]))
    assert score.hits == 2  # both at OKS >= 0.5; the third prediction is a false positive


def test_summary_counts_precision_recall() -> None:
    one = ImageScore(3, 2, [1.0, 0.6], [np.array([0.0, 0.1]), np.array([0.3])])
    two = ImageScore(1, 1, [0.2], [np.array([0.5, 0.05])])
    s = summarise_instances([one, two])
    # per matched instance PCK@0.2: 1.0, 0.0, 0.5 -> mean 0.5; per true instance: 1.5 / 3
    assert s["pck@0.2"] == pytest.approx(0.5) and s["pck@0.2_per_true"] == pytest.approx(0.5)
    assert s["count_accuracy"] == 0.5
    assert s["precision"] == pytest.approx(2 / 4) and s["recall"] == pytest.approx(2 / 3)
    assert math.isnan(summarise_instances([])["precision"])
