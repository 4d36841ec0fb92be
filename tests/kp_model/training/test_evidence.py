"""The evidence of a fine-tuning run (kp_model.training.evidence): each side predicts with its own supports, the
pool's workers give the served side computed in turn, and a large project's evidence is the newest images."""

from __future__ import annotations

import numpy as np
import pytest

from kp_model.fewshot import FewShotConfig
from kp_model.predictor import KeypointPrediction
from kp_model.training.evidence import (
    Scores,
    _without,
    candidate_scores,
    newest_evidence,
    paired,
    served_scores,
)
from kp_model.training.promotion import Paired, served_pck, served_predictor
from tests.kp_model.training.test_promotion import CopySupport, sample

PLAIN = FewShotConfig(vote=False, verify_supports=1, blend_supports=1)  # each query answered by its nearest support


class Nowhere(CopySupport):
    """An engine that answers every keypoint far outside the image."""

    def predict(self, images):
        return [KeypointPrediction(self.names, self.kps + 1000.0, np.ones(len(self.names))) for _ in images]


class Broken(CopySupport):
    def predict(self, images):
        raise RuntimeError("engine broke")


A = [[10.0, 10.0], [90.0, 10.0]]
FAR = [[10.0, 55.0], [90.0, 55.0]]  # 45 px below A: every keypoint wrong when A is answered (box 100 x 50)


def both_sides(served, candidate, base, train, held, fresh, earlier) -> list[Paired]:
    """The evidence as a run gathers it: the served side first, the candidate's after (no training here)."""
    prequential = base is not None and bool(fresh) and bool(earlier)
    now = served_scores(served, train, held, fresh, earlier, prequential, PLAIN)
    return paired(held, fresh, candidate_scores(candidate, base, train, held, fresh, earlier, PLAIN), now)


def test_each_side_answers_from_its_own_supports() -> None:
    """Held-out h (a's image, a's points): the served engine copies a (right), the candidate answers nowhere. The
    newest correction b (its own image, 45 px from a): the base and the served engine before it answer from the
    earlier supports only (a: wrong for both); were b still a support of either, it would answer itself (right)."""
    a, b = sample(1, A, [True, True], "a"), sample(2, FAR, [True, True], "b")
    h = sample(1, A, [True, True], "h")
    got = both_sides(CopySupport, Nowhere, CopySupport, [a, b], [h], fresh=[b], earlier=[a])
    assert got == [Paired("h", "heldout", 0.0, 1.0), Paired("b", "prequential", 0.0, 0.0)]
    # no base (it is the served model): the held-out images only; nothing to score: no evidence
    assert both_sides(CopySupport, Nowhere, None, [a, b], [h], [b], [a]) == got[:1]
    assert both_sides(CopySupport, Nowhere, CopySupport, [a], [], [], [a]) == []


def test_sides_that_scored_different_images_are_not_paired() -> None:
    with pytest.raises(ValueError):
        paired([], [sample(1, A, [True, True], "b")], Scores([], []), Scores([], [1.0]))


@pytest.mark.parametrize("side", ["served", "candidate"])
def test_an_error_on_either_side_is_raised(side: str) -> None:
    a, h = sample(1, A, [True, True], "a"), sample(1, A, [True, True], "h")
    engines = {"served": CopySupport, "candidate": CopySupport} | {side: Broken}
    with pytest.raises(RuntimeError, match="engine broke"):
        both_sides(engines["served"], engines["candidate"], None, [a], [h], [], [])


def test_the_newest_images_of_each_source_fill_the_cap() -> None:
    held = [sample(1, A, [True, True], f"h{i}") for i in range(10)]
    fresh = [sample(1, A, [True, True], f"f{i}") for i in range(10)]

    def keys(picked: tuple[list, list]) -> tuple[list[str], list[str]]:
        return [s.key for s in picked[0]], [s.key for s in picked[1]]

    assert keys(newest_evidence(held, fresh, 4)) == (["h8", "h9"], ["f8", "f9"])
    # the share one source cannot fill goes to the other
    assert keys(newest_evidence(held, fresh[:1], 4)) == (["h7", "h8", "h9"], ["f0"])
    assert keys(newest_evidence(held[:1], fresh, 4)) == (["h0"], ["f7", "f8", "f9"])
    assert keys(newest_evidence(held[:2], fresh[:1], 16)) == (["h0", "h1"], ["f0"])
    assert keys(newest_evidence(held, [], 3)) == (["h7", "h8", "h9"], [])


@pytest.mark.slow
def test_the_pools_workers_give_the_evidence_computed_in_turn(mouse_dir) -> None:
    """The weight-free engine on real mouse frames: supports described and images answered in 2 worker processes
    give the same served side as everything in turn here."""
    import torch

    from kp_model.build import PredictorConfig, build_predictor
    from kp_model.parallel import PoolConfig, PredictorPool
    from kp_model.training.data import samples_from_coco

    frames = samples_from_coco(mouse_dir)[:8]
    train, held = [frames[i] for i in (0, 3, 5, 6)], [frames[i] for i in (1, 4)]
    served = lambda: build_predictor(PredictorConfig())  # noqa: E731
    in_turn = served_scores(served, train, held, train[2:], train[:2], True)
    threads = torch.get_num_threads()
    pool = PredictorPool(PoolConfig(processes=2))
    try:
        side_by_side = served_scores(served, train, held, train[2:], train[:2], True, pool=pool)
    finally:
        pool.close()
    assert side_by_side == in_turn and len(in_turn.heldout) == 2 and len(in_turn.prequential) == 2
    assert torch.get_num_threads() == threads


def test_the_served_side_without_the_newest_corrections_reuses_its_features() -> None:
    built = []

    def engine() -> CopySupport:
        built.append(1)
        return CopySupport()

    supports = [
        sample(1, [[10, 10], [90, 10]], [True, True], "a"),
        sample(2, [[20, 40], [80, 40]], [True, True], "b"),
        sample(3, [[30, 20], [70, 20]], [True, True], "c"),
    ]
    query = sample(2, [[20, 40], [80, 40]], [True, True], "q")  # the image of b: b answers while it is a support
    everything = served_predictor(engine, supports, FewShotConfig(vote=False))
    assert len(built) == 3 and served_pck(everything, [query]) == [1.0]

    def rebuild():
        raise AssertionError("rebuilt although nothing was evicted")

    without_b = _without(everything, supports, {"b"}, rebuild)
    assert len(built) == 3 and without_b is not None and without_b.support_keys == ["0:a", "2:c"]
    assert everything.support_keys == ["0:a", "1:b", "2:c"]  # the original keeps its supports
    # without b another support answers, as when built from a and c alone: its points are over 0.2 x 100 px off
    assert served_pck(without_b, [query]) == served_pck(served_predictor(CopySupport, [supports[0], supports[2]]), [query])
    assert served_pck(without_b, [query])[0] < 1.0
    assert _without(everything, supports, {"a", "b", "c"}, rebuild) is None
    capped = served_predictor(CopySupport, supports, FewShotConfig(vote=False, max_supports=2))  # "a" was evicted
    assert _without(capped, supports, {"b"}, lambda: "rebuilt") == "rebuilt"
