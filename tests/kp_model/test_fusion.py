"""kp_model.fusion: answers fused per keypoint, blended, checked for agreement; scores lowered with a floor."""

from __future__ import annotations

import numpy as np
import pytest

from kp_model.fewshot import FewShotConfig
from kp_model.fusion import agreement, blend, fuse, lower, reorder
from kp_model.predictor import KeypointPrediction


def test_fuse_keeps_what_most_answers_agree_on() -> None:
    def answer(x: float, y: float, score: float) -> tuple[KeypointPrediction, float]:
        return KeypointPrediction(["a"], np.array([[x, y]]), np.array([score])), 0.9

    points, scores = fuse([answer(10, 10, 0.8), answer(11, 10, 0.8), answer(50, 50, 0.4)], ["a", "b"], FewShotConfig())
    # one keypoint: the radius is its floor, 2 px; the first two agree (weight 1.6 of 2.0)
    assert points[0] == pytest.approx([10.5, 10.0]) and scores[0] == pytest.approx(0.8 * 1.6 / 2.0)
    assert np.isnan(points[1]).all() and scores[1] == 0.0  # no answer has "b"


def test_disagreeing_supports_lower_the_score() -> None:
    def answer(x: float) -> tuple[KeypointPrediction, float]:
        return KeypointPrediction(["a", "b"], np.array([[x, 0.0], [x + 100.0, 0.0]]), np.array([0.9, 0.9])), 0.9

    _, agree = fuse([answer(0), answer(1), answer(2)], ["a", "b"], FewShotConfig())
    _, split = fuse([answer(0), answer(40), answer(80)], ["a", "b"], FewShotConfig())
    assert agree == pytest.approx([0.9, 0.9]) and split == pytest.approx([0.3, 0.3])


def test_best_fusion_keeps_the_best_supports_pose() -> None:
    def answer(x: float, score: float, sim: float) -> tuple[KeypointPrediction, float]:
        return KeypointPrediction(["a", "b"], np.array([[x, 0.0], [x + 100.0, 0.0]]), np.array([score, score])), sim

    cfg = FewShotConfig(fusion="best")
    points, scores = fuse([answer(0, 0.5, 0.9), answer(1, 0.5, 0.9), answer(60, 0.9, 0.9)], ["a", "b"], cfg)
    # the third answer has the best mean score: its points are kept whole; nobody agrees with it (radius 10 px)
    assert points.tolist() == [[60.0, 0.0], [160.0, 0.0]] and scores == pytest.approx([0.9 * 0.9 / 1.9] * 2)
    with pytest.raises(ValueError, match="fusion"):
        FewShotConfig(fusion="vote")


def test_reorder_keeps_points_scores_and_texts_together() -> None:
    pred = KeypointPrediction(["b", "a"], np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([0.2, 0.9]), texts=["tb", "ta"])
    out = reorder(pred, ["a", "c", "b"])
    np.testing.assert_array_equal(out.points, [[3, 4], [np.nan, np.nan], [1, 2]])
    assert out.scores.tolist() == [0.9, 0.0, 0.2] and out.texts == ["ta", "", "tb"]


def test_blend_leaves_unanswered_keypoints_and_far_answers() -> None:
    points = blend(np.array([[0.0, 0.0], [np.nan, np.nan]]), [np.array([[30.0, 0.0], [5.0, 5.0]])], radius=10.0)
    assert points[0].tolist() == [0.0, 0.0] and np.isnan(points[1]).all()


def test_agreement_is_the_mean_closeness_of_the_other_answers() -> None:
    points = np.array([[0.0, 0.0], [0.0, 0.0]])
    others = [np.array([[0.0, 0.0], [10.0, 0.0]]), np.array([[np.nan, np.nan], [0.0, 0.0]])]
    # keypoint 0: exp(0) = 1 and a missing answer (0); keypoint 1: exp(-(10 / 10)^2) = 0.36788 and exp(0) = 1
    assert agreement(points, others, radius=10.0) == pytest.approx([0.5, (0.36788 + 1) / 2], abs=1e-5)
    assert agreement(points, [], radius=10.0).tolist() == [1.0, 1.0]


def test_lower_never_takes_a_score_below_the_floor_it_was_above() -> None:
    out = lower(np.array([0.9, 0.04, 0.5]), np.array([0.5, 0.5, 0.01]), floor=0.05)
    assert out == pytest.approx([0.45, 0.04, 0.05])  # 0.04 was below: kept; 0.5 x 0.01 = 0.005: the floor
