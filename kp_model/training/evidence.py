"""The paired evidence of one fine-tuning run (kp_model.training.promotion: ``Paired``, ``decide``), in two parts:
the served side (``served_scores``: the model served now, the weight-free default engine while no version is,
answering every evidence image; its work in the pool's worker processes) does not depend on the candidate, so a run
computes it before training and knows what is left of its time budget (kp_model.training.finetune); the candidate
side (``candidate_scores``) follows the training. ``newest_evidence`` bounds the images scored in a large project.

held, fresh = newest_evidence(held_set, fresh_set, 16)
served = served_scores(served_engine, train_set, held, fresh, earlier, prequential, fewshot, pool)
...train...
evidence = paired(held, fresh, candidate_scores(candidate, base, train_set, held, fresh, earlier, fewshot), served)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from kp_model.fewshot import FewShotConfig, FewShotPredictor
from kp_model.parallel import PredictorPool
from kp_model.predictor import Predictor
from kp_model.training.data import TrainSample
from kp_model.training.promotion import Paired, pck_of, served_errors_of, served_pck, served_predictor, support_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scores:
    """PCK@0.2 (NaN: nothing counted) of one side on each held-out image and each prequential image."""

    heldout: list[float]
    prequential: list[float]


def newest_evidence(
    held_set: Sequence[TrainSample], fresh: Sequence[TrainSample], cap: int
) -> tuple[list[TrainSample], list[TrainSample]]:
    """At most ``cap`` evidence images, the newest of each source (samples are chronological): half each when both
    have more, and the share one source cannot fill goes to the other. Bounds a run's evidence (about a second of the
    weight-free engine per image on 2 cores) in a project with hundreds of labels."""
    n_held = min(len(held_set), max(cap // 2, cap - len(fresh)))
    n_fresh = min(len(fresh), cap - n_held)
    return list(held_set[len(held_set) - n_held :]), list(fresh[len(fresh) - n_fresh :])


def served_scores(
    served: Callable[[], Predictor],
    train_set: Sequence[TrainSample],
    held: Sequence[TrainSample],
    fresh: Sequence[TrainSample],
    earlier: Sequence[TrainSample],
    prequential: bool,
    fewshot: FewShotConfig | None = None,
    pool: PredictorPool | None = None,
) -> Scores:
    """The served model's side: on the held-out images ``held`` with every training image (``train_set``) as
    supports and, when ``prequential``, on the newest corrections ``fresh`` as it was before them: with ``earlier``
    (the images the candidate's base trained on) as supports. ``pool``: worker processes for a portable engine."""
    t0 = time.perf_counter()
    now = served_predictor(served, train_set, fewshot, pool) if held or prequential else None
    before = None
    if prequential:  # the served model as it was before the newest corrections: without them as supports
        keep = {s.key for s in earlier}
        drop = {s.key for s in train_set if s.key not in keep}
        before = _without(now, train_set, drop, lambda: served_predictor(served, earlier, fewshot, pool))
    newest = list(fresh) if prequential else []
    now_held, now_fresh = served_errors_of([(now, held), (before, newest)], pool)
    log.info("evidence: served side of %d image(s) in %.1fs", len(held) + len(newest), time.perf_counter() - t0)
    return Scores(pck_of(now_held), pck_of(now_fresh))


def candidate_scores(
    candidate: Callable[[], Predictor],
    base: Callable[[], Predictor] | None,
    train_set: Sequence[TrainSample],
    held: Sequence[TrainSample],
    fresh: Sequence[TrainSample],
    earlier: Sequence[TrainSample],
    fewshot: FewShotConfig | None = None,
) -> Scores:
    """The candidate's side: the candidate on ``held`` (supports ``train_set``) and, with a ``base`` (the version the
    candidate was warm-started from, when that is not the served model), the base on ``fresh`` (supports
    ``earlier``, the images it trained on): prequential evidence about the line of models the candidate continues."""
    t0 = time.perf_counter()
    heldout = served_pck(served_predictor(candidate, train_set, fewshot), held) if held else []
    prequential = served_pck(served_predictor(base, earlier, fewshot), fresh) if base and fresh and earlier else []
    log.info("evidence: candidate side of %d image(s) in %.1fs", len(held) + len(prequential), time.perf_counter() - t0)
    return Scores(heldout, prequential)


def paired(held: Sequence[TrainSample], fresh: Sequence[TrainSample], candidate: Scores, served: Scores) -> list[Paired]:
    """The evidence rows: each held-out image, then each prequential one scored by both sides."""
    evidence = [Paired(s.key, "heldout", c, n) for s, c, n in zip(held, candidate.heldout, served.heldout, strict=True)]
    if candidate.prequential or served.prequential:  # both sides or neither: a mismatch raises
        rows = zip(fresh, candidate.prequential, served.prequential, strict=True)
        evidence += [Paired(s.key, "prequential", o, n) for s, o, n in rows]
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
