"""The mirror check: the project's labelled images decide whether the engine's mirrored supports answer."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from kp_model.fewshot import FewShotConfig, FewShotPredictor
from kp_model.mirror_check import check_pair, mirror_pairs, prefers_mirror
from kp_model.predictor import KeypointPrediction

NAMES = ["left_eye", "right_eye", "nose"]
TRUTH = {  # tag (an image's top-left block) -> the pose labelled in that image, px
    21: [[10.0, 10.0], [30.0, 10.0], [20.0, 20.0]],
    22: [[40.0, 30.0], [20.0, 30.0], [30.0, 40.0]],
    23: [[12.0, 28.0], [32.0, 28.0], [22.0, 38.0]],
}


def image(tag: int) -> np.ndarray:
    img = (np.random.default_rng(tag).random((48, 64, 3)) * 255).astype(np.uint8)  # unrelated thumbnails: other scenes
    img[:16, :16] = tag  # a flat block: the tag survives the JPEG the predictor keeps its supports in
    return img


def tag_of(img: np.ndarray) -> int:
    return min(TRUTH, key=lambda t: abs(t - float(img[:16, :16].mean())))


class Fixed:
    """An engine answering a fixed pose whatever the image; ``mirrored`` answers each image's labelled pose (TRUTH)
    when ``mirror_is_right``, else a pose far from it."""

    mirror_is_right = True
    asked: list[str] = []

    def __init__(self, kind: str = "plain") -> None:
        self.kind, self.names = kind, list(NAMES)

    is_support_set = property(lambda self: bool(self.names))
    support_names = property(lambda self: list(self.names))

    def set_support(self, img, keypoints, names) -> None:
        self.names = list(names)

    def predict(self, images):
        Fixed.asked.append(self.kind)
        out = []
        for img in images:
            if self.kind == "plain":
                pose = np.array([[60.0, 5.0], [62.0, 5.0], [61.0, 8.0]])  # nowhere near any labelled pose
            else:
                pose = np.asarray(TRUTH[tag_of(img)]) + (0.0 if Fixed.mirror_is_right else 25.0)
            out.append(KeypointPrediction(self.names, pose, np.full(len(self.names), 0.9)))
        return out

    def mirrored(self, img, keypoints) -> Fixed:
        assert img.shape == (48, 64, 3) and keypoints.shape == (3, 2)  # its own support, decoded
        return Fixed("mirrored")


def _predictor(tags: list[int], **cfg) -> FewShotPredictor:
    p = FewShotPredictor(Fixed, FewShotConfig(**{"cycle_weight": 0.0, **cfg}))
    for tag in tags:
        p.add_support(str(tag), image(tag), np.asarray(TRUTH[tag]), NAMES)
    return p


@pytest.mark.parametrize("right", [True, False])
def test_the_labels_decide_and_the_chosen_engine_answers(right: bool) -> None:
    Fixed.mirror_is_right = right
    p = _predictor([21, 22])
    assert p.uses_mirror() is right  # plain answers land on no label; mirrored ones on all (or none)
    Fixed.asked = []
    [pred] = p.predict([image(23)])
    assert Fixed.asked[0] == ("mirrored" if right else "plain")
    if right:
        np.testing.assert_allclose(pred.points, TRUTH[23])


def test_checked_once_per_pair_and_forgotten_with_a_support() -> None:
    Fixed.mirror_is_right = True
    p = _predictor([21, 22])
    assert p.uses_mirror()
    Fixed.asked = []
    assert p.uses_mirror() and Fixed.asked == []  # the pairs' results are kept
    p.remove_support("22")
    assert not p.uses_mirror() and p._mirror_checks == {}  # one support left: no pair to check
    copy = _predictor([21, 22]).copy()
    assert copy.uses_mirror()


def test_no_check_with_one_support_when_off_or_without_left_right_names() -> None:
    Fixed.mirror_is_right = True
    assert not _predictor([21]).uses_mirror()
    assert not _predictor([21, 22], mirror_check=False).uses_mirror()
    p = FewShotPredictor(Fixed, FewShotConfig(cycle_weight=0.0))
    for tag in (21, 22):
        p.add_support(str(tag), image(tag), np.asarray(TRUTH[tag]), ["eye_1", "eye_2", "nose"])
    assert not p.uses_mirror()


@dataclass
class Labelled:
    descriptor: np.ndarray
    names: list[str]


def test_pairs_both_ways_other_scenes_only_the_first_labelled_first() -> None:
    a, b, c = np.eye(3)
    supports = {"a": Labelled(a, NAMES), "b": Labelled(b, NAMES), "a2": Labelled(a, NAMES), "c": Labelled(c, NAMES)}
    # a and a2 show one scene (thumbnail correlation 1): never paired
    assert mirror_pairs(supports, scene=0.8, most=10) == [
        ("a", "b"), ("b", "a"), ("b", "a2"), ("a2", "b"), ("a", "c"), ("c", "a"), ("b", "c"), ("c", "b"),
        ("a2", "c"), ("c", "a2"),
    ]  # fmt: skip
    assert mirror_pairs(supports, scene=0.8, most=3) == [("a", "b"), ("b", "a"), ("b", "a2")]
    assert mirror_pairs({"a": Labelled(a, ["nose", "tail"]), "b": Labelled(b, ["nose", "tail"])}, 0.8, 4) == []


def test_check_pair_and_the_rule() -> None:
    Fixed.mirror_is_right = True
    truth = np.asarray(TRUTH[22])
    size = 24.0  # 0.2 x 24 = 4.8 px
    assert check_pair(Fixed(), Fixed("mirrored"), image(22), NAMES, truth, size) == (0.0, 1.0)
    Fixed.mirror_is_right = False
    assert check_pair(Fixed(), Fixed("mirrored"), image(22), NAMES, truth, size) == (0.0, 0.0)
    assert check_pair(Fixed(), Fixed("mirrored"), image(22), ["tail"], np.zeros((1, 2)), size) is None
    assert prefers_mirror([(0.2, 0.6), (0.5, 0.3)]) and not prefers_mirror([(0.5, 0.3), (0.3, 0.5)])  # a tie: plain
    assert not prefers_mirror([None]) and not prefers_mirror([])
    with pytest.raises(ValueError, match="mirror_check_pairs"):
        FewShotConfig(mirror_check_pairs=0)
