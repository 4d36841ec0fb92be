import numpy as np
import pytest

from kp_model.build import PredictorConfig, build_predictor
from kp_model.coco import load_coco_keypoints
from kp_model.fewshot import FewShotPredictor
from kp_model.images import load_image_rgb
from kp_model.oneshot.instances import InstanceConfig, box_iou, count_instances, same_individual, suppress


def test_box_iou_fixed_values() -> None:
    assert box_iou(np.array([0, 0, 10, 10]), np.array([0, 0, 10, 10])) == 1.0
    assert box_iou(np.array([0, 0, 10, 10]), np.array([5, 0, 15, 10])) == pytest.approx(50 / 150)
    assert box_iou(np.array([0, 0, 10, 10]), np.array([20, 20, 30, 30])) == 0.0


def test_suppress_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = [np.array([0, 0, 10, 10]), np.array([1, 0, 11, 10]), np.array([50, 50, 60, 60]), np.array([2, 2, 9, 9])]
    assert suppress(boxes, [0.5, 0.9, 0.7, 0.1], iou=0.3) == [1, 2]
    # an already kept box suppresses too
    assert suppress(boxes, [0.5, 0.9, 0.7, 0.1], iou=0.3, kept=[np.array([50, 50, 60, 60])]) == [1]


def test_count_rule_fixed_cases() -> None:
    cfg = InstanceConfig(min_ratio=0.5, min_evidence=0.3)
    assert count_instances([], cfg) == 0
    assert count_instances([0.1], cfg) == 1  # the first is always an individual
    # best 2.0: 1.2 and 1.0 pass (>= 1.0 and >= 0.3), 0.9 fails the ratio
    assert count_instances([2.0, 1.2, 1.0, 0.9], cfg) == 3
    # a weak best: 0.25 passes the ratio (>= 0.2) but not the floor
    assert count_instances([0.4, 0.25], cfg) == 1
    with pytest.raises(ValueError, match="min_ratio"):
        InstanceConfig(min_ratio=1.5)
    with pytest.raises(ValueError, match="max_instances"):
        InstanceConfig(max_instances=0)


def test_same_individual_by_overlap_or_by_centre() -> None:
    a = np.array([0, 0, 100, 10])
    assert same_individual(a, np.array([10, 0, 110, 10]), iou=0.3)  # IoU 90 / 110
    b = np.array([40, -20, 60, 30])  # crosses a: IoU 200 / 1800, centres 0 apart
    assert not same_individual(a, b, iou=0.3) and same_individual(a, b, iou=0.3, centre=0.5)
    assert not same_individual(a, np.array([300, 0, 400, 10]), iou=0.3, centre=0.5)


def test_two_mice_side_by_side_are_two_instances_one_each(mouse_dir) -> None:
    """Real frames, two mice per image: both mice of frames 0 | 10 side by side are supports (one annotation, two
    boxes); the query shows the next labelled frames 1 | 11 side by side."""
    samples = load_coco_keypoints(mouse_dir)
    width = samples[0].width

    def pair(i: int, j: int) -> np.ndarray:
        return np.concatenate([load_image_rgb(samples[i].image_path), load_image_rgb(samples[j].image_path)], axis=1)

    def points(i: int, right: bool) -> np.ndarray:
        return samples[i].instances[0].keypoints[:, :2] + [width if right else 0, 0]

    predictor = FewShotPredictor(lambda: build_predictor(PredictorConfig()))
    support = pair(0, 10)
    predictor.add_support("left", support, points(0, False), samples[0].keypoint_names)
    predictor.add_support("right", support, points(10, True), samples[0].keypoint_names)
    [found] = predictor.predict_instances([pair(1, 11)])
    assert len(found) == 2
    # one individual on each mouse: its median keypoint within 5 % of the frame width of that mouse's
    for truth in (points(1, False), points(11, True)):
        errors = [float(np.median(np.linalg.norm(f.points - truth, axis=1))) / width for f in found]
        assert min(errors) < 0.05, errors


def test_one_support_finds_the_other_individual_too(mouse_dir) -> None:
    """One annotated mouse (left of frames 2 | 22): the query 3 | 23 holds two; the first found is predict()'s."""
    samples = load_coco_keypoints(mouse_dir)
    width = samples[0].width

    def pair(i: int, j: int) -> np.ndarray:
        return np.concatenate([load_image_rgb(samples[i].image_path), load_image_rgb(samples[j].image_path)], axis=1)

    predictor = build_predictor(PredictorConfig())
    predictor.set_support(pair(2, 22), samples[2].instances[0].keypoints[:, :2], samples[2].keypoint_names)
    query = pair(3, 23)
    ranked, evidence = predictor.ranked_instances(query)
    [single] = predictor.predict([query])
    np.testing.assert_allclose(ranked[0].points, single.points)
    assert evidence[0] == max(evidence) and len(ranked) == len(evidence) <= 10
    sides = {int(np.median(p.points[:, 0]) > width) for p in ranked[:2]}
    assert sides == {0, 1}  # the two best candidates are one on each mouse
