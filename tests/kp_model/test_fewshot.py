"""FewShotPredictor: supports added and removed by key, the nearest supports answer, answers fused per keypoint."""

from __future__ import annotations

import numpy as np
import pytest

from kp_model.build import PredictorConfig, build_predictor
from kp_model.fewshot import FewShotConfig, FewShotPredictor, fuse, reorder
from kp_model.predictor import KeypointPrediction, Predictor, SupportNotSetError


class Recorder:
    """A single-support engine that answers its support's keypoints and records which support was asked."""

    asked: list[str] = []

    def __init__(self) -> None:
        self.kps = np.zeros((0, 2))
        self.names: list[str] = []

    @property
    def is_support_set(self) -> bool:
        return bool(self.names)

    @property
    def support_names(self) -> list[str]:
        return list(self.names)

    def set_support(self, image, keypoints, names) -> None:
        self.kps, self.names, self.tag = np.asarray(keypoints, float), list(names), int(image[0, 0, 0])

    def predict(self, images):
        Recorder.asked.append(self.tag)
        return [KeypointPrediction(self.names, self.kps.copy(), np.full(len(self.names), 0.9)) for _ in images]


def scene(seed: int) -> np.ndarray:
    img = (np.random.default_rng(seed).random((48, 64, 3)) * 255).astype(np.uint8)
    img[0, 0, 0] = seed  # the Recorder's tag
    return img


def test_is_a_predictor_and_needs_a_support() -> None:
    p = FewShotPredictor(Recorder)
    assert isinstance(p, Predictor)
    with pytest.raises(SupportNotSetError):
        p.predict([scene(1)])


def test_supports_by_key_the_oldest_leave_beyond_the_cap() -> None:
    p = FewShotPredictor(Recorder, FewShotConfig(max_supports=2))
    for key in ("a", "b", "c"):
        p.add_support(key, scene(3), np.array([[5.0, 5.0]]), ["nose"])
    assert p.support_keys == ["b", "c"]
    p.add_support("b", scene(3), np.array([[6.0, 5.0], [9.0, 9.0]]), ["nose", "tail"])  # replaced: now the newest
    assert p.support_keys == ["c", "b"] and p.support_names == ["nose", "tail"]
    p.remove_support("c")
    assert p.support_keys == ["b"]


def test_the_nearest_support_answers() -> None:
    p = FewShotPredictor(Recorder, FewShotConfig(shortlist=1, vote=False))  # the vote: the tests below
    for seed in (11, 12, 13):
        p.add_support(str(seed), scene(seed), np.array([[seed, 5.0]]), ["nose"])
    Recorder.asked = []
    [pred] = p.predict([scene(12)])
    assert Recorder.asked == [12] and pred.points[0, 0] == 12


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


def test_with_the_default_engine(blob_image, blob_names) -> None:
    p = FewShotPredictor(lambda: build_predictor(PredictorConfig()), FewShotConfig(shortlist=2))
    for i, centre in enumerate([(60, 50), (100, 70)]):
        img, pts = blob_image(centre=centre)
        p.add_support(str(i), img, pts, blob_names)
    query, truth = blob_image(centre=(96, 66))
    [pred] = p.predict([query])
    assert pred.names == blob_names and np.linalg.norm(pred.points - truth, axis=1).max() < 6


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


def _voters(poses: list[list[list[float]]], cfg: FewShotConfig | None = None) -> FewShotPredictor:
    """Supports answering ``poses`` (nearest to ``scene(40)`` first: each image is scene(40) mixed with more noise)."""
    p = FewShotPredictor(Recorder, cfg or FewShotConfig())
    base, noise = scene(40).astype(float), scene(41).astype(float)
    for rank, pose in enumerate(poses):
        img = ((1 - 0.25 * rank) * base + 0.25 * rank * noise).astype(np.uint8)
        img[0, 0, 0] = 50 + rank  # the Recorder's tag: 50 nearest, 51 second, 52 third
        p.add_support(f"s{rank}", img, np.array(pose), ["nose", "tail"])
    return p


HEAD_TAIL = [[10.0, 10.0], [50.0, 10.0]]  # size 1.2 x 40 = 48 px: poses agree within 4.8 px
TAIL_HEAD = [[50.0, 10.0], [10.0, 10.0]]


def test_two_next_supports_that_agree_overturn_a_flipped_nearest() -> None:
    p = _voters([TAIL_HEAD, HEAD_TAIL, [[11.0, 10.0], [51.0, 10.0]]])
    Recorder.asked = []
    [pred] = p.predict([scene(40)])
    assert Recorder.asked == [50, 51, 52]
    assert pred.points.tolist() == HEAD_TAIL  # the second's answer (equal scores: the second wins the tie)
    assert pred.scores == pytest.approx([0.9, 0.9])  # disagree_factor 1 by default


def test_an_agreeing_second_support_settles_it_without_the_third() -> None:
    p = _voters([HEAD_TAIL, [[12.0, 10.0], [52.0, 10.0]], TAIL_HEAD])
    Recorder.asked = []
    [pred] = p.predict([scene(40)])
    assert Recorder.asked == [50, 51]
    assert pred.points.tolist() == HEAD_TAIL and pred.scores == pytest.approx([0.9, 0.9])


def test_a_split_vote_keeps_the_nearest_and_can_lower_its_scores() -> None:
    cfg = FewShotConfig(disagree_factor=0.5)
    p = _voters([HEAD_TAIL, TAIL_HEAD, [[30.0, 40.0], [30.0, 0.0]]], cfg)  # the next two disagree with each other too
    [pred] = p.predict([scene(40)])
    assert pred.points.tolist() == HEAD_TAIL and pred.scores == pytest.approx([0.45, 0.45])


def test_no_vote_when_off_or_with_fewer_than_three_supports() -> None:
    Recorder.asked = []
    [pred] = _voters([TAIL_HEAD, HEAD_TAIL, HEAD_TAIL], FewShotConfig(vote=False)).predict([scene(40)])
    assert Recorder.asked == [50] and pred.points.tolist() == TAIL_HEAD
    Recorder.asked = []
    [pred] = _voters([TAIL_HEAD, HEAD_TAIL]).predict([scene(40)])
    assert Recorder.asked == [50] and pred.points.tolist() == TAIL_HEAD
    with pytest.raises(ValueError, match="vote_agree"):
        FewShotConfig(vote_agree=0)
    with pytest.raises(ValueError, match="disagree_factor"):
        FewShotConfig(disagree_factor=1.5)
