"""The evidence of a fine-tuning run gathered side by side (kp_model.training.evidence): each side predicts with its
own supports, errors come back, and the pool's workers give the evidence computed in turn."""

from __future__ import annotations

import numpy as np
import pytest

from kp_model.fewshot import FewShotConfig
from kp_model.predictor import KeypointPrediction
from kp_model.training.evidence import Sides, _without, gather_evidence
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


def test_each_side_answers_from_its_own_supports() -> None:
    """Held-out h (a's image, a's points): the served engine copies a (right), the candidate answers nowhere. The
    newest correction b (its own image, 45 px from a): the base and the served engine before it answer from the
    earlier supports only (a: wrong for both); were b still a support of either, it would answer itself (right)."""
    a, b = sample(1, A, [True, True], "a"), sample(2, FAR, [True, True], "b")
    h = sample(1, A, [True, True], "h")
    sides = Sides(served=CopySupport, candidate=Nowhere, base=CopySupport)
    got = gather_evidence(sides, [a, b], [h], fresh=[b], earlier=[a], fewshot=PLAIN)
    assert got == [Paired("h", "heldout", 0.0, 1.0), Paired("b", "prequential", 0.0, 0.0)]
    # no base (it is the served model): the held-out images only; nothing to score: no evidence
    assert gather_evidence(Sides(CopySupport, Nowhere, None), [a, b], [h], [b], [a], PLAIN) == got[:1]
    assert gather_evidence(sides, [a], [], [], [a], PLAIN) == []


@pytest.mark.parametrize("broken", [("served",), ("candidate",), ("served", "candidate")])
def test_an_error_on_either_side_is_raised(broken: tuple[str, ...], caplog) -> None:
    a, h = sample(1, A, [True, True], "a"), sample(1, A, [True, True], "h")
    engines = {"served": CopySupport, "candidate": CopySupport, "base": None} | dict.fromkeys(broken, Broken)
    with pytest.raises(RuntimeError, match="engine broke"):
        gather_evidence(Sides(**engines), [a], [h], [], [], PLAIN)
    # both broken: the candidate's error is raised, the served side's logged
    assert ("served side failed too" in caplog.text) == (len(broken) == 2)


@pytest.mark.slow
def test_the_pools_workers_give_the_evidence_computed_in_turn(mouse_dir) -> None:
    """The weight-free engine on real mouse frames: supports described and images answered in 2 worker processes
    (torch held to one thread beside them) give the same evidence as everything in turn here."""
    import torch

    from kp_model.build import PredictorConfig, build_predictor
    from kp_model.parallel import PoolConfig, PredictorPool
    from kp_model.training.data import samples_from_coco

    frames = samples_from_coco(mouse_dir)[:8]
    train, held = [frames[i] for i in (0, 3, 5, 6)], [frames[i] for i in (1, 4)]
    sides = Sides(served=lambda: build_predictor(PredictorConfig()), candidate=CopySupport, base=CopySupport)
    in_turn = gather_evidence(sides, train, held, fresh=train[2:], earlier=train[:2])
    threads = torch.get_num_threads()
    pool = PredictorPool(PoolConfig(processes=2))
    try:
        side_by_side = gather_evidence(sides, train, held, fresh=train[2:], earlier=train[:2], pool=pool)
    finally:
        pool.close()
    assert side_by_side == in_turn and len(in_turn) == 4
    assert torch.get_num_threads() == threads  # restored after the overlap


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
