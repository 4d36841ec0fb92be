"""FewShotPredictor: supports added and removed by key, the nearest supports answer, answers fused per keypoint."""

from __future__ import annotations

import numpy as np
import pytest

from kp_model.build import PredictorConfig, build_predictor
from kp_model.fewshot import FewShotConfig, FewShotPredictor
from kp_model.predictor import KeypointPrediction, Predictor, SupportNotSetError

ALONE = {"verify_supports": 1, "blend_supports": 1}  # no appearance check, no blend: the nearest answer as it is


def _cfg(**fields) -> FewShotConfig:
    """The settings of the vote, check and blend tests: the cycle check off (its tests are the last ones) and the
    supports' reliability off (test_fewshot_reliability), so the engines are asked only by the step tested and scores
    are those steps' own; twins off (a Recorder answers its own labelled pose, so supports that agree are twins:
    their tests set twin_radius and use an Answerer)."""
    return FewShotConfig(**{"cycle_weight": 0.0, "reliability_weight": 0.0, "twin_radius": 0.0, **fields})


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

    def pose(self) -> np.ndarray:
        """(K, 2) px: the pose it answers, its support's labelled one."""
        return self.kps

    def predict(self, images):
        Recorder.asked.append(self.tag)
        return [KeypointPrediction(self.names, self.pose().copy(), np.full(len(self.names), 0.9)) for _ in images]


class Answerer(Recorder):
    """A Recorder that answers the pose ``answers[tag]`` whatever its support's labelled pose (its own if none)."""

    answers: dict[int, list[list[float]]] = {}

    def pose(self) -> np.ndarray:
        return np.asarray(Answerer.answers.get(self.tag, self.kps), float)


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
    p = FewShotPredictor(Recorder, _cfg(max_supports=2))
    for key in ("a", "b", "c"):
        p.add_support(key, scene(3), np.array([[5.0, 5.0]]), ["nose"])
    assert p.support_keys == ["b", "c"]
    p.add_support("b", scene(3), np.array([[6.0, 5.0], [9.0, 9.0]]), ["nose", "tail"])  # replaced: now the newest
    assert p.support_keys == ["c", "b"] and p.support_names == ["nose", "tail"]
    p.remove_support("c")
    assert p.support_keys == ["b"]


def test_the_nearest_support_answers() -> None:
    p = FewShotPredictor(Recorder, _cfg(shortlist=1, vote=False, **ALONE))  # the others: the tests below
    for seed in (11, 12, 13):
        p.add_support(str(seed), scene(seed), np.array([[seed, 5.0]]), ["nose"])
    Recorder.asked = []
    [pred] = p.predict([scene(12)])
    assert Recorder.asked == [12] and pred.points[0, 0] == 12


def test_with_the_default_engine(blob_image, blob_names) -> None:
    p = FewShotPredictor(lambda: build_predictor(PredictorConfig()), _cfg(shortlist=2))
    for i, centre in enumerate([(60, 50), (100, 70)]):
        img, pts = blob_image(centre=centre)
        p.add_support(str(i), img, pts, blob_names)
    query, truth = blob_image(centre=(96, 66))
    [pred] = p.predict([query])
    assert pred.names == blob_names and np.linalg.norm(pred.points - truth, axis=1).max() < 6


def _voters(
    poses: list[list[list[float]]], cfg: FewShotConfig | None = None, labelled: list[list[list[float]]] | None = None
) -> FewShotPredictor:
    """Supports answering ``poses`` (nearest to ``scene(40)`` first: each image is scene(40) mixed with more noise),
    labelled at ``labelled`` (default: the poses they answer; else they are Answerers)."""
    engine = Recorder if labelled is None else Answerer
    Answerer.answers = {50 + rank: pose for rank, pose in enumerate(poses)}
    p = FewShotPredictor(engine, cfg or _cfg(**ALONE))  # the vote alone (the check, the blend: below)
    base, noise = scene(40).astype(float), scene(41).astype(float)
    for rank, pose in enumerate(labelled or poses):
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


def test_twins_agreeing_against_the_nearest_are_one_say_and_do_not_overturn_it() -> None:
    # sizes 48 px, twin_radius 0.2: the 2nd and 3rd are labelled 1 px apart (twins: within 9.6 px), or 30 px apart
    cfg = _cfg(twin_radius=0.2, **ALONE)
    # a twin 3rd is not even asked: it could not outvote the nearest
    twin, apart = ([[11.0, 10.0], [51.0, 10.0]], TAIL_HEAD, [50, 51]), ([[10.0, 40.0], [50.0, 40.0]], HEAD_TAIL, [50, 51, 52])
    for third_labelled, expected, asked in (twin, apart):
        p = _voters([TAIL_HEAD, HEAD_TAIL, HEAD_TAIL], cfg, labelled=[TAIL_HEAD, HEAD_TAIL, third_labelled])
        Recorder.asked = []
        [pred] = p.predict([scene(40)])
        assert Recorder.asked == asked and pred.points.tolist() == expected
    with pytest.raises(ValueError, match="twin_radius"):
        _cfg(twin_radius=-0.1)


