"""When a fine-tuned candidate may be served: only on enough paired evidence that it is better.

Evidence is a list of images, each scored (PCK@0.2, kp_model.evaluation.metrics) by the candidate side and by the
served model, both predicting as the few-shot service does (``served_errors``: the labelled images are the supports):

- ``heldout``: the project's fixed held-out images, never trained on, scored by the candidate itself;
- ``prequential``: the images corrected since the previous run, before anything trained on them, scored by the
  newest earlier version (the candidate's warm-start base, trained on everything but them). That base is not the
  candidate, so this is evidence about the line of models the candidate continues, and it only counts when the base
  is not the served model itself.

Rule (``decide``): at least ``min_images`` images scored by both sides (a NaN is no evidence); the mean per-image gain
(candidate side minus served) at least ``margin``; the images won against those lost significant by a one-sided sign
test at level ``alpha`` (3 won and none lost is p = 0.125: not enough; 5 and none is 0.031); and, where there are
held-out images, the candidate not behind on them. Otherwise the served model stays: "not enough evidence" is a
decision. The sign test was added when 3 won / 0 lost (13 images, the rest tied) promoted a version that was 0.09
PCK@0.2 worse than the served engine on the frames not labelled yet (`kpassist bench loop`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace

import numpy as np

from kp_model.config import JsonConfig
from kp_model.evaluation.metrics import normalised_errors, reference_box
from kp_model.fewshot import FewShotConfig, FewShotPredictor
from kp_model.fusion import reorder
from kp_model.parallel import PredictorPool, Shipped
from kp_model.predictor import KeypointPrediction, Predictor
from kp_model.threads import map_adapting
from kp_model.training.data import TrainSample

SOURCES = ("heldout", "prequential")


@dataclass(frozen=True)
class PromotionRule(JsonConfig):
    min_images: int = 3  # images scored by both sides before anything is promoted (one image decided before: issue 12)
    margin: float = 0.02  # mean per-image PCK@0.2 gain required: a tie is not evidence
    alpha: float = 0.05  # one-sided sign test on the images won vs lost (ties left out) must reach this p-value

    def __post_init__(self) -> None:
        if not 0 < self.alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")
        if self.min_images < 1:
            raise ValueError(f"min_images must be >= 1, got {self.min_images}")
        if not 0 <= self.margin <= 1:
            raise ValueError(f"margin must be in [0, 1], got {self.margin}")


@dataclass(frozen=True)
class Paired:
    """One evidence image: its key, where it comes from (SOURCES), PCK@0.2 of the candidate side and of the served."""

    image: str
    source: str
    candidate: float
    served: float

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")

    @property
    def valid(self) -> bool:
        return math.isfinite(self.candidate) and math.isfinite(self.served)


def decide(evidence: Sequence[Paired], rule: PromotionRule) -> tuple[bool, str]:
    """(promote?, reason) by the rule of this module's docstring."""
    valid = [p for p in evidence if p.valid]
    n = len(valid)
    by = {s: sum(p.source == s for p in valid) for s in SOURCES}
    where = f"{n} image(s) ({by['heldout']} held-out, {by['prequential']} prequential)"
    if n < rule.min_images:
        return False, f"not enough evidence: {where} scored by both, {rule.min_images} needed; the served model stays"
    gains = np.array([p.candidate - p.served for p in valid])
    wins, losses = int((gains > 0).sum()), int((gains < 0).sum())
    held = [p.candidate - p.served for p in valid if p.source == "heldout"]
    summary = f"mean PCK@0.2 gain {gains.mean():+.3f} over {where}, {wins} won / {losses} lost"
    if gains.mean() < rule.margin:
        return False, f"{summary}: below the {rule.margin:.2f} margin"
    p = sign_test(wins, losses)
    if p > rule.alpha:
        return False, f"{summary}: not significant (sign test p = {p:.3f} > {rule.alpha})"
    if held and np.mean(held) < 0:
        return False, f"{summary}: but behind on the held-out images ({np.mean(held):+.3f})"
    return True, summary


def sign_test(wins: int, losses: int) -> float:
    """One-sided sign test: the probability of at least ``wins`` wins in ``wins + losses`` fair coin flips (1.0
    when nothing was decided)."""
    n = wins + losses
    return sum(math.comb(n, i) for i in range(wins, n + 1)) / 2**n if n else 1.0


def support_key(index: int, sample: TrainSample) -> str:
    """The key of ``sample``, the ``index``-th support of ``served_predictor`` (a COCO image's individuals share one
    sample key, so the position keeps them apart)."""
    return f"{index}:{sample.key}"


