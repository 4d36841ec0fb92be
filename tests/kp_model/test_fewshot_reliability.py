"""Reliability: outside a support's scene, supports whose answers land on the other labelled images' labels answer."""

from __future__ import annotations

import numpy as np
import pytest

from kp_model.fewshot import FewShotConfig, FewShotPredictor
from kp_model.predictor import KeypointPrediction

NAMES = ["head", "neck", "tail"]
TRUTH = {  # tag (an image's top-left block) -> the pose labelled in (or true of) that image, px
    30: [[10.0, 10.0], [20.0, 14.0], [40.0, 20.0]],
    90: [[40.0, 30.0], [30.0, 30.0], [12.0, 36.0]],
    150: [[12.0, 28.0], [22.0, 30.0], [44.0, 40.0]],
    210: [[30.0, 12.0], [30.0, 22.0], [28.0, 44.0]],
    120: [[16.0, 40.0], [26.0, 36.0], [46.0, 30.0]],
}
BAD = 30  # the support whose engine answers nowhere near any individual


def image(tag: int, like: np.ndarray | None = None) -> np.ndarray:
    """A random (48, 64, 3) image (unrelated thumbnails: other scenes), or half ``like`` (its thumbnail correlates
    with ``like``'s about 0.75: the nearest, still another scene); tagged by a flat block that survives JPEG."""
    img = np.random.default_rng(tag).random((48, 64, 3)) * 255
    if like is not None:
        img = 0.45 * like + 0.55 * img
    img = img.astype(np.uint8)
    img[:8, :8] = tag
    return img


def tag_of(img: np.ndarray) -> int:
    return min(TRUTH, key=lambda t: abs(t - float(img[:8, :8].mean())))


class Engine:
    """Answers the true pose of any image (TRUTH), unless its support is BAD: then a pose far from all of them."""

    asked: list[int] = []

    def __init__(self) -> None:
        self.names: list[str] = []
        self.tag = 0

    is_support_set = property(lambda self: bool(self.names))
    support_names = property(lambda self: list(self.names))

    def set_support(self, img, keypoints, names) -> None:
        self.names, self.tag = list(names), tag_of(np.asarray(img))

    def predict(self, images):
        Engine.asked.append(self.tag)
        out = []
        for img in images:
            pose = np.array([[60.0, 2.0], [62.0, 2.0], [61.0, 6.0]]) if self.tag == BAD else np.asarray(TRUTH[tag_of(img)])
            out.append(KeypointPrediction(self.names, pose, np.full(3, 0.9)))
        return out


def _predictor(weight: float, tags=(30, 90, 150)) -> FewShotPredictor:
    p = FewShotPredictor(Engine, FewShotConfig(cycle_weight=0.0, reliability_weight=weight))
    for tag in tags:
        p.add_support(str(tag), image(tag), np.asarray(TRUTH[tag]), NAMES)
    return p


def test_a_reliable_support_answers_a_query_nearest_to_an_unreliable_one() -> None:
    query = image(210, like=image(BAD))
    plain, reliable = _predictor(0.0), _predictor(1.0)
    [(nearest, similarity)] = plain.nearest(query, 1)
    assert nearest == str(BAD) and similarity < 0.8  # the nearest by thumbnail, but another scene
    Engine.asked = []
    [pred] = plain.predict([query])
    assert Engine.asked[0] == BAD  # the thumbnail alone: the nearest, unreliable support answers
    [pred] = reliable.predict([query])
    np.testing.assert_allclose(pred.points, TRUTH[210])
    assert reliable.reliability(str(BAD)) == 0.0 and reliable.reliability("90") == 1.0


def test_each_pair_is_matched_once_and_forgotten_with_a_support() -> None:
    p = _predictor(1.0)
    Engine.asked = []
    assert p.reliability("90") == 1.0 and Engine.asked == [90, 90]  # on 30's and 150's images
    Engine.asked = []
    assert p.reliability("90") == 1.0 and Engine.asked == []
    p.remove_support("150")
    assert ("90", "150") not in p._answered and p.reliability("90") == 1.0 and Engine.asked == []
    p.remove_support("30")
    assert p.reliability("90") is None  # no other support left to read it on


def test_in_the_scene_or_when_off_the_thumbnail_decides() -> None:
    p = _predictor(1.0)
    Engine.asked = []
    p.predict([image(BAD)])  # the nearest support's own scene (correlation 1): no reliability read
    assert Engine.asked[0] == BAD and p._answered == {}
    assert FewShotPredictor(Engine, FewShotConfig(cycle_weight=0.0))._supports == {}
    with pytest.raises(ValueError, match="reliability_weight"):
        FewShotConfig(reliability_weight=-1.0)
    with pytest.raises(ValueError, match="reliability_images"):
        FewShotConfig(reliability_images=0)
    with pytest.raises(ValueError, match="reliability_candidates"):
        FewShotConfig(reliability_candidates=1)


def test_only_the_nearest_candidates_are_read_and_copies_carry_what_was_read() -> None:
    p = FewShotPredictor(Engine, FewShotConfig(cycle_weight=0.0, reliability_candidates=2))
    for tag in (30, 90, 150, 210):
        p.add_support(str(tag), image(tag), np.asarray(TRUTH[tag]), NAMES)
    query = image(120, like=image(BAD))
    [(first, _), (second, _)] = p.nearest(query, 2)
    Engine.asked = []
    [pred] = p.predict([query])
    assert first == str(BAD) and Engine.asked[:6] == [BAD] * 3 + [int(second)] * 3  # 2 candidates x 3 other images
    assert {a for a, _ in p._answered} == {first, second}  # the others were not read
    np.testing.assert_allclose(pred.points, TRUTH[120])  # the reliable candidate answers
    Engine.asked = []
    p.copy().predict([query])
    assert Engine.asked[0] == int(second) and len(Engine.asked) <= 3  # the query only: nothing read again
