"""The promotion rule on fixed cases (kp_model.training.promotion.decide), and evidence scored as served."""

from __future__ import annotations

import numpy as np
import pytest

from kp_model.predictor import KeypointPrediction
from kp_model.training.data import TrainSample
from kp_model.training.promotion import (
    Paired,
    PromotionRule,
    decide,
    served_errors,
    served_errors_of,
    served_pck,
    served_predictor,
    sign_test,
)

NAN = float("nan")
RULE = PromotionRule(min_images=3, margin=0.02)


def held(*pairs: tuple[float, float]) -> list[Paired]:
    return [Paired(f"h{i}", "heldout", c, s) for i, (c, s) in enumerate(pairs)]


def fresh(*pairs: tuple[float, float]) -> list[Paired]:
    return [Paired(f"p{i}", "prequential", c, s) for i, (c, s) in enumerate(pairs)]


def test_issue_12_regression_one_tied_image_is_not_evidence() -> None:
    """v0001 was served on ONE held-out image where both scored PCK 0.0 (the mean error broke the tie) although the
    candidate was much worse everywhere else: one image, and a tie, decide nothing now."""
    promote, reason = decide(held((0.0, 0.0)), RULE)
    assert not promote and "not enough evidence" in reason and "1 image(s)" in reason


@pytest.mark.parametrize(
    "evidence, expected",
    [
        (held(*[(1.0, 0.75)] * 5), True),  # better on 5 images of 5: sign test p = 1/32
        (held((1.0, 0.75), (1.0, 0.75), (0.75, 0.5)), False),  # better on 3 of 3: p = 1/8, not significant
        # bench loop's case: 3 won, 10 tied, none lost gave a version 0.09 worse on the frames not labelled yet
        (held(*[(1.0, 0.75)] * 3, *[(1.0, 1.0)] * 10), False),
        (held((1.0, 1.0), (1.0, 1.0), (1.0, 1.0)), False),  # a tie everywhere: not evidence
        (held((1.0, 0.0), (0.0, 0.25), (0.0, 0.25)), False),  # a big gain on one image, lost on the others
        (held((0.75, 0.5), (1.0, 0.75)) + fresh((1.0, 0.5), (0.75, 0.5), (1.0, 0.75)), True),  # sources add up
        (held((0.5, 0.75)) + fresh((1.0, 0.5), (1.0, 0.5), (1.0, 0.5)), False),  # behind on held-out: never served
        (held((NAN, 0.5), (1.0, NAN)) + fresh((1.0, 0.5)), False),  # NaN rows are no evidence: 1 valid image
        (fresh(*[(1.0, 0.5)] * 5), True),  # no held-out image yet: the prequential evidence decides
        (held(*[(1.0, 0.5)] * 6, (0.5, 0.75)), False),  # 6 won, 1 lost: p = 8/128 > 0.05
        (held(*[(1.0, 0.5)] * 7, (0.5, 0.75)), True),  # 7 won, 1 lost: p = 9/256
        ([], False),
    ],
)
def test_fixed_cases(evidence: list[Paired], expected: bool) -> None:
    assert decide(evidence, RULE)[0] is expected


def test_sign_test_values() -> None:
    assert sign_test(3, 0) == 1 / 8 and sign_test(5, 0) == 1 / 32 and sign_test(0, 0) == 1.0
    assert sign_test(6, 1) == pytest.approx(8 / 128)  # P(X >= 6 | n = 7) = (7 + 1) / 128


def test_bad_rule_and_source_are_refused() -> None:
    with pytest.raises(ValueError, match="min_images"):
        PromotionRule(min_images=0)
    with pytest.raises(ValueError, match="margin"):
        PromotionRule(margin=2)
    with pytest.raises(ValueError, match="source"):
        Paired("x", "guess", 1.0, 0.0)


class CopySupport:
    """An engine that answers its support's keypoints wherever the query is."""

    def __init__(self) -> None:
        self.kps, self.names = np.zeros((0, 2)), []

    is_support_set = property(lambda self: bool(self.names))
    support_names = property(lambda self: list(self.names))

    def set_support(self, image, keypoints, names) -> None:
        self.kps, self.names = np.asarray(keypoints, float), list(names)

    def predict(self, images):
        return [KeypointPrediction(self.names, self.kps.copy(), np.ones(len(self.names))) for _ in images]


def sample(seed: int, points: list[list[float]], visible: list[bool], key: str) -> TrainSample:
    image = (np.random.default_rng(seed).random((60, 120, 3)) * 255).astype(np.uint8)
    return TrainSample(image, np.array(points), np.array(visible), ["nose", "tail"], key=key, bbox=(0.0, 0.0, 100.0, 50.0))


def test_evidence_is_scored_as_served_from_the_nearest_support() -> None:
    supports = [sample(1, [[10, 10], [90, 10]], [True, True], "a"), sample(2, [[20, 40], [80, 40]], [True, False], "b")]
    near_a = sample(1, [[10, 30], [90, 10]], [True, True], "q1")  # the same image as support a: a answers
    near_b = sample(2, [[20, 40], [50, 40]], [True, True], "q2")  # b answers; b has no tail: only the nose counts
    predictor = served_predictor(CopySupport, supports)
    assert predictor is not None and predictor.support_keys == ["0:a", "1:b"]
    errors = served_errors(predictor, [near_a, near_b])
    # box 100 x 50: errors / 100; nose of q1 is 20 px off, its tail exact; q2's nose exact
    assert [e.tolist() for e in errors] == [[0.2, 0.0], [0.0]]
    assert served_pck(predictor, [near_a, near_b]) == [1.0, 1.0]
    assert served_predictor(CopySupport, []) is None
    assert np.isnan(served_pck(None, [near_a])[0])  # no support: nothing counted
    hidden = sample(3, [[0, 0], [0, 0]], [False, False], "c")
    assert served_predictor(CopySupport, [hidden]) is None  # no visible keypoint: no support either
    # several groups at once: each group's errors as asked alone, a group without a predictor has none
    only_b = served_predictor(CopySupport, supports[1:])
    groups = served_errors_of([(predictor, [near_a, near_b]), (None, [near_a]), (only_b, [near_a]), (only_b, [])])
    # b has only a nose, at (20, 40): 10 px right and 10 px below q1's
    assert [[e.tolist() for e in g] for g in groups] == [[[0.2, 0.0], [0.0]], [[]], [[np.hypot(10, 10) / 100]], []]


def test_evidence_answered_in_worker_processes_equals_in_turn(mouse_dir) -> None:
    """The served engine's evidence answered side by side by a pool's workers (FinetuneSettings.evidence_processes)
    gives the same per-image PCK as answered in turn here; a predictor that cannot travel is answered here."""
    from kp_model.build import PredictorConfig, build_predictor
    from kp_model.parallel import PoolConfig, PredictorPool
    from kp_model.training.data import samples_from_coco

    frames = samples_from_coco(mouse_dir)[:8]
    predictor = served_predictor(lambda: build_predictor(PredictorConfig()), [frames[i] for i in (0, 3, 6)])
    queries = [frames[i] for i in (1, 2, 4, 5, 7)]
    pool = PredictorPool(PoolConfig(processes=2))
    try:
        assert served_pck(predictor, queries, pool) == served_pck(predictor, queries)
        copy = served_predictor(CopySupport, [sample(1, [[10, 10], [90, 10]], [True, True], "a")])
        assert pool.ship(copy) is None  # not portable: answered in turn, as without a pool
        near = sample(1, [[10, 30], [90, 10]], [True, True], "q1")
        assert served_pck(copy, [near, near], pool) == [1.0, 1.0]
    finally:
        pool.close()