def test_an_agreeing_second_support_settles_it_without_the_third() -> None:
    p = _voters([HEAD_TAIL, [[12.0, 10.0], [52.0, 10.0]], TAIL_HEAD])
    Recorder.asked = []
    [pred] = p.predict([scene(40)])
    assert Recorder.asked == [50, 51]
    assert pred.points.tolist() == HEAD_TAIL and pred.scores == pytest.approx([0.9, 0.9])


def test_a_split_vote_keeps_the_nearest_and_can_lower_its_scores() -> None:
    cfg = _cfg(disagree_factor=0.5, **ALONE)
    p = _voters([HEAD_TAIL, TAIL_HEAD, [[30.0, 40.0], [30.0, 0.0]]], cfg)  # the next two disagree with each other too
    [pred] = p.predict([scene(40)])
    assert pred.points.tolist() == HEAD_TAIL and pred.scores == pytest.approx([0.45, 0.45])


def test_no_vote_when_off_or_with_fewer_than_three_supports() -> None:
    Recorder.asked = []
    [pred] = _voters([TAIL_HEAD, HEAD_TAIL, HEAD_TAIL], _cfg(vote=False, **ALONE)).predict([scene(40)])
    assert Recorder.asked == [50] and pred.points.tolist() == TAIL_HEAD
    Recorder.asked = []
    [pred] = _voters([TAIL_HEAD, HEAD_TAIL]).predict([scene(40)])
    assert Recorder.asked == [50] and pred.points.tolist() == TAIL_HEAD
    with pytest.raises(ValueError, match="vote_agree"):
        _cfg(vote_agree=0)
    with pytest.raises(ValueError, match="disagree_factor"):
        _cfg(disagree_factor=1.5)


HEAD, TAIL = (30, 40), (80, 40)


def _flipped_nearest(animal_image, cfg: FewShotConfig, backers: int = 0) -> FewShotPredictor:
    """Supports of ``animal_image``'s scene, each answering its own keypoints (nose, tail): the nearest shows the
    animal turned round (so its answer in the query is a head/tail flip); the second shows it as the query does, on
    a floor moved by 8 px (so it is less near); ``backers`` more show it as the second does, on floors moved further
    (their answers back the second's)."""
    p = FewShotPredictor(Recorder, cfg)
    more = [(52 + i, HEAD, TAIL, 16 + 8 * i) for i in range(backers)]
    for tag, head, tail, shift in [(50, TAIL, HEAD, 0), (51, HEAD, TAIL, 8), *more]:
        img = animal_image(head, tail, shift)
        img[0, 0, 0] = tag
        p.add_support(f"s{tag}", img, np.array([head, tail], float), ["nose", "tail"])
    return p


def test_an_answer_that_does_not_look_like_its_support_is_replaced_by_one_that_does(animal_image) -> None:
    p = _flipped_nearest(animal_image, _cfg(verify_score_power=1.0))  # better by the margin, 0.2
    query = animal_image(HEAD, TAIL)
    assert [key for key, _ in p.nearest(query, 2)] == ["s50", "s51"] and p.nearest(query, 1)[0][1] >= 0.8
    Recorder.asked = []
    [pred] = p.predict([query])
    assert Recorder.asked == [50, 51]
    assert pred.points.tolist() == [list(HEAD), list(TAIL)]
    assert np.all(pred.scores < 0.9) and np.all(pred.scores > 0.9 * 0.5)  # x its correlation (its floor moved)


def test_a_better_answer_that_a_third_support_backs_replaces_it_without_the_margin(animal_image) -> None:
    cfg = _cfg(verify_margin=2.0, vote=False)  # no margin can be met; the vote off: the check alone
    p = _flipped_nearest(animal_image, cfg, backers=1)
    query = animal_image(HEAD, TAIL)
    assert p.nearest(query, 1)[0][0] == "s50"
    Recorder.asked = []
    [pred] = p.predict([query])
    assert sorted(Recorder.asked) == [50, 51, 52]  # the checked one, the one replacing it and the one backing it
    assert pred.points.tolist() == [list(HEAD), list(TAIL)]


def test_a_twin_does_not_back_a_better_answer(animal_image) -> None:
    # the backer (s52) is labelled at the very pose of the answer it would back (s51's): twins at any radius
    cfg = _cfg(verify_margin=2.0, vote=False, twin_radius=0.2)
    [pred] = _flipped_nearest(animal_image, cfg, backers=1).predict([animal_image(HEAD, TAIL)])
    assert pred.points.tolist() == [list(TAIL), list(HEAD)]  # the checked answer stays (its scores lowered)