def served_predictor(
    make_predictor: Callable[[], Predictor],
    supports: Sequence[TrainSample],
    fewshot: FewShotConfig | None = None,
    pool: PredictorPool | None = None,
) -> FewShotPredictor | None:
    """The predictor as the service builds it, for ``served_errors``: one ``FewShotPredictor`` of ``make_predictor``'s
    engine with every support's visible keypoints (keys ``support_key``); None when no support has a visible keypoint.
    Its points are the service's; the cycle check is off (it moves only scores, which the evidence does not read, and
    costs a match per query). With ``pool``, a portable engine's supports are described in its worker processes, side
    by side (the same features); here, torch's threads adapt to the machine (``kp_model.threads.map_adapting``)."""
    predictor = FewShotPredictor(make_predictor, replace(fewshot or FewShotConfig(), cycle_weight=0.0))
    shown = []
    for i, s in enumerate(supports):
        vis = np.asarray(s.visible, bool)
        if vis.any():
            names = [n for n, v in zip(s.names, vis, strict=True) if v]
            shown.append((support_key(i, s), s.image, np.asarray(s.keypoints, np.float64)[vis], names))
    described: list[Predictor | None] = [None] * len(shown)
    if pool is not None and pool.enabled and len(shown) > 1:
        with ThreadPoolExecutor(pool.cfg.processes) as threads:  # each thread waits on one worker process
            described = list(threads.map(lambda sh: pool.describe(make_predictor(), *sh[1:]), shown))

    def add(item: tuple[tuple, Predictor | None]) -> None:
        (key, image, keypoints, names), done = item
        predictor.add_support(key, image, keypoints, names, described=done)

    map_adapting(add, list(zip(shown, described, strict=True)))  # described here in turn unless the pool did
    return predictor if predictor.is_support_set else None


def served_errors(
    predictor: FewShotPredictor | None, queries: Sequence[TrainSample], pool: PredictorPool | None = None
) -> list[np.ndarray]:
    """Per query, the normalised errors (kp_model.evaluation.metrics) of its visible keypoints that the answer has,
    predicted by ``predictor`` (``served_predictor``: each query answered from its nearest support, checked by the
    next ones, the vote); no error at all for every query when there is no predictor (no support). With ``pool``,
    a portable predictor (the weight-free engine) answers the queries in its worker processes, side by side; the
    answers are the same."""
    [errors] = served_errors_of([(predictor, queries)], pool)
    return errors


def served_errors_of(
    groups: Sequence[tuple[FewShotPredictor | None, Sequence[TrainSample]]], pool: PredictorPool | None = None
) -> list[list[np.ndarray]]:
    """``served_errors`` of several (predictor, queries) groups, all their queries in the pool's workers at once (a
    worker that finishes one group's last query starts the next group's)."""
    jobs = [(predictor, q) for predictor, queries in groups if predictor is not None for q in queries]
    answers = iter(_answers(jobs, pool))
    out = []
    for predictor, queries in groups:
        if predictor is None:  # no support: nothing counted
            out.append([np.zeros(0) for _ in queries])
            continue
        errors = []
        for q in queries:
            points = reorder(next(answers), q.names).points  # (nan, nan) where the answer lacks the name
            counted = np.asarray(q.visible, bool) & np.isfinite(points).all(axis=1)
            if not counted.any():
                errors.append(np.zeros(0))
                continue
            box = reference_box(q.keypoints, q.visible, q.bbox)
            errors.append(normalised_errors(points[counted], np.asarray(q.keypoints, np.float64)[counted], box))
        out.append(errors)
    return out


def _answers(jobs: Sequence[tuple[FewShotPredictor, TrainSample]], pool: PredictorPool | None) -> list[KeypointPrediction]:
    """Each (predictor, query)'s answer to the query's image: in ``pool``'s workers when the predictor can travel
    (shipped once), else here in turn."""
    uses = Counter(id(predictor) for predictor, _ in jobs)
    distinct = {id(predictor): predictor for predictor, _ in jobs}
    shipped: dict[int, Shipped | None] = {
        key: pool.ship(predictor) if pool is not None and uses[key] > 1 else None for key, predictor in distinct.items()
    }

    def one(job: tuple[FewShotPredictor, TrainSample]) -> KeypointPrediction:
        predictor, q = job
        ready = shipped[id(predictor)]
        return pool.predict(ready, q.image)[0] if ready is not None else predictor.predict([q.image])[0]

    if not any(shipped.values()):  # here in turn: torch's threads adapt (a learned version beside other work)
        return map_adapting(one, jobs)
    with ThreadPoolExecutor(pool.cfg.processes) as threads:  # each thread waits on one worker process
        return list(threads.map(one, jobs))


def served_pck(
    predictor: FewShotPredictor | None, queries: Sequence[TrainSample], pool: PredictorPool | None = None
) -> list[float]:
    """PCK@0.2 of each query predicted as served (``served_errors``, ``pool`` as there); NaN for a query with no
    counted keypoint."""
    return pck_of(served_errors(predictor, queries, pool))


def pck_of(errors: Sequence[np.ndarray]) -> list[float]:
    """PCK@0.2 of each query's normalised errors; NaN for a query with none."""
    return [float(np.mean(e <= 0.2)) if len(e) else float("nan") for e in errors]


def evidence_rows(evidence: Sequence[Paired]) -> list[dict]:
    """The evidence as JSON-ready rows for the version record."""
    return [asdict(p) for p in evidence]
