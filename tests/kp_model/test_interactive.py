import numpy as np
import pytest

from kp_model.interactive import constrain, similarity
from kp_model.predictor import KeypointPrediction


def test_similarity_recovers_a_rotation_scale_and_shift() -> None:
    src = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 5.0]])
    # 90 degrees counter-clockwise (x -> y, y -> -x), scale 2, shift (3, 4)
    dst = np.array([[3.0, 4.0], [3.0, 24.0], [-7.0, 4.0]])
    m = similarity(src, dst)
    assert m == pytest.approx(np.array([[0.0, -2.0, 3.0], [2.0, 0.0, 4.0]]), abs=1e-9)
    assert similarity(src[:1], dst[:1]) == pytest.approx(np.array([[1.0, 0.0, 3.0], [0.0, 1.0, 4.0]]))


def test_placed_points_are_kept_exactly_and_the_rest_follows() -> None:
    # the engine found the animal head-to-tail: nose at the tail and tail at the nose
    pred = KeypointPrediction(["nose", "tail", "mid"], np.array([[90.0, 50.0], [10.0, 50.0], [50.0, 40.0]]), np.full(3, 0.5))
    fixed = constrain(pred, {"nose": (10.0, 50.0), "tail": (90.0, 50.0)})
    assert fixed.points[:2].tolist() == [[10.0, 50.0], [90.0, 50.0]] and fixed.scores[:2].tolist() == [1.0, 1.0]
    assert fixed.points[2] == pytest.approx([50.0, 60.0])  # rotated 180 degrees about the centre with them
    one = constrain(pred, {"mid": (55.0, 42.0)})  # one click moves that keypoint only
    assert one.points.tolist() == [[90.0, 50.0], [10.0, 50.0], [55.0, 42.0]]


def test_a_placed_keypoint_the_prediction_lacks_is_added() -> None:
    pred = KeypointPrediction(["nose"], np.array([[1.0, 2.0]]), np.array([0.3]))
    fixed = constrain(pred, {"tail": (7.0, 8.0)})
    assert fixed.names == ["nose", "tail"] and fixed.points.tolist() == [[1.0, 2.0], [7.0, 8.0]]


def test_a_shift_or_small_turn_moves_only_the_placed_points() -> None:
    pred = KeypointPrediction(["nose", "tail", "mid"], np.array([[10.0, 50.0], [90.0, 50.0], [50.0, 40.0]]), np.full(3, 0.5))
    fixed = constrain(pred, {"nose": (20.0, 55.0), "tail": (100.0, 55.0)})  # both shifted by (10, 5): no reversal
    assert fixed.points.tolist() == [[20.0, 55.0], [100.0, 55.0], [50.0, 40.0]]
