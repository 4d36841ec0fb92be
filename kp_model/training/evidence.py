"""The paired evidence of one fine-tuning run (kp_model.training.promotion: ``Paired``, ``decide``), gathered side
by side. The served side (the weight-free default engine while no version is served: describing the training
images as supports, then answering every evidence image) runs in a thread, its work in the pool's worker processes,
while this thread computes the candidate side (the learned model's answers, torch). The values are those of
computing each in turn: the same predictors answer the same images.

evidence = gather_evidence(Sides(served, candidate, base), train_set, held_set, fresh, earlier, fewshot, pool)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np

from kp_model.fewshot import FewShotConfig, FewShotPredictor
from kp_model.parallel import PredictorPool
from kp_model.predictor import Predictor
from kp_model.threads import torch_threads
from kp_model.training.data import TrainSample
from kp_model.training.promotion import Paired, pck_of, served_errors_of, served_pck, served_predictor, support_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sides:
    """The engines compared, each a factory of a new predictor (kp_model.build.build_predictor)."""

    served: Callable[[], Predictor]  # the model served now (the default engine while no version is)
    candidate: Callable[[], Predictor]  # the version just trained: scored on the held-out images
    base: Callable[[], Predictor] | None  # its warm-start base when that is not the served model: prequential evidence


def gather_evidence(
    sides: Sides,
    train_set: Sequence[TrainSample],
    held_set: Sequence[TrainSample],
    fresh: Sequence[TrainSample],
    earlier: Sequence[TrainSample],
    fewshot: FewShotConfig | None = None,
    pool: PredictorPool | None = None,
) -> list[Paired]:
    """The held-out images (``held_set``, scored by the candidate with ``train_set`` as supports) and, with a base,
    the newest corrections (``fresh``, scored by the base with ``earlier`` as supports, the images it trained on),
    each paired with the served model's score given the same supports. Every engine predicts as the service does
    (kp_model.training.promotion.served_predictor). ``pool``: worker processes for the served side when it can
    travel. An error on either side is raised here, after both sides stopped."""
    prequential = sides.base is not None and bool(fresh) and bool(earlier)
    if not held_set and not prequential:
        return []
    t0 = time.perf_counter()
    drop = {s.key for s in fresh}

    def served_side() -> list[list[np.ndarray]]:
        now = served_predictor(sides.served, train_set, fewshot, pool)
        before = None
        if prequential:  # the served model as it was before the newest corrections: without them as supports
            before = _without(now, train_set, drop, lambda: served_predictor(sides.served, earlier, fewshot, pool))
        newest = fresh if prequential else []
        errors = served_errors_of([(now, held_set), (before, newest)], pool)
        log.info("evidence: served side of %d image(s) in %.1fs", len(held_set) + len(newest), time.perf_counter() - t0)
        return errors

    # beside the pool's busy workers this thread's torch work gets one thread (more spin and run slower)
    with torch_threads(1) if pool is not None and pool.enabled else nullcontext(), ThreadPoolExecutor(1) as side:
        served = side.submit(served_side)
        try:
            candidate = served_pck(served_predictor(sides.candidate, train_set, fewshot), held_set) if held_set else []
            old = served_pck(served_predictor(sides.base, earlier, fewshot), fresh) if sides.base and prequential else []
        except BaseException:
            if (also := served.exception()) is not None:  # waits for the served side; its error is not lost either
                log.error("evidence: the served side failed too: %r", also)
            raise
        log.info("evidence: candidate side in %.1fs", time.perf_counter() - t0)
        now_held, now_fresh = served.result()
    evidence = [Paired(s.key, "heldout", c, n) for s, c, n in zip(held_set, candidate, pck_of(now_held), strict=True)]
    if prequential:
        evidence += [Paired(s.key, "prequential", o, n) for s, o, n in zip(fresh, old, pck_of(now_fresh), strict=True)]
    return evidence


def _without(
    predictor: FewShotPredictor | None,
    supports: Sequence[TrainSample],
    drop: set[str],
    rebuild: Callable[[], FewShotPredictor | None],
) -> FewShotPredictor | None:
    """``predictor`` (``served_predictor`` of ``supports``) without the supports whose sample key is in ``drop``, its
    features shared, not recomputed; ``rebuild()`` instead when its cap evicted some of ``supports`` (the ones it
    would keep without ``drop`` are not those the service keeps)."""
    if predictor is None or len(predictor.support_keys) < sum(bool(np.asarray(s.visible).any()) for s in supports):
        return rebuild()
    out = predictor.copy()
    for i, s in enumerate(supports):
        if s.key in drop:
            out.remove_support(support_key(i, s))
    return out if out.is_support_set else None