def test_no_appearance_check_when_off_and_in_another_scene_it_only_scores(animal_image) -> None:
    query = animal_image(HEAD, TAIL)
    # off: the flip as the engine answered it; another scene: not replaced (no other support asked), but its scores
    # fall to the floor, 0.05 (the flip correlates negatively with its support), so it ranks low in any project
    for cfg, expected in ((_cfg(**ALONE), 0.9), (_cfg(verify_scene=0.999), 0.05)):
        Recorder.asked = []
        [pred] = _flipped_nearest(animal_image, cfg).predict([query])
        assert Recorder.asked == [50] and pred.points.tolist() == [list(TAIL), list(HEAD)]
        assert pred.scores == pytest.approx([expected, expected])


def test_in_another_scene_a_look_alike_answer_keeps_its_scores(animal_image) -> None:
    # the answer matches its support's appearance (the same animal and pose; only the floor moved): its scores x its
    # correlation squared stay far above the floor a flip falls to
    p = FewShotPredictor(Recorder, _cfg(verify_scene=0.999))
    p.add_support("same", animal_image(HEAD, TAIL), np.array([HEAD, TAIL], float), ["nose", "tail"])
    [pred] = p.predict([animal_image(HEAD, TAIL, 4)])  # its floor moved: another scene by the threshold
    assert pred.scores.min() > 0.9 * 0.5 and pred.scores.max() < 0.9


def test_a_failed_check_without_a_clearly_better_answer_keeps_it_and_lowers_its_scores(animal_image) -> None:
    # better, but not by the margin, and no other support's answer backs it (two supports: none can)
    [pred] = _flipped_nearest(animal_image, _cfg(verify_margin=2.0)).predict([animal_image(HEAD, TAIL)])
    assert pred.points.tolist() == [list(TAIL), list(HEAD)] and pred.scores == pytest.approx([0.05, 0.05])  # the floor


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("verify_supports", 0),
        ("verify_scene", 1.5),
        ("verify_below", -2.0),
        ("verify_margin", -0.1),
        ("verify_score_power", -1),
        ("verify_score_floor", 1.5),
        ("blend_supports", 0),
        ("blend_radius", 0.0),
    ],
)
def test_appearance_check_settings_are_checked(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        _cfg(**{field: value})


def test_with_one_support_the_check_only_scores(animal_image) -> None:
    query = animal_image(HEAD, TAIL)
    # a flip correlates negatively: its scores fall to the floor (0 or 0.05), which never hides a shown keypoint
    for power, floor, expected in ((4.0, 0.0, 0.0), (2.0, 0.05, 0.05), (0.0, 0.05, 0.9)):
        p = FewShotPredictor(Recorder, _cfg(verify_score_power=power, verify_score_floor=floor))
        img = animal_image(TAIL, HEAD)
        p.add_support("turned", img, np.array([TAIL, HEAD], float), ["nose", "tail"])
        [pred] = p.predict([query])
        assert pred.points.tolist() == [list(TAIL), list(HEAD)] and pred.scores == pytest.approx([expected] * 2)


def test_each_keypoint_is_averaged_with_the_next_answers_near_it() -> None:
    cfg = _cfg(vote=False, verify_supports=1, blend_supports=3, agree_score_weight=0.0)  # scores: below
    # sizes 48 px: radius 0.3 x 48 = 14.4 px; the 2nd answer is near on both keypoints, the 3rd only on the tail
    p = _voters([HEAD_TAIL, [[14.0, 10.0], [54.0, 10.0]], [[40.0, 40.0], [50.0, 16.0]]], cfg)
    Recorder.asked = []
    [pred] = p.predict([scene(40)])
    assert Recorder.asked == [50, 51, 52]
    # nose: mean of (10, 10) and (14, 10); tail: mean of (50, 10), (54, 10) and (50, 16)
    np.testing.assert_allclose(pred.points, [[12.0, 10.0], [154 / 3, 12.0]])
    assert pred.scores == pytest.approx([0.9, 0.9])


def test_a_keypoint_the_next_answers_place_elsewhere_scores_lower() -> None:
    cfg = _cfg(vote=False, verify_supports=1, blend_supports=3)  # agree_score_weight 0.4
    # radius 0.3 x 48 = 14.4 px: both next answers have the nose where the nearest has it and the tail 28.8 px away
    p = _voters([HEAD_TAIL, [[10.0, 10.0], [50.0, 38.8]], [[10.0, 10.0], [21.2, 10.0]]], cfg)
    [pred] = p.predict([scene(40)])
    assert pred.points.tolist() == HEAD_TAIL  # the far answers are not blended in
    # nose: agreement 1, score 0.9; tail: agreement exp(-(28.8 / 14.4)^2) = 0.0183156, 0.9 x (0.6 + 0.4 x 0.0183156)
    assert pred.scores == pytest.approx([0.9, 0.5465936])


def test_one_other_answer_is_no_majority_and_leaves_the_scores() -> None:
    cfg = _cfg(vote=False, verify_supports=1, blend_supports=3)
    p = _voters([HEAD_TAIL, [[10.0, 10.0], [50.0, 38.8]]], cfg)  # two supports: one other answer
    [pred] = p.predict([scene(40)])
    assert pred.scores == pytest.approx([0.9, 0.9])
    with pytest.raises(ValueError, match="agree_score_weight"):
        _cfg(agree_score_weight=1.5)
